"""Continuing a trained classifier on new data: the head grows, and the configured method keeps the old knowledge.

`Continue` is fine-tuning (the same engine, data checks and saved folder) started from a previous run's model
instead of a fresh head, with:

- the head grown for the new data's labels (old label ids keep their rows: `grow_head`);
- the replay memory (or, for `joint`, all earlier training data) added to the training data;
- `ContinualLoss`'s EWC and LwF terms, and weight aligning of the head after training;
- afterwards, the run's own memory and EWC state written into `continual/` of its folder for the next increment.

Its run folder is an ordinary fine-tuning run (`strategy: finetune`), so `evaluate`, `predict`, `export`, `serve` and
plain `transformers` take its model as they take any other.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaptext.continual.memory import STATE_DIR, concat, memory_path, read_memory, select_memory, write_memory
from adaptext.continual.methods import (
    EWC_FILE,
    ContinualLoss,
    Distillation,
    EwcPenalty,
    EwcState,
    align_new_rows,
    fisher_diagonal,
)
from adaptext.core.config import ROBUST_KEYS, Config, load_config
from adaptext.core.device import process_state, resolve_precision
from adaptext.core.errors import AdaptextError, ConfigError, DataError
from adaptext.core.info import (
    ENSEMBLE_SUBDIR,
    METADATA_FILE,
    ModelInfo,
    RoutedExpert,
    Routing,
    find_model_dir,
    is_adapter_folder,
)
from adaptext.core.run import RunPaths, replace_dir, write_json
from adaptext.core.task import task_of
from adaptext.data.batching import Collator, LengthGroupedBatches, encode
from adaptext.data.examples import Splits, TextData
from adaptext.data.labels import label_names, label_spellings, label_targets
from adaptext.data.splits import load_splits
from adaptext.evaluation.metrics import evaluate_data
from adaptext.inference.predictor import Predictor
from adaptext.inference.routed import (
    ROUTER_FILE,
    ROUTER_STATS_FILE,
    Router,
    RouterHead,
    route_embeddings,
    router_layers,
)
from adaptext.modeling.build import grow_head, load_trained
from adaptext.modeling.embedding import embed
from adaptext.modeling.hub import load_tokenizer, resolve_model_name
from adaptext.modeling.lda import LDA_FILE, ClassStatistics, set_head
from adaptext.strategies.finetune import Finetune, FinetunePrepared, classifier
from adaptext.training.engine import TrainingJob, in_memory_predictor, run_training
from adaptext.training.lifecycle import save_model
from adaptext.training.objectives import CrossEntropy, class_weights
from adaptext.training.optim import planned_steps, resolve_learning_rate
from adaptext.training.state import TrainingState
from adaptext.training.strategy import Prepared, Run

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"  # in `continual/`: the base model and the increments so far
EXTEND_METRICS = "extend_metrics.json"


def shrinkage_for(
    setting: float | str, stats: ClassStatistics, embeddings: np.ndarray, targets: np.ndarray
) -> tuple[float, ClassStatistics]:
    """The LDA shrinkage a task's head takes, and the statistics to keep: the configured value, or for `auto` the one
    whose held-out accuracy, summed over this task's examples (`embeddings` of class ids `targets`, already in
    `stats`) and every earlier task's, is best (`ClassStatistics.cross_validated`)."""
    if setting != "auto":
        return float(setting), stats
    stats = stats.cross_validated(embeddings, targets)
    chosen = stats.auto_shrinkage()
    logger.info("continual: LDA shrinkage %g, cross-validated on the examples of every task so far", chosen)
    return chosen, stats


@dataclass
class Previous:
    """The run (or model folder) a continued run starts from."""

    model_dir: Path
    info: ModelInfo
    run_dir: Path | None  # None for a bare model folder
    config: Config | None  # the run's config.yaml, when there is one

    @property
    def labels(self) -> list[str]:
        return list(self.info.labels or [])

    @property
    def state(self) -> dict[str, Any]:
        """`continual/state.json` of the run (what earlier increments recorded), or {}."""
        if self.run_dir is None or not (self.run_dir / STATE_DIR / STATE_FILE).is_file():
            return {}
        return dict(json.loads((self.run_dir / STATE_DIR / STATE_FILE).read_text(encoding="utf-8")))

    @property
    def base_model(self) -> str:
        """The model the first run of the chain started from (what `joint` retrains from)."""
        return str(self.state.get("base_model") or (self.config.model.name if self.config else self.info.base_model))


