"""`adaptext route`: route every row of a file and write the rows with their routes; with `--evaluate`, score the
routes against the file's labels and write the rates (JSON) and the threshold curve (PNG) beside the output."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from adaptext.apps.router.config import RouteConfig
from adaptext.apps.router.evaluation import RoutingReport, evaluate_routing, plot_routing
from adaptext.apps.router.route import Router, load_router
from adaptext.core.errors import DataError
from adaptext.core.outputs import check_output_file
from adaptext.data.io import check_tsv_cells, read_table, require_columns, text_values, write_table

logger = logging.getLogger(__name__)

ROUTE_COLUMNS = ("intent", "confidence", "action", "answer", "score", "reason", "faq_question", "ood_score")


@dataclass
class RouteFileResult:
    """What `route_file` wrote: the number of rows, the count of each action, and with `--evaluate` the report
    and the paths of its JSON and PNG."""

    rows: int
    actions: dict[str, int]
    report: RoutingReport | None = None
    report_json: Path | None = None
    curve_png: Path | None = None


def evaluation_paths(output: Path) -> tuple[Path, Path]:
    """Where `--evaluate` writes beside `output`: OUTPUT_STEM.evaluation.json and OUTPUT_STEM.curve.png."""
    return output.with_name(output.stem + ".evaluation.json"), output.with_name(output.stem + ".curve.png")


def check_route_outputs(
    config: RouteConfig, input_path: Path, output: Path, *, evaluate: bool, overwrite: bool
) -> None:
    """Refuse, before any work, an output that would replace an input or an existing file (without `overwrite`)."""
    inputs = [input_path, config.answers] + ([config.faq.file] if config.faq is not None else [])
    check_output_file(output, overwrite=overwrite, inputs=inputs)
    if evaluate:
        for path in evaluation_paths(output):
            check_output_file(path, overwrite=overwrite, inputs=inputs)


def _gold(config: RouteConfig, router: Router, path: Path, frame: pd.DataFrame) -> list[str]:
    """The true intents of a labelled file; a label neither the model's nor `evaluate.ood_label` is an error.

    `evaluate.ood_label` may be one of the model's classes (a model trained with out-of-scope examples as a class)
    when the answers file gives it no answer: a text predicted as it is then never answered, so it stands for out of
    scope on both sides."""
    column = config.evaluate.label_column
    require_columns(path, frame, [column])
    gold = [value.strip() for value in text_values(path, frame, column)]
    known = set(router.predictor.labels)
    ood_label = config.evaluate.ood_label
    if ood_label is not None and ood_label in router.answers:
        raise DataError(
            f"evaluate.ood_label {ood_label!r} is one of the model's intents and {config.answers} answers it; name "
            "the out-of-scope label, or remove its answer if the model learned out-of-scope texts as that class"
        )
    for row, label in enumerate(gold, start=1):
        if label not in known and label != ood_label:
            hint = "" if ood_label else "; if it marks out-of-scope texts, set evaluate.ood_label in the router config"
            raise DataError(f"{path}: row {row}: column {column!r}: {label!r} is not one of the model's intents{hint}")
    if config.evaluate.out_of_scope_share is not None:
        outside = sum(label == ood_label for label in gold)
        if outside in (0, len(gold)):
            kind = f"no {ood_label!r} rows" if outside == 0 else f"only {ood_label!r} rows"
            raise DataError(
                f"{path}: column {column!r} has {kind}; evaluate.out_of_scope_share weighs the out-of-scope rows "
                "against the in-scope ones, so the file needs both (or drop the setting)"
            )
    return gold


def route_file(
    config: RouteConfig,
    input_path: Path,
    output: Path,
    *,
    evaluate: bool = False,
    overwrite: bool = False,
    batch_size: int = 64,
    router: Router | None = None,
) -> RouteFileResult:
    """Route every row of `input_path` into `output` (input columns + the route columns). The outputs are checked
    before the model is loaded."""
    check_route_outputs(config, input_path, output, evaluate=evaluate, overwrite=overwrite)
    frame = read_table(input_path)
    router = router or load_router(config, batch_size=batch_size)
    column = config.text_column or router.predictor.info.text_column or "text"
    require_columns(input_path, frame, [column])
    texts = text_values(input_path, frame, column)
    gold = _gold(config, router, input_path, frame) if evaluate else None
    if output.suffix.lower() == ".tsv":
        check_tsv_cells(output, frame)
    taken = [name for name in ROUTE_COLUMNS if name in frame.columns]
    if taken:
        logger.warning("%s: column(s) %s are replaced by the routes", input_path, taken)
    signals = router.signals_for(texts, progress=True)
    routes = router.decide(texts, signals, progress=True)
    routed = frame.copy()
    for name in ROUTE_COLUMNS:
        values = [getattr(route, name) for route in routes]
        if name in ("faq_question", "ood_score") and all(value is None for value in values):
            continue  # no FAQ / no detector: no empty column
        routed[name] = values
    write_table(routed, output)
    actions = {action: sum(route.action == action for route in routes) for action in ("answer", "faq", "handoff")}
    result = RouteFileResult(rows=len(routes), actions=actions)
    if gold is not None:
        report = evaluate_routing(
            router,
            signals,
            routes,
            gold,
            config.evaluate.ood_label,
            config.evaluate.max_wrong_rate,
            config.evaluate.out_of_scope_share,
            config.evaluate.wrong_rate_confidence,
        )
        result.report = report
        result.report_json, result.curve_png = evaluation_paths(output)
        tmp = result.report_json.with_name(result.report_json.name + ".tmp")
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(result.report_json)
        plot_routing(report, result.curve_png)
    return result
