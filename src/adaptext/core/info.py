"""Model folders: where a run keeps its model, and `ModelInfo`, the `adaptext.json` record saved beside the weights.

`ModelInfo` is the one schema of `adaptext.json`: `ModelInfo.read` is its one reader and `ModelInfo.write` its one
writer. Every key adaptext writes is a typed field whose default (what a folder without the key means) lives here.
A file keeps exactly the keys it was given, so a folder saved by an older release reads and rewrites unchanged, and
keys this release does not know (written by a newer one) are kept, not refused.

>>> info = ModelInfo(labels=["neg", "pos"], problem_type="multi_label_classification")
>>> info.task.name, info.threshold, info.text_column
('multi_label', 0.5, 'text')
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from adaptext.core.errors import AdaptextError
from adaptext.core.run import write_json
from adaptext.core.task import Task, task_of_problem_type

MODEL_SUBDIR = "model"
METADATA_FILE = "adaptext.json"
ADAPTER_CONFIG = "adapter_config.json"  # peft's
ENSEMBLE_SUBDIR = "members"  # an ensemble folder's copies of its members' model folders


INFO_FORMAT_VERSION = 1


def is_adapter_folder(path: Path) -> bool:
    """True for a peft adapter folder (weights of the adapter and head only, on top of a base model)."""
    return (path / ADAPTER_CONFIG).is_file()


def is_ensemble_folder(path: Path) -> bool:
    """True for a folder of member models: an ensemble (`adaptext ensemble`) or a routed folder
    (`continual.method: adapters`), its record beside `members/`, no weights of its own."""
    return (path / METADATA_FILE).is_file() and (path / ENSEMBLE_SUBDIR).is_dir()


def find_model_dir(path: str | Path) -> Path:
    """The model folder for `path`: a run folder (its `model/` inside), a model, adapter or ensemble folder."""
    path = Path(path)
    if not path.exists():
        raise AdaptextError(f"{path}: no such model or run folder")
    for folder in (path / MODEL_SUBDIR, path):
        if (folder / "config.json").is_file() or is_adapter_folder(folder) or is_ensemble_folder(folder):
            return folder
    raise AdaptextError(
        f"{path}: not a run folder (no {MODEL_SUBDIR}/ inside) nor a model folder (no config.json or {ADAPTER_CONFIG})"
    )


def _names(value: Any) -> Any:
    # Label names are strings in every file adaptext wrote; a hand-edited `[0, 1]` still means the names "0", "1".
    return [str(item) for item in value] if isinstance(value, list) else value


Names = Annotated[list[str], BeforeValidator(_names)]


class EnsembleMember(BaseModel):
    """One member of an ensemble folder, as its `adaptext.json` lists it under `ensemble`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    path: str = Field(description="The member's model folder, relative to the ensemble folder (`members/0`).")
    weight: float = Field(gt=0, description="The member's share of the mean probability (the weights sum to 1).")
    source: str | None = Field(None, description="The run or model folder the member was copied from.")
    kind: str | None = Field(None, description="The kind of model folder (`transformers`, `adapter`, ...).")