def previous_run(path: str | Path) -> Previous:
    """The run or model folder at `path`, checked to be one whose model can grow; one-line errors otherwise."""
    model_dir = find_model_dir(path)
    info = ModelInfo.read(model_dir) if (model_dir / METADATA_FILE).is_file() else ModelInfo()
    what = f"{path}"
    if info.backend == "onnx":
        source = f" (exported from {info.exported_from})" if info.exported_from else ""
        raise AdaptextError(f"{what}: an ONNX export cannot be trained further; extend the run it came from{source}")
    if is_adapter_folder(model_dir):
        raise AdaptextError(
            f"{what}: a peft adapter; merge it into its base first (`adaptext merge`), then extend the merged folder"
        )
    if info.strategy not in (None, "finetune"):
        raise AdaptextError(
            f"{what}: a {info.strategy} model; only fine-tuned models (strategy finetune) grow new labels"
        )
    weights = ("model.safetensors", "pytorch_model.bin")
    if info.routed is None and not any((model_dir / name).is_file() for name in weights):
        raise AdaptextError(f"{what}: holds no transformers weights (model.safetensors) to train further")
    if not info.labels:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        id2label = config.get("id2label") or {}
        info = info.extended(labels=[str(id2label[k]) for k in sorted(id2label, key=int)])
    run_dir = model_dir.parent if model_dir.name == "model" and (model_dir.parent / "config.yaml").is_file() else None
    config = load_config(run_dir / "config.yaml") if run_dir is not None else None
    return Previous(model_dir=model_dir, info=info, run_dir=run_dir, config=config)


@dataclass
class ContinuePrepared(FinetunePrepared):
    old_labels: list[str] = field(default_factory=list)
    memory: TextData | None = None  # examples replayed with the new data (joint: all earlier training data)
    memory_tasks: list[str] = field(default_factory=list)
    select_from_old: bool = False  # `memory` is the previous run's whole training data, to select from at fit
    old_eval: TextData | None = None  # the previous run's evaluation data, for the before/after report
    ewc_state: EwcState | None = None
    slda_stats: ClassStatistics | None = None  # the previous runs' class statistics (slda)
    slda_old: TextData | None = None  # the previous run's training data, when it saved no statistics (slda)


