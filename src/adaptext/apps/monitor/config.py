"""`monitor.yaml`: the monitor's settings, one typed tree (windows, the watched label, baseline, rule, webhook).

Loaded with `load_monitor_config`; every key is optional and unknown keys fail with the list of valid ones.
The defaults are those `bench/monitor.py` chose on Financial PhraseBank and SST-2 streams (see `docs/monitor.md`).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from adaptext.core.config import Float, Int, load_yaml_model

_DURATION = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|hour|hours|d|day|days)\s*$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "hours": 3600}
_UNIT_SECONDS |= {"d": 86400, "day": 86400, "days": 86400}


def parse_duration(value: Any) -> int:
    """Seconds in a duration such as `1h`, `30min`, `15m`, `1d` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 1h or 30min, got {value!r}")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, timedelta):
        seconds = int(value.total_seconds())
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"expected a duration such as 1h, 30min or 3600s, got {value!r}")
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 60:
        raise ValueError(f"a window must be at least one minute, got {seconds} s")
    return seconds


GroupColumn = Literal["source", "topic"]
GROUP_COLUMNS: tuple[GroupColumn, ...] = ("source", "topic")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaselineSection(_Section):
    method: Literal["ewma", "rolling"] = Field(
        "rolling",
        description="What a window is compared with: `rolling`: the pooled share of the last `windows` windows; "
        "`ewma`: an exponentially weighted mean of earlier windows' shares (weight `alpha` on the newest).",
    )
    alpha: Float = Field(0.1, gt=0, le=1, description="EWMA weight of the newest window (`method: ewma`).")
    windows: Int = Field(24, ge=2, description="Windows pooled by `method: rolling`.")
    warmup: Int = Field(
        6, ge=2, description="Windows (each with at least `min_count` events) seen before any alert is raised."
    )


class RuleSection(_Section):
    method: Literal["zscore", "cusum"] = Field(
        "cusum",
        description="`zscore`: alert when a window's share is `threshold` standard errors above the baseline; "
        "`cusum`: alert when the one-sided CUSUM of those z-scores (less `k` per window) passes `h`.",
    )
    threshold: Float = Field(4.5, gt=0, description="z-score above the baseline that raises an alert (`zscore`).")
    k: Float = Field(0.5, ge=0, description="CUSUM allowance: z-score units forgiven per window (`cusum`).")
    h: Float = Field(3.0, gt=0, description="CUSUM decision level (`cusum`).")


class WebhookSection(_Section):
    url: str | None = Field(None, description="Where each new alert is POSTed as JSON (none: alerts are only stored).")
    retries: Int = Field(3, ge=0, description="Further attempts after a failed POST within one evaluation.")
    backoff: Float = Field(0.5, ge=0, description="Seconds before the first retry; doubled for each next one.")
    timeout: Float = Field(10.0, gt=0, description="Seconds one POST may take.")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"the webhook must be an http:// or https:// URL, got {value!r}")
        return value


class DriftSection(_Section):
    reference_windows: Int = Field(
        24, ge=1, description="Windows at the start of the stream that the recent ones are compared with."
    )
    recent_windows: Int = Field(6, ge=1, description="The latest windows a drift signal looks at.")
    confidence_drop: Float = Field(
        0.05, gt=0, description="Flag a drop of the mean top-label probability of at least this much."
    )
    ood_rise: Float = Field(0.05, gt=0, description="Flag a rise of the out-of-scope rate of at least this much.")
    label_distance: Float = Field(
        0.1, gt=0, description="Flag a total-variation distance of the label shares from training of at least this."
    )


class MonitorConfig(_Section):
    window: Annotated[int, BeforeValidator(parse_duration)] = Field(
        3600,
        description="Length of a window, e.g. `1h`, `30min`, `1d` (stored as seconds; windows start at UTC "
        "multiples of it).",
    )
    label: str | None = Field(
        None,
        description="The label whose share is watched; default: the model's negative-like label (`negative`, `neg`, "
        "...), required when the model has none.",
    )
    min_count: Int = Field(30, ge=1, description="Events a window needs before it is judged or used as a baseline.")
    group_by: list[GroupColumn] = Field(
        default_factory=lambda: list(GROUP_COLUMNS),
        description="Besides the whole stream, watch each value of these columns on its own (a value that makes up "
        "the whole stream of a window is not watched twice).",
    )
    batch_size: Int = Field(
        1024,
        ge=1,
        description="Events classified and committed together by `ingest`. The model sorts each batch by length "
        "before padding, so a larger batch pads less and classifies faster (bench/monitor.py compares 256).",
    )
    baseline: BaselineSection = Field(default_factory=BaselineSection)
    rule: RuleSection = Field(default_factory=RuleSection)
    webhook: WebhookSection = Field(default_factory=WebhookSection)
    drift: DriftSection = Field(default_factory=DriftSection)


def load_monitor_config(path: str | Path | None) -> MonitorConfig:
    """Read `monitor.yaml` (None: every default); a `ConfigError` names the file and the bad key.

    >>> load_monitor_config(None).window
    3600
    """
    if path is None:
        return MonitorConfig()
    return load_yaml_model(path, MonitorConfig, what="monitor config")