class RoutedExpert(BaseModel):
    """One expert of a routed folder (`continual.method: adapters`): the adapter of one task, under `members/`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    path: str = Field(description="The expert's adapter folder, relative to the routed folder (`members/0`).")
    task: str = Field(description="The task the expert was trained on.")


class Routing(BaseModel):
    """How a routed folder combines its experts (see `adaptext.inference.routed`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    experts: list[RoutedExpert] = Field(description="One adapter per task, in task order.")
    top_k: int = Field(ge=0, description="Experts run per text: the router's most probable tasks (0: all).")
    layers: list[int] = Field(description="The base model's hidden states the router reads (0: the embeddings).")
    shrinkage: float = Field(ge=0, le=1, description="The router's LDA covariance shrinkage.")


class ModelInfo(BaseModel):
    """What adaptext saved beside a model: how to rebuild it and how it reads its data.

    `None` means "not recorded": the reader then asks the model folder itself (its config, peft's
    `adapter_config.json`, the tokenizer).
    """

    # extra="allow": keys written by a newer release are kept (and written back), not refused.
    model_config = ConfigDict(extra="allow", frozen=True)

    format_version: int = Field(INFO_FORMAT_VERSION, description="Version of this record's format.")

    # How the model was made.
    base_model: str | None = Field(None, description="The model name the run was given (`model.name`).")
    base_model_path: str | None = Field(None, description="The local folder or hub id that name resolved to.")
    strategy: str | None = Field(None, description="The strategy that trained the model (`finetune`, `prompt`, ...).")
    peft_method: str | None = Field(
        None, description="The peft method of an adapter, `none` for a full model; unset: peft's adapter config says."
    )
    labels: Names | None = Field(None, description="The label names in output order.")
    problem_type: str | None = Field(
        None, description="transformers' `problem_type`: `multi_label_classification` or single-label."
    )

    # How it reads data and decides.
    max_length: int | None = Field(None, description="Tokens per text; unset: the tokenizer's limit, at most 512.")
    threshold: float = Field(0.5, description="Multi-label decision threshold on each label's probability.")
    text_column: str = Field("text", description="Column holding the text.")
    text_pair_column: str | None = Field(None, description="Column holding the second text of a pair, if any.")
    label_column: str = Field("label", description="Column holding the label (or labels).")
    label_delimiter: str = Field("|", description="Separator of labels in a multi-label CSV/TSV cell.")

    # Strategy extras: few-shot and zero-shot (temperature), zero-shot (scorer ... descriptions), prompt (PET).
    temperature: float | None = Field(None, description="Softmax temperature the logits were divided by.")
    scorer: str | None = Field(None, description="Zero-shot scorer: `similarity` (embeddings) or `nli` (entailment).")
    template: str | None = Field(None, description="Zero-shot hypothesis template, or the prompt's cloze template.")
    hypotheses: list[str] | None = Field(None, description="Zero-shot: each label's sentence, in label order.")
    descriptions: dict[str, str] | None = Field(None, description="Zero-shot: the label descriptions given.")
    verbalizer: dict[str, str] | None = Field(None, description="Prompt: label -> the token read at the mask.")
    verbalizer_ids: list[int] | None = Field(None, description="Prompt: the vocabulary id of each label's token.")

    # Post-hoc steps after training: calibration and out-of-scope detection.
    calibration: dict[str, Any] | None = Field(
        None,
        description="Temperature scaling fitted on validation: `temperature` T, `folded` (True: the output layer's "
        "saved weights were divided by T, so the folder's logits are calibrated; False: adaptext divides the logits "
        "by T), the validation texts it was fitted on (`n`), and ECE / NLL before and after.",
    )
    ood: dict[str, Any] | None = Field(
        None,
        description="The out-of-scope detector (`method`, raw-score `threshold`, `label`, `k`, `in_scope_recall`); "
        "its arrays are in `ood.safetensors`.",
    )

    # Deploy extras: ONNX export and merged adapters.
    backend: str | None = Field(None, description="`onnx` for an ONNX export; unset for a PyTorch folder.")
    quantize: str | None = Field(None, description="An export's quantization (`int8`), or none.")
    exported_from: str | None = Field(None, description="The model folder an export was made from.")
    export_check: dict[str, Any] | None = Field(None, description="The export's parity check (`ExportCheck`).")
    merged_from: str | None = Field(None, description="The adapter folder a merged model was made from.")
    merged_method: str | None = Field(None, description="The peft method that was merged.")
    merge_check: dict[str, Any] | None = Field(None, description="The merge's parity check (`MergeCheck`).")

    # Ensembles and weight averages (`adaptext ensemble`).
    ensemble: list[EnsembleMember] | None = Field(
        None,
        description="An ensemble folder's members: its probabilities are their weighted mean (see docs/ensemble.md).",
    )
    routed: Routing | None = Field(
        None,
        description="A routed folder's experts (`continual.method: adapters`): one adapter per task on one base model, "
        "weighed by the router in `router.safetensors` (see docs/continual.md).",
    )
    averaged_from: list[str] | None = Field(
        None, description="The model folders whose weights were averaged into this one (`--average-weights`)."
    )

    _source: Path | None = PrivateAttr(None)

    @field_validator("threshold", "text_column", "label_column", "label_delimiter", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        # Earlier files may hold `null` where a default is meant; readers always took it so.
        if value is None:
            return cls.model_fields[str(info.field_name)].default
        return value

    @property
    def task(self) -> Task:
        """Single- or multi-label, from `problem_type`."""
        return task_of_problem_type(self.problem_type)

    @property
    def source(self) -> str:
        """The file this record was read from, for messages (`adaptext.json` when it was not read)."""
        return str(self._source) if self._source is not None else METADATA_FILE

    def data_settings(self, columns: dict[str, str | None] | None = None) -> dict[str, Any]:
        """The `data` config keys to read a file the way the model was trained (columns, label delimiter, multi-label),
        with the non-None `columns` given instead."""
        settings: dict[str, Any] = {
            "text_column": self.text_column,
            "text_pair_column": self.text_pair_column,
            "label_column": self.label_column,
            "label_delimiter": self.label_delimiter,
        }
        return settings | {k: v for k, v in (columns or {}).items() if v is not None}

    def missing(self, key: str) -> AdaptextError:
        """The error for a folder whose record lacks `key`, which this kind of folder needs."""
        return AdaptextError(f"{self.source}: no {key!r}; was this folder saved by adaptext?")

    @classmethod
    def read(cls, model_dir: Path) -> ModelInfo:
        """The record saved in `model_dir`; a folder adaptext did not write gives every default."""
        path = model_dir / METADATA_FILE
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise AdaptextError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(raw, dict):
            raise AdaptextError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        try:
            info = cls.model_validate(raw)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors(include_url=False)
            )
            raise AdaptextError(f"{path}: {problems}") from None
        info._source = path
        return info

    def to_dict(self) -> dict[str, Any]:
        """The keys this record was given (read from a file or set by a writer), unknown ones included, as JSON."""
        return self.model_dump(mode="json", exclude_unset=True)

    def updated(self, **changes: Any) -> ModelInfo:
        """A copy with `changes` set (validated); a name that is no field of the schema is a programming error."""
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise TypeError(f"not adaptext.json fields: {', '.join(unknown)}; add them to ModelInfo")
        return type(self).model_validate(self.to_dict() | changes)

    def extended(self, **fields: Any) -> ModelInfo:
        """A copy with `fields` set: schema fields validated, others kept as extra keys (a plug-in's own record)."""
        known = {k: v for k, v in fields.items() if k in type(self).model_fields}
        return type(self).model_validate(self.to_dict() | fields).updated(**known)

    def write(self, folder: Path) -> None:
        """Write this record as `folder/adaptext.json` (always with its format version)."""
        write_json(folder / METADATA_FILE, {"format_version": self.format_version} | self.to_dict())