class Continue(Finetune):
    """Fine-tuning that continues `previous` (or, for the first task or `joint`, starts from `config.model.name`)."""

    name = "finetune"  # the folder it writes is an ordinary fine-tuned model
    # Its job is built by its own `fit` with the continual methods' loss, which the robust options do not wrap; its
    # methods keep per-parameter state across tasks (EWC's Fisher, LwF's previous model), so every embedding row
    # trains.
    ignores = (*ROBUST_KEYS, "train.embedding_rows")
    regression = False  # the continual methods (replay, EWC, LwF, SLDA) are defined on labels
    self_trainable = False  # its prepared memory and previous model are for one fit

    def __init__(
        self,
        previous: Previous | None,
        *,
        task_name: str = "",
        earlier: TextData | None = None,
        earlier_tasks: list[str] | None = None,
        known_labels: list[str] | None = None,
        compare: bool = True,
    ) -> None:
        """`earlier` (with the task of each example): all earlier training data, which `joint` trains on with the
        new; `known_labels`: the labels a `joint` run keeps in front; `compare`: score the previous model against
        the new one on old and new data for the report."""
        self.previous, self.task_name = previous, task_name
        self.earlier, self.earlier_tasks = earlier, earlier_tasks or []
        self.known_labels = known_labels or (previous.labels if previous else [])
        self.compare = compare and previous is not None
        self.prepared: ContinuePrepared | None = None
        self.seconds: dict[str, float] = {}

    @property
    def joint(self) -> bool:
        return self.earlier is not None

    def check(self, config: Config) -> None:
        if config.data.problem == "regression":
            raise ConfigError("extend and continual learn new labels; data.problem=regression has none")
        super().check(config)
        multi_label = task_of(config).multi_label
        parts = config.continual.parts(multi_label)
        routed = self.previous is not None and self.previous.info.routed is not None
        if "adapters" in parts:
            self.check_adapters(config, multi_label)
        elif config.peft.method != "none":
            raise ConfigError("continual methods train the full model; set peft.method=none")
        elif routed:
            assert self.previous is not None
            raise ConfigError(
                f"{self.previous.model_dir}: a routed model (one adapter per task) continues only with "
                "continual.method=adapters"
            )
        if "slda" in parts and multi_label:
            raise ConfigError("continual.method=slda fits one class per text; use replay, ewc or lwf for multi-label")
        if "joint" in parts and not self.joint and self.previous is not None:
            raise ConfigError("continual.method=joint retrains on all data: the caller must give the earlier data")
        if self.previous is not None and self.previous.info.task.multi_label != task_of(config).multi_label:
            raise ConfigError(
                f"{self.previous.model_dir}: a {self.previous.info.task.name} model cannot continue on "
                f"{task_of(config).name} data; set data.multi_label={str(self.previous.info.task.multi_label).lower()}"
            )

    def check_adapters(self, config: Config, multi_label: bool) -> None:
        if multi_label:
            raise ConfigError(
                "continual.method=adapters routes each text to its task's labels; use replay for multi-label"
            )
        if config.peft.method not in ("none", "lora"):
            raise ConfigError(
                f"continual.method=adapters trains LoRA adapters; peft.method={config.peft.method} is not one"
            )
        if self.previous is not None and self.previous.info.routed is None:
            raise ConfigError(
                f"{self.previous.model_dir}: continual.method=adapters continues a run made with it (one adapter per "
                "task); this is one fine-tuned model: extend it with slda, replay, ewc or lwf"
            )
        if self.previous is not None and not self.router_stats_path().is_file():
            raise ConfigError(
                f"{self.previous.model_dir}: continuing a routed model needs its run's router statistics "
                f"({STATE_DIR}/{ROUTER_STATS_FILE} beside model/), which are not there; extend the run folder it "
                "was saved in"
            )

    def router_stats_path(self) -> Path:
        assert self.previous is not None
        run_dir = self.previous.run_dir or self.previous.model_dir
        return run_dir / STATE_DIR / ROUTER_STATS_FILE

    def prepare(self, config: Config) -> ContinuePrepared:
        cfg, parts = config.train, config.continual.parts(task_of(config).multi_label)
        precision = resolve_precision(cfg.precision)
        splits = load_splits(config, known=self.known_labels)
        check_spellings(self.known_labels, splits)
        prepared = ContinuePrepared(splits=splits, precision=precision, old_labels=list(self.known_labels))
        if self.joint:
            prepared.memory, prepared.memory_tasks = self.earlier, self.earlier_tasks
        elif self.previous is not None and parts & {"replay", "ewc"}:
            self.find_memory(config, prepared)
        if self.previous is not None and "slda" in parts:
            saved = self.previous.run_dir / STATE_DIR / LDA_FILE if self.previous.run_dir is not None else None
            if saved is not None and saved.is_file():
                prepared.slda_stats = ClassStatistics.load(saved)
            else:
                prepared.slda_old = self.old_training_data(config)
                check_every_label(prepared.slda_old, splits, self.previous)
        if self.previous is not None and "ewc" in parts and self.previous.run_dir is not None:
            saved = self.previous.run_dir / STATE_DIR / EWC_FILE
            prepared.ewc_state = EwcState.load(saved) if saved.is_file() else None
        if self.compare:
            prepared.old_eval = self.old_evaluation()
        if prepared.memory is not None:
            check_spellings(self.known_labels, splits, prepared.memory)
        source = self.previous.model_dir if self.previous is not None and not self.joint else config.model.name
        prepared.tokenizer = load_tokenizer(str(source))
        self.prepared = prepared
        return prepared

    def find_memory(self, config: Config, prepared: ContinuePrepared) -> None:
        """The previous run's memory file; for a run without one, its training data (the memory is chosen from it
        with the previous model at fit)."""
        assert self.previous is not None
        run_dir = self.previous.run_dir
        if run_dir is not None and memory_path(run_dir).is_file():
            prepared.memory, prepared.memory_tasks = read_memory(memory_path(run_dir), config.data)
            return
        prepared.memory, prepared.select_from_old = self.old_training_data(config), True
        missing = labels_without_examples(self.known_labels, prepared.memory)
        if missing:
            logger.warning(
                "%s: its training file has no examples of %d of its labels (%s): the memory cannot keep them",
                self.previous.model_dir,
                len(missing),
                ", ".join(missing[:5]),
            )
        prepared.memory_tasks = [str(self.previous.run_dir or self.previous.model_dir)] * len(prepared.memory)

    def old_training_data(self, config: Config) -> TextData:
        """The previous run's training data (from the file its config.yaml names), for a run that saved no memory
        or statistics; a `DataError` when it is not readable any more."""
        assert self.previous is not None
        old = self.previous.config
        if old is None or old.data.train is None or not Path(old.data.train).is_file():
            where = f"{old.data.train} (its data.train) is not readable" if old and old.data.train else "no data.train"
            method = config.continual.resolved(task_of(config).multi_label)
            raise DataError(
                f"{self.previous.model_dir}: continual.method={method} needs examples of the old "
                f"labels, and the run saved none in {STATE_DIR}/ and has {where}; use continual.method=lwf or "
                "naive, or give the old training file back"
            )
        return load_splits(old, known=self.previous.labels).train

    def old_evaluation(self) -> TextData | None:
        """The previous run's test (or validation) data, when its files are still readable."""
        assert self.previous is not None
        old = self.previous.config
        if old is None or old.data.train is None:
            return None
        try:
            old_splits = load_splits(old)
        except (AdaptextError, OSError) as error:
            logger.warning(
                "%s: its evaluation data is not readable (%s); the report scores new data only",
                self.previous.model_dir,
                error,
            )
            return None
        return old_splits.test if old_splits.test is not None else old_splits.validation

    def fit(self, prepared: Prepared, run: Run) -> TrainingState:
        assert isinstance(prepared, ContinuePrepared) and prepared.tokenizer is not None
        config, cfg, tokenizer = run.config, run.config.train, prepared.tokenizer
        task, splits, settings = task_of(config), prepared.splits, config.continual
        parts = settings.parts(task.multi_label)
        if "slda" in parts:
            return self.fit_slda(prepared, run)
        if "adapters" in parts:
            return self.fit_adapters(prepared, run)
        started = time.perf_counter()
        previous_model = None
        if self.previous is not None and not self.joint:
            previous_model = load_trained(self.previous.model_dir)
        memory = prepared.memory
        if prepared.select_from_old and memory is not None:
            assert previous_model is not None
            chosen = self.choose(previous_model, tokenizer, config, memory, prepared.old_labels)
            memory = memory.subset(chosen)
            prepared.memory, prepared.memory_tasks = memory, [prepared.memory_tasks[i] for i in chosen]
        if memory is not None and "replay" not in parts and not self.joint:
            memory = None  # EWC alone uses the memory for its Fisher, not as training data
        train_data = concat([splits.train, memory], splits.train.source) if memory is not None else splits.train
        train_set = encode(tokenizer, train_data, splits.labels, config.data.max_length, task)
        batches = LengthGroupedBatches(train_set.lengths, cfg.batch_size, seed=config.seed)
        steps = planned_steps(cfg, len(batches))
        collate = Collator(tokenizer.pad_token_id or 0, task)
        lwf = ewc = None
        if previous_model is not None:
            if "lwf" in parts:
                teacher = in_memory_predictor(previous_model, tokenizer, config)
                scores = teacher.predict_logits(train_data.texts, train_data.pairs)
                lwf = Distillation(torch.from_numpy(scores), settings.lwf_weight, settings.lwf_temperature, task)
            if "ewc" in parts:
                known = prepared.ewc_state or self.old_fisher(previous_model, tokenizer, config, prepared)
                ewc = EwcPenalty(known, settings.ewc_lambda) if known is not None else None
            model = previous_model
            old_count = grow_head(model, splits.labels)
        else:
            model = classifier(config, splits.labels, steps)
            old_count = 0  # trained on every label at once: nothing to realign
        self.seconds["prepare_s"] = time.perf_counter() - started
        weights = class_weights(cfg, Splits(train_data, splits.validation, None, splits.labels), task)
        learning_rate = resolve_learning_rate(cfg, model, "none")
        logger.info(
            "continual %s: %d new examples%s, %d labels (%d new), %d optimizer steps at learning rate %g",
            settings.resolved(task.multi_label),
            len(splits.train),
            f" + {len(memory)} {'earlier' if self.joint else 'remembered'}" if memory is not None else "",
            len(splits.labels),
            len(splits.labels) - len(prepared.old_labels),
            steps,
            learning_rate,
        )
        rebalance = settings.rebalance and not task.multi_label and old_count > 0

        def save(trained: nn.Module, target: Path) -> None:
            save_model(trained, tokenizer, config, target)  # type: ignore[arg-type]

        def finish(trained: nn.Module) -> Any:
            if rebalance:
                factor = align_new_rows(trained, old_count)
                logger.info("weight aligning: the new labels' head rows scaled by %.3f", factor or 1.0)
            return evaluate_data(in_memory_predictor(trained, tokenizer, config), splits.validation)

        job = TrainingJob(
            model=model,
            dataset=train_set,
            batches=batches,
            collate=collate,
            objective=ContinualLoss(task, weights, ewc=ewc, lwf=lwf),
            steps=steps,
            learning_rate=learning_rate,
            warmup_ratio=cfg.warmup_ratio,
            precision=prepared.precision,
            evaluate=None,  # a continued run keeps its last model: the new validation data alone cannot judge it
            save=save,
            finish=finish,
        )
        state = self.run_job(job, run)
        if process_state().is_main_process:
            remembered = time.perf_counter()
            self.remember(model, tokenizer, config, run.paths, prepared, ewc.state if ewc is not None else None)
            self.seconds["remember_s"] = time.perf_counter() - remembered
        return state

    def fit_slda(self, prepared: ContinuePrepared, run: Run) -> TrainingState:
        """No training: the encoder stays, and the head is LDA on the class statistics of every example so far."""
        assert prepared.tokenizer is not None
        config, tokenizer, splits, task = run.config, prepared.tokenizer, prepared.splits, task_of(run.config)
        started = time.perf_counter()
        if self.previous is not None:
            model = load_trained(self.previous.model_dir)
            grow_head(model, splits.labels)
        else:
            model = classifier(config, splits.labels, steps=1)
        stats = prepared.slda_stats
        embedded: dict[str, np.ndarray] = {}  # the encoder never changes here: herding reuses these
        targets: dict[str, np.ndarray] = {}
        for name, data in (("old", prepared.slda_old), ("new", splits.train)):
            if data is None:
                continue
            encoded = encode(tokenizer, data, splits.labels, config.data.max_length, task)
            embedded[name] = embed(model, encoded, pad_token_id=tokenizer.pad_token_id or 0)
            stats = stats or ClassStatistics.empty(0, embedded[name].shape[1])
            targets[name] = label_targets(data, splits.labels, task)
            stats = stats.update(embedded[name], targets[name], len(splits.labels))
        assert stats is not None
        if prepared.memory is None and prepared.slda_old is not None:  # the memory a later replay would need
            chosen = self.choose(model, tokenizer, config, prepared.slda_old, splits.labels, embedded["old"])
            prepared.memory = prepared.slda_old.subset(chosen)
            prepared.memory_tasks = [str(self.previous.model_dir if self.previous else "")] * len(chosen)
        shrinkage, stats = shrinkage_for(config.continual.slda_shrinkage, stats, embedded["new"], targets["new"])
        weights, bias = stats.head(shrinkage)
        set_head(model, weights, bias)
        self.seconds["train_s"] = time.perf_counter() - started
        process = process_state()
        if process.is_main_process:
            save_model(model, tokenizer, config, run.paths.model)
            stats.save(run.paths.root / STATE_DIR / LDA_FILE)
            remembered = time.perf_counter()
            self.remember(model, tokenizer, config, run.paths, prepared, None, embedded["new"])
            self.seconds["remember_s"] = time.perf_counter() - remembered
        process.wait_for_everyone()
        for callback in run.callbacks:
            callback.on_save(model, run.paths.model)
        total = sum(p.numel() for p in model.parameters())
        return TrainingState(done=True, total_parameters=total)

    def fit_adapters(self, prepared: ContinuePrepared, run: Run) -> TrainingState:
        """A new LoRA adapter and head for this task's labels on the frozen base; the earlier tasks' adapters are
        copied unchanged, and the router's statistics take this task's examples (`adaptext.inference.routed`)."""
        assert prepared.tokenizer is not None
        config, cfg, tokenizer = run.config, run.config.train, prepared.tokenizer
        task, splits = task_of(config), prepared.splits
        started = time.perf_counter()
        earlier: list[tuple[str, Path]] = []  # each earlier task's name and adapter folder
        router: Router | None = None
        layers: list[int] | None = None
        base = config.model.name
        if self.previous is not None:
            routing = self.previous.info.routed
            assert routing is not None
            earlier = [(expert.task, self.previous.model_dir / expert.path) for expert in routing.experts]
            router, layers = Router.load(self.router_stats_path()), routing.layers
            base = self.previous.base_model
        present = set(splits.train.labels or [])
        labels = [name for name in splits.labels if name in present]  # this task's labels, in the model's order
        expert_config = config.model_copy(
            update={
                "model": config.model.model_copy(update={"name": base}),
                "peft": config.peft.model_copy(update={"method": "lora"}),
            }
        )
        train_set = encode(tokenizer, splits.train, labels, config.data.max_length, task)
        batches = LengthGroupedBatches(train_set.lengths, cfg.batch_size, seed=config.seed)
        steps = planned_steps(cfg, len(batches))
        model = classifier(expert_config, labels, steps)
        if layers is None:
            layers = router_layers(model.config.num_hidden_layers, model.config.hidden_size)
        embeddings = route_embeddings(model, train_set, layers, pad_token_id=tokenizer.pad_token_id or 0)
        targets = label_targets(splits.train, splits.labels, task)
        router = (router or Router.empty(embeddings.shape[1])).update(embeddings, len(earlier), targets)
        settings = config.continual
        shrinkage, stats = shrinkage_for(
            settings.router_shrinkage, router.stats, embeddings, router.routes(len(earlier), targets)
        )
        router = replace(router, stats=stats)
        name = self.task_name or Path(str(config.data.train)).stem
        self.seconds["prepare_s"] = time.perf_counter() - started
        logger.info(
            "continual adapters: task %d (%s), a LoRA adapter for %d labels on %d examples, %d optimizer steps",
            len(earlier) + 1,
            name,
            len(labels),
            len(splits.train),
            steps,
        )
        own = splits.validation
        if own is not None:
            own = own.subset([i for i, label in enumerate(own.labels or []) if label in present])
        scored = own if own is not None and len(own) else splits.train

        routing = Routing(experts=[], top_k=settings.adapter_top_k, layers=layers, shrinkage=shrinkage)

        def save(trained: nn.Module, target: Path) -> None:
            head = router.head(routing.shrinkage)
            save_routed(trained, tokenizer, expert_config, target, earlier, name, head, routing, splits.labels)

        def finish(trained: nn.Module) -> Any:  # the expert alone, on the validation texts of its own labels
            return evaluate_data(in_memory_predictor(trained, tokenizer, expert_config), scored)

        job = TrainingJob(
            model=model,
            dataset=train_set,
            batches=batches,
            collate=Collator(tokenizer.pad_token_id or 0, task),
            objective=CrossEntropy(task, class_weights(cfg, Splits(splits.train, splits.train, None, labels), task)),
            steps=steps,
            learning_rate=resolve_learning_rate(cfg, model, "lora"),
            warmup_ratio=cfg.warmup_ratio,
            precision=prepared.precision,
            evaluate=None,
            save=save,
            finish=finish,
        )
        state = self.run_job(job, run)
        if process_state().is_main_process:
            folder = run.paths.root / STATE_DIR
            folder.mkdir(exist_ok=True)
            router.save(folder / ROUTER_STATS_FILE)
            self.record(config, folder, prepared)
        return state

    def run_job(self, job: TrainingJob, run: Run) -> TrainingState:
        """Run `job` on the engine, its time kept as `train_s`."""
        started = time.perf_counter()
        state = run_training(job, run)
        self.seconds["train_s"] = time.perf_counter() - started
        return state

    def choose(
        self,
        model: nn.Module,
        tokenizer: Any,
        config: Config,
        data: TextData,
        labels: list[str],
        embeddings: np.ndarray | None = None,
    ) -> list[int]:
        """`memory_per_class` examples of each label of `data`, chosen with `model`'s embeddings of them when herding
        (`embeddings`, when already computed with `model`)."""
        settings = config.continual
        if settings.memory_selection == "herding" and len(data) and embeddings is None:
            encoded = encode(tokenizer, data, labels, config.data.max_length, task_of(config))
            embeddings = embed(model, encoded, pad_token_id=tokenizer.pad_token_id or 0)  # type: ignore[arg-type]
        return select_memory(
            data, settings.memory_per_class, how=settings.memory_selection, seed=config.seed, embeddings=embeddings
        )

    def old_fisher(
        self, model: nn.Module, tokenizer: Any, config: Config, prepared: ContinuePrepared
    ) -> EwcState | None:
        """EWC's state for a previous run that saved none: the Fisher of the previous model on the memory."""
        if prepared.memory is None or not len(prepared.memory):
            logger.warning("continual.method includes ewc, but there are no old examples to estimate it on: skipped")
            return None
        task = task_of(config)
        encoded = encode(tokenizer, prepared.memory, prepared.old_labels, config.data.max_length, task)
        return fisher_diagonal(model, encoded, Collator(tokenizer.pad_token_id or 0, task), task, seed=config.seed)

    def remember(
        self,
        model: nn.Module,
        tokenizer: Any,
        config: Config,
        paths: RunPaths,
        prepared: ContinuePrepared,
        ewc_before: EwcState | None,
        new_embeddings: np.ndarray | None = None,
    ) -> None:
        """Write `continual/` into the run folder: the memory (earlier memory plus this run's choice), EWC's state
        and the chain's record, for the next increment."""
        settings, splits, task = config.continual, prepared.splits, task_of(config)
        folder = paths.root / STATE_DIR
        folder.mkdir(exist_ok=True)
        name = self.task_name or str(config.data.train)
        new_data = splits.train
        parts: list[TextData] = []
        tasks: list[str] = []
        if self.joint and prepared.memory is not None:
            new_data = concat([prepared.memory, splits.train], splits.train.source)
            new_tasks = [*prepared.memory_tasks, *[name] * len(splits.train)]
        else:
            new_tasks = [name] * len(splits.train)
            if prepared.memory is not None:
                parts, tasks = [prepared.memory], list(prepared.memory_tasks)
        reuse = new_embeddings if new_data is splits.train else None  # `model`'s embeddings of the new data
        chosen = self.choose(model, tokenizer, config, new_data, splits.labels, reuse)
        parts.append(new_data.subset(chosen))
        tasks += [new_tasks[i] for i in chosen]
        write_memory(folder / "memory.jsonl", concat(parts, "memory"), tasks, config.data)
        if "ewc" in settings.parts(task.multi_label):
            encoded = encode(tokenizer, new_data, splits.labels, config.data.max_length, task)
            later = fisher_diagonal(model, encoded, Collator(tokenizer.pad_token_id or 0, task), task, seed=config.seed)
            (ewc_before.then(later) if ewc_before is not None else later).save(folder / EWC_FILE)
        self.record(config, folder, prepared)

    def record(self, config: Config, folder: Path, prepared: ContinuePrepared) -> None:
        """`continual/state.json`: the chain's base model, labels and increments, this one added."""
        settings, splits, task = config.continual, prepared.splits, task_of(config)
        name = self.task_name or str(config.data.train)
        earlier = self.previous.state if self.previous is not None else {}
        base = (self.previous.base_model if self.previous is not None else None) or config.model.name
        increments = list(earlier.get("increments", []))
        increments.append(
            {
                "name": name,
                "train": str(config.data.train),
                "examples": len(splits.train),
                "labels_added": [label for label in splits.labels if label not in set(prepared.old_labels)],
                "method": settings.resolved(task.multi_label),
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            }
        )
        write_json(folder / STATE_FILE, {"base_model": base, "labels": splits.labels, "increments": increments})

    def report_sections(self, predictor: Predictor, run: Run) -> list[tuple[str, str]]:
        prepared = self.prepared
        if not self.compare or prepared is None or self.previous is None:
            return []
        before = Predictor.from_dir(self.previous.model_dir, batch_size=predictor.batch_size)
        evaluated = [("previous run's data", prepared.old_eval), ("new data", prepared.splits.evaluation)]
        rows = []
        old = set(prepared.old_labels)
        for source, data in evaluated:
            if data is None or not len(data):
                continue
            groups = label_groups(data, old)
            was = correct(before, data)
            now = correct(predictor, data)
            for group, mask in groups.items():
                if mask.any():
                    rows.append(
                        {
                            "data": f"{source} ({data.source})",
                            "labels": group,
                            "examples": int(mask.sum()),
                            "accuracy_before": round(float(was[mask].mean()), 4),
                            "accuracy_after": round(float(now[mask].mean()), 4),
                        }
                    )
        write_json(run.paths.root / EXTEND_METRICS, {"previous": str(self.previous.model_dir), "groups": rows})
        head = "<tr><th>data</th><th>labels</th><th>examples</th><th>accuracy before</th><th>after</th></tr>"
        body = "".join(
            f"<tr><td>{r['data']}</td><td>{r['labels']}</td><td>{r['examples']}</td>"
            f"<td>{r['accuracy_before']:.4f}</td><td>{r['accuracy_after']:.4f}</td></tr>"
            for r in rows
        )
        note = (
            "<p>Before: the model this run continued; after: this run's model. Old labels: the ones the previous "
            "model had; it cannot predict the new ones.</p>"
        )
        return [
            ("Old and new labels, before and after", f"{note}<table><thead>{head}</thead><tbody>{body}</tbody></table>")
        ]


