"""The search space of `adaptext tune`: defaults per strategy, `tune.space` entries, and checks before trial 0.

A space maps dotted config keys to `Param`s. The defaults depend on the strategy (and on the peft method); a key the
base config (or a `key=value` override) sets explicitly is fixed at that value and not searched. `tune.space`
entries replace or extend the defaults, and `type: fixed` pins a key to `value`. An entry with `when` is drawn only
in trials where other keys take the listed values (`fewshot.per_class` only shapes contrastive batches, so it is
drawn only when `fewshot.encoder` is `contrastive`). Every key is checked against the config model, with every
value it may take, before any trial runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from adaptext.core.config import Config, build_config, dotted_value
from adaptext.core.errors import ConfigError
from adaptext.training.strategy import STRATEGIES

# Keys a trial may not change: where it writes, how the study itself is set up, and what the space depends on.
UNTUNABLE = ("output_dir", "format_version", "strategy", "tune")


# Scalars optuna stores as categorical choices.
Choice = None | bool | int | float | str


class Param(BaseModel):
    """One entry of `tune.space`: how a key is searched (or the value it is pinned to)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["float", "int", "categorical", "fixed"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Choice] | None = None
    value: Any = None
    # Drawn only when each named key takes one of its listed values (drawn earlier in the trial, pinned, or as
    # configured); otherwise the key keeps its configured value.
    when: dict[str, list[Choice]] | None = None

    def candidates(self) -> list[Any]:
        """The values to check against the config model: the bounds, every choice, or the fixed value."""
        if self.type == "fixed":
            return [self.value]
        if self.type == "categorical":
            return list(self.choices or [])
        bounds = [self.low or 0.0, self.high or 0.0]  # both set: `problem` refuses an entry without them
        return [int(b) for b in bounds] if self.type == "int" else bounds

    def problem(self) -> str | None:
        """What is wrong with this entry on its own, or None."""
        if self.type in ("float", "int"):
            if self.low is None or self.high is None:
                return f"type {self.type} needs low and high"
            if self.low > self.high:
                return f"low {self.low} is above high {self.high}"
            if self.log and self.low <= 0:
                return "log needs low > 0"
            if self.log and self.step is not None:
                return "give log or step, not both"
            if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
                return "type int needs whole low and high"
        if self.type == "categorical" and not self.choices:
            return "type categorical needs a non-empty list of choices"
        if self.type == "fixed" and "value" not in self.model_fields_set:
            return "type fixed needs a value"
        if self.when is not None and self.type == "fixed":
            return "a fixed entry is always pinned: remove when"
        if self.when is not None and (not self.when or not all(self.when.values())):
            return "when needs at least one key, each with a non-empty list of values"
        return None


def _float(low: float, high: float, log: bool = False) -> Param:
    return Param(type="float", low=low, high=high, log=log)


def _categorical(*choices: Choice) -> Param:
    return Param(type="categorical", choices=list(choices))


# LoRA-like peft methods and the option that sets their rank (and scale).
RANK_OPTIONS: dict[str, dict[str, Param]] = {
    "lora": {"peft.options.r": _categorical(4, 8, 16, 32), "peft.options.lora_alpha": _categorical(8, 16, 32, 64)},
    "loha": {"peft.options.r": _categorical(4, 8, 16, 32)},
    "lokr": {"peft.options.r": _categorical(4, 8, 16, 32)},
}


