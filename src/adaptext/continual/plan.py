"""A continual plan: a base config, a method, and tasks trained one after another (`adaptext continual PLAN.yaml`).

```yaml
output_dir: runs/cl
seed: 0
base:                      # any training config keys: model, data columns, train ...
  model: {name: minilm}
  train: {epochs: 3}
continual:
  method: replay
  memory_per_class: 2
tasks:
  - {name: t1, train: t1.csv, validation: t1_dev.csv, test: t1_test.csv}   # validation/test optional
  - {name: t2, train: t2.csv}
```

`check_plan` reads every task's files before anything is trained: a missing column, a label that changes spelling
between tasks, or tasks that read different columns fail at once, naming the task and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adaptext.core.config import (
    Config,
    Int,
    UserPath,
    _merge,
    build_config,
    dotted_value,
    expand_user,
    parse_overrides,
)
from adaptext.core.errors import ConfigError, DataError
from adaptext.data.io import load_examples
from adaptext.data.labels import label_spellings

TASK_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
COLUMN_KEYS = ("text_column", "text_pair_column", "label_column")
PER_TASK_KEYS = ("output_dir", "seed", "data.train", "data.validation", "data.test", "continual")


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=TASK_NAME)]
    train: UserPath
    validation: UserPath | None = None
    test: UserPath | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None


class ContinualPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dir: UserPath
    seed: Int = 42
    base: dict[str, Any] = Field(default_factory=dict)
    continual: dict[str, Any] = Field(default_factory=dict)
    tasks: list[TaskSpec] = Field(min_length=1)
    keep_task_models: bool = Field(
        False, description="Keep every task's model folder (by default only the last one, beside the final model)."
    )

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, tasks: list[TaskSpec]) -> list[TaskSpec]:
        names = [task.name for task in tasks]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"task names must be unique; repeated: {', '.join(repeated)}")
        return tasks

    def task_config(self, index: int, output_dir: Path) -> Config:
        """Task `index`'s training config: the base with the task's files, the plan's seed and method."""
        task = self.tasks[index]
        tree = yaml.safe_load(yaml.safe_dump(self.base)) or {}
        data = tree.setdefault("data", {})
        data.update(train=str(task.train), validation=_text(task.validation), test=_text(task.test))
        for key in COLUMN_KEYS:
            if getattr(task, key) is not None:
                data[key] = getattr(task, key)
        tree.update(output_dir=str(output_dir), seed=self.seed, continual=self.continual)
        return build_config(tree, source=f"task {task.name}")


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def load_plan(path: str | Path, overrides: list[str] | None = None) -> ContinualPlan:
    """Read and validate a plan; `key.path=value` overrides apply to it (`continual.method=ewc`,
    `base.train.epochs=1`)."""
    path = expand_user(Path(path))
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the plan ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a plan is a mapping with output_dir, base, continual and tasks")
    tree = _merge(tree, parse_overrides(overrides or []))
    try:
        plan = ContinualPlan.model_validate(tree)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    set_per_task = [key for key in PER_TASK_KEYS if _has(plan.base, key)]
    if set_per_task:
        raise ConfigError(
            f"{path}: base sets {', '.join(set_per_task)}, which the plan sets for each task; remove it from base"
        )
    return plan


def _has(tree: dict[str, Any], dotted: str) -> bool:
    try:
        dotted_value(tree, dotted)
    except KeyError:
        return False
    return True


def check_plan(plan: ContinualPlan, configs: list[Config]) -> list[list[str]]:
    """Read every task's files; return each task's labels (in file order of first appearance). One-line errors name
    the task and file: a missing column, a task reading other columns than the first, a label spelt two ways."""
    first = configs[0].data
    seen: dict[str, tuple[str, str]] = {}  # label -> (task, file) where it first appeared
    labels_per_task = []
    for task, config in zip(plan.tasks, configs, strict=True):
        data = config.data
        differing = [key for key in COLUMN_KEYS if getattr(data, key) != getattr(first, key)]
        if differing:
            key = differing[0]
            raise DataError(
                f"task {task.name} ({task.train}): reads {key} {getattr(data, key)!r}, but task {plan.tasks[0].name} "
                f"reads {getattr(first, key)!r}; one model reads one column: rename the column in the task's file"
            )
        names: list[str] = []
        for path in (p for p in (task.train, task.validation, task.test) if p is not None):
            try:
                examples = load_examples(path, data)
            except DataError as error:
                raise DataError(f"task {task.name}: {error}") from None
            assert examples.labels is not None
            for value in examples.labels:
                for name in value if isinstance(value, list) else [str(value)]:
                    if name not in names:
                        names.append(name)
                    if name not in seen:
                        seen[name] = (task.name, str(path))
        for difference, group in label_spellings(seen):
            owners = {seen[name][0] for name in group}
            if len(group) > 1 and task.name in owners:
                mine = next(name for name in group if seen[name][0] == task.name)
                other = next(name for name in group if name != mine)
                raise DataError(
                    f"task {task.name} ({seen[mine][1]}): label {mine!r} differs from {other!r} of task "
                    f"{seen[other][0]} ({seen[other][1]}) only in {difference}; write one label one way in every task"
                )
        labels_per_task.append(names)
    return labels_per_task