def save_routed(
    expert: nn.Module,
    tokenizer: Any,
    config: Config,
    target: Path,
    earlier: list[tuple[str, Path]],
    name: str,
    router: RouterHead,
    routing: Routing,
    labels: list[str],
) -> None:
    """Write a routed folder: the earlier tasks' adapter folders copied under `members/`, `expert` (this task's
    adapter, `config` its run's) after them, the router's head and the record (`routing`, its experts filled in
    here) that names them all."""

    def write(folder: Path) -> None:
        experts = []
        for i, (task_name, source) in enumerate(earlier):
            shutil.copytree(source, folder / ENSEMBLE_SUBDIR / str(i))
            experts.append(RoutedExpert(path=f"{ENSEMBLE_SUBDIR}/{i}", task=task_name))
        save_model(expert, tokenizer, config, folder / ENSEMBLE_SUBDIR / str(len(earlier)))  # type: ignore[arg-type]
        experts.append(RoutedExpert(path=f"{ENSEMBLE_SUBDIR}/{len(earlier)}", task=name))
        router.save(folder / ROUTER_FILE)
        tokenizer.save_pretrained(folder)
        ModelInfo(
            base_model=config.model.name,
            base_model_path=resolve_model_name(config.model.name),
            strategy="finetune",
            peft_method="lora",
            labels=labels,
            problem_type=task_of(config).problem_type,
            max_length=config.data.max_length,
            text_column=config.data.text_column,
            text_pair_column=config.data.text_pair_column,
            label_column=config.data.label_column,
            routed=routing.model_copy(update={"experts": experts}),
        ).write(folder)

    replace_dir(target, write)