def default_space(config: Config) -> dict[str, Param]:
    """The keys searched when `tune.space` says nothing, for the config's strategy (empty: none by default)."""
    if config.strategy == "fewshot":
        return {
            "fewshot.encoder": _categorical("contrastive", "finetune"),
            "fewshot.learning_rate": _float(5e-6, 2e-4, log=True),
            "fewshot.batch_size": _categorical(16, 32, 64),
            # Only contrastive batches are drawn per class.
            "fewshot.per_class": Param(
                type="categorical", choices=[2, 4, 8], when={"fewshot.encoder": ["contrastive"]}
            ),
            "fewshot.head_c": _float(0.01, 100.0, log=True),
        }
    if config.strategy not in ("finetune", "prompt"):
        return {}
    adapter = config.peft.method != "none"
    space = {
        # An adapter trains few parameters and wants a higher rate than the whole model (see docs/adapters.md).
        "train.learning_rate": _float(1e-4, 5e-3, log=True) if adapter else _float(1e-5, 5e-4, log=True),
        "train.epochs": Param(type="int", low=1, high=5),
        "train.batch_size": _categorical(16, 32, 64),
        "train.warmup_ratio": _float(0.0, 0.2),
        "train.weight_decay": _float(0.0, 0.1),
    }
    if config.train.max_steps is not None:  # max_steps overrides epochs: searching epochs would change nothing
        del space["train.epochs"]
    return space | RANK_OPTIONS.get(config.peft.method, {})


def is_set(config: Config, dotted: str) -> bool:
    """Whether the config (its YAML or an override) sets `dotted` explicitly, rather than leaving the default."""
    node: Any = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node, BaseModel):
            if part not in node.model_fields_set:
                return False
            node = getattr(node, part)
        elif isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
        else:
            return False
    last = parts[-1]
    if isinstance(node, BaseModel):
        return last in node.model_fields_set
    return isinstance(node, dict) and last in node


@dataclass(frozen=True)
class Space:
    """The checked search space: keys searched, keys pinned by `tune.space`, and defaults left fixed."""

    searched: dict[str, Param]
    fixed: dict[str, Any]
    kept: tuple[str, ...]  # default keys not searched because the config sets them
    unused: tuple[str, ...] = ()  # keys whose `when` the configured or pinned values never meet
    # The pinned or configured value of every key a searched entry's `when` names, for trials that do not draw it.
    given: dict[str, Any] = field(default_factory=dict)

    def applies(self, param: Param, drawn: dict[str, Any]) -> bool:
        """Whether `param` is drawn in a trial that has drawn `drawn` so far."""
        return all((drawn[k] if k in drawn else self.given[k]) in values for k, values in (param.when or {}).items())

    def describe(self) -> str:
        parts = [f"searching {', '.join(self.searched) or 'nothing'}"]
        if self.fixed:
            parts.append("pinned " + ", ".join(f"{k}={v!r}" for k, v in self.fixed.items()))
        if self.kept:
            parts.append(f"kept as configured {', '.join(self.kept)}")
        if self.unused:
            parts.append(f"not searched (their `when` is never met) {', '.join(self.unused)}")
        return "; ".join(parts)


def build_space(config: Config) -> Space:
    """The space of `config`: defaults minus explicitly set keys, then `tune.space`; each key checked.

    Raises `ConfigError` naming the `tune.space` key at fault (unknown key, a value of the wrong type, a key the
    strategy does not use).
    """
    entries: dict[str, Param] = {}
    kept = []
    for key, param in default_space(config).items():
        if is_set(config, key):
            kept.append(key)
        else:
            entries[key] = param
    for key, raw in config.tune.space.items():
        entries[key] = parse_param(key, raw)
    ignored = STRATEGIES.get(config.strategy).ignores
    for key, param in entries.items():
        check_key(config, key, param, ignored)
    searched = {k: p for k, p in entries.items() if p.type != "fixed"}
    fixed = {k: p.value for k, p in entries.items() if p.type == "fixed"}
    given = resolve_conditions(config, searched, fixed)
    unused = tuple(k for k, p in searched.items() if not _may_apply(p, searched, given))
    searched = {k: p for k, p in searched.items() if k not in unused}
    if not searched:
        raise ConfigError(
            f"tune.space: nothing to search for strategy {config.strategy}"
            + (f" (the config sets {', '.join(kept)})" if kept else "")
            + "; add entries such as `train.learning_rate: {type: float, low: 1e-5, high: 5e-4, log: true}`"
        )
    return Space(searched=searched, fixed=fixed, kept=tuple(kept), unused=unused, given=given)