def label_groups(data: TextData, old: set[str]) -> dict[str, np.ndarray]:
    """Masks of `data`'s rows whose labels are all old labels, and of the others."""
    assert data.labels is not None
    is_old = np.asarray(
        [all(name in old for name in (value if isinstance(value, list) else [value])) for value in data.labels]
    )
    return {"old labels": is_old, "new labels": ~is_old}


def correct(predictor: Predictor, data: TextData) -> np.ndarray:
    """Per row of `data`: whether `predictor` gets its label (multi-label: its exact label set) right."""
    assert data.labels is not None
    predictions = predictor.predict(data.texts, data.pairs)
    return np.asarray(
        [
            set(p.labels) == set(value) if isinstance(value, list) else p.label == value
            for p, value in zip(predictions, data.labels, strict=True)
        ]
    )


def labels_without_examples(labels: list[str], *parts: TextData) -> list[str]:
    """The labels of `labels` that no example of `parts` has."""
    seen = {name for part in parts for name in label_names(part, minimum=0)}
    return [label for label in labels if label not in seen]


def check_every_label(old: TextData, splits: Splits, previous: Previous) -> None:
    """slda computes the statistics of a run that saved none from its training file: every label needs examples."""
    missing = labels_without_examples(splits.labels, old, splits.train)
    if missing:
        shown = ", ".join(repr(label) for label in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{previous.model_dir}: continual.method=slda needs examples of every label, and neither the run's "
            f"training file ({old.source}) nor the new data has any of {shown} (the run saved no slda statistics: "
            "it was not trained by slda); use continual.method=replay or lwf"
        )


def check_spellings(known: list[str], splits: Splits, memory: TextData | None = None) -> None:
    """Refuse a new label that is an old one written differently ("Billing" for "billing", "1.0" for "1")."""
    if not known:
        return
    old = set(known)
    new = [label for label in splits.labels if label not in old]
    if memory is not None and memory.labels is not None:
        seen = {name for value in memory.labels for name in (value if isinstance(value, list) else [str(value)])}
        new += sorted(seen - old - set(new))
    for difference, group in label_spellings([*known, *new]):
        olds = [name for name in group if name in old]
        fresh = [name for name in group if name not in old]
        if olds and fresh:
            raise DataError(
                f"{splits.train.source}: label {fresh[0]!r} differs from the model's label {olds[0]!r} only in "
                f"{difference}; write it as {olds[0]!r} (or rename it) so it is not a new class"
            )