def resolve_conditions(config: Config, searched: dict[str, Param], fixed: dict[str, Any]) -> dict[str, Any]:
    """The value every key a `when` names has in a trial that does not draw it: pinned, else as configured (a
    searched key may itself be conditional, and then keeps its configured value in some trials).

    Refuses a `when` that names an unknown key or a key searched after it (trials draw keys in order).
    """
    given: dict[str, Any] = {}
    tree = config.model_dump(mode="json")
    order = list(searched)
    for key, param in searched.items():
        for name in param.when or {}:
            if name in searched and order.index(name) > order.index(key):
                raise ConfigError(f"tune.space.{key}: when names {name}, which is searched after it; list it first")
            if name in fixed:
                given[name] = fixed[name]
            else:
                try:
                    given[name] = dotted_value(tree, name)
                except KeyError:
                    raise ConfigError(f"tune.space.{key}: when names {name}: unknown key") from None
    return given


def _may_apply(param: Param, searched: dict[str, Param], given: dict[str, Any]) -> bool:
    """Whether some trial can meet `param.when`: each named key is searched over a listed value, or given one."""
    for name, values in (param.when or {}).items():
        if name in searched:
            choices = searched[name].choices
            if choices is not None and not any(choice in values for choice in choices):
                return False
        elif given[name] not in values:
            return False
    return True


def parse_param(key: str, raw: Any) -> Param:
    """A `tune.space` entry as a `Param`; a `ConfigError` names the key and what is wrong."""
    if not isinstance(raw, dict):
        raise ConfigError(f"tune.space.{key}: expected a mapping such as {{type: float, low: 0, high: 1}}")
    try:
        param = Param.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"tune.space.{key}: {problems}") from None
    problem = param.problem()
    if problem:
        raise ConfigError(f"tune.space.{key}: {problem}")
    return param


def check_key(config: Config, key: str, param: Param, ignored: tuple[str, ...]) -> None:
    """Refuse a key a trial cannot set: not a config leaf, untunable, ignored by the strategy, or a value the
    config model rejects."""
    if key.split(".")[0] in UNTUNABLE:
        raise ConfigError(f"tune.space.{key}: this key cannot be tuned ({', '.join(UNTUNABLE)} are fixed per study)")
    if key in ignored:
        raise ConfigError(f"tune.space.{key}: strategy {config.strategy} does not use this key")
    if _is_section(key):
        raise ConfigError(f"tune.space.{key}: is a config section, not a key; name one of its keys")
    tree = config.model_dump(mode="json")
    for value in param.candidates():
        build_config(set_dotted(tree, key, value), f"tune.space.{key}={value!r}")


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of the nested `tree` with `dotted` set to `value` (missing sections are created)."""
    parts = dotted.split(".")
    head, rest = parts[0], ".".join(parts[1:])
    copy = dict(tree)
    if not rest:
        copy[head] = value
        return copy
    child = copy.get(head)
    copy[head] = set_dotted(child if isinstance(child, dict) else {}, rest, value)
    return copy


def _is_section(dotted: str) -> bool:
    model: type[BaseModel] = Config
    for part in dotted.split("."):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return True


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """Draw one value per searched key from an optuna `trial` (the key is the parameter's name)."""
    params: dict[str, Any] = {}
    for key, p in space.searched.items():
        if not space.applies(p, params):
            continue  # the key keeps its configured value in this trial
        if p.type == "categorical":
            params[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            assert p.low is not None and p.high is not None  # checked by Param.problem
            step = int(p.step) if p.step else 1
            params[key] = trial.suggest_int(key, int(p.low), int(p.high), step=step, log=p.log)
        else:
            assert p.low is not None and p.high is not None
            params[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
    return params
