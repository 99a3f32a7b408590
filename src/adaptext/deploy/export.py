"""Export to ONNX (optionally int8), verified against the PyTorch model before anything is written.

An export folder holds `model.onnx`, the model config (label names), the tokenizer and `adaptext.json`; plain
`onnxruntime` runs it, and `Predictor.from_dir` serves it through onnxruntime behind the usual interface.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptext.core.console import progress_bar
from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo, find_model_dir, is_adapter_folder
from adaptext.core.outputs import check_output_dir, expand, replace_folder
from adaptext.deploy.parity import compare_logits, decisions, margin_change, match_rate, parity_examples
from adaptext.inference.loaders import StaticLoader, loader_for
from adaptext.inference.onnx import ONNX_FILE, OnnxClassifier
from adaptext.inference.ood import FEATURE_SCORES, OOD_FILE
from adaptext.modeling.adapters import (
    adapter_method,
    adapter_size_bytes,
    is_prompt_method,
    merge_model,
)

logger = logging.getLogger(__name__)


FP32_TOLERANCE = 1e-4


# The int8 search chooses on up to max(--sample, this) validation rows beside the check's; with fewer than this
# many left, on the check's own examples.
MIN_CHOICE_EXAMPLES = 100


INT8_MIN_AGREEMENT = 0.99


INT8_MAX_ACCURACY_DROP = 0.01


@dataclass
class ExportCheck:
    """How the export compares with the PyTorch model on the sample; `passed` decides whether it is written."""

    quantize: str | None
    n_examples: int
    max_abs_diff: float
    mean_abs_diff: float
    mean_margin_change: float  # `parity.margin_change`: what ranks the encoder products for int8
    label_agreement: float
    accuracy_torch: float | None
    accuracy_export: float | None
    size_torch_mb: float
    size_export_mb: float
    torch_texts_per_s: float
    export_texts_per_s: float
    fp32_nodes: list[str] = field(default_factory=list)  # int8: the matrix products kept in fp32 (`fp32_nodes`)

    @property
    def passed(self) -> bool:
        if self.quantize is None:
            return self.max_abs_diff <= FP32_TOLERANCE and self.label_agreement == 1.0
        drop = (self.accuracy_torch or 0.0) - (self.accuracy_export or 0.0)
        return self.label_agreement >= INT8_MIN_AGREEMENT and drop <= INT8_MAX_ACCURACY_DROP

    def describe(self) -> str:
        text = (
            f"{self.n_examples} examples: labels agree on {self.label_agreement:.2%}, "
            f"max |logit difference| {self.max_abs_diff:.2e}"
        )
        if self.accuracy_torch is not None and self.accuracy_export is not None:
            text += f", accuracy {self.accuracy_export:.4f} vs PyTorch {self.accuracy_torch:.4f}"
        if self.quantize is None:
            return text + f" (needs logits within {FP32_TOLERANCE:g} and identical labels)"
        text += f", {len(self.fp32_nodes)} matrix products kept in fp32"  # the head, and more where it was needed
        return text + (
            f" (needs >= {INT8_MIN_AGREEMENT:.0%} agreement and at most {INT8_MAX_ACCURACY_DROP:.0%} accuracy lost)"
        )


def export_onnx(
    path: str | Path,
    output: str | Path,
    *,
    quantize: str | None = None,
    data: str | Path | None = None,
    sample: int = 512,
    overwrite: bool = False,
) -> ExportCheck:
    """Export a run, model or adapter folder to ONNX in `output`, verified on `sample` validation examples.

    Adapters are merged first (prompt-style adapters cannot be). `quantize="int8"` applies onnxruntime's dynamic
    int8 quantization to the weights. Nothing is written unless the check passes; the `AdaptextError` then gives
    the numbers. `output` must be a new or empty folder, or an earlier export (replaced only with `overwrite`).
    """
    from adaptext.inference.predictor import Predictor

    if quantize not in (None, "int8"):
        raise AdaptextError(f"--quantize: only int8 is supported, not {quantize!r}")
    model_dir = find_model_dir(expand(path))
    sources = [path, model_dir] + ([data] if data is not None else [])
    output = check_output_dir(output, "export", overwrite=overwrite, inputs=sources)
    info = ModelInfo.read(model_dir)
    if (model_dir / ONNX_FILE).is_file():
        raise AdaptextError(f"{model_dir} is already an ONNX export; export the run or model folder it came from")
    loader = loader_for(model_dir, info)
    if isinstance(loader, StaticLoader):
        raise AdaptextError(
            f"{model_dir}: a static-embedding student is not exported to ONNX: it predicts by table look-ups in "
            "numpy, already many times faster than its teacher; serve or predict with the folder itself"
        )
    if not loader.plain_classifier:
        raise AdaptextError(
            f"{model_dir}: {'an' if loader.description[0] in 'aeiou' else 'a'} {loader.description} model "
            f"{loader.not_plain}, not a plain classifier, so it cannot be exported to ONNX; serve the folder with "
            "adaptext serve"
        )
    is_adapter = is_adapter_folder(model_dir)
    method = adapter_method(model_dir, info) if is_adapter else "none"
    if is_prompt_method(method):
        raise AdaptextError(
            f"{method} adapters cannot be merged into the weights, so they cannot be exported; "
            "serve the adapter folder with adaptext serve"
        )
    examples = parity_examples(Path(path), model_dir, data, info, sample)
    if quantize is not None and examples.labels is None:
        raise AdaptextError("an int8 export is checked on accuracy: give --data a labelled file")
    predictor = Predictor.from_dir(model_dir, device="cpu")
    predictor.require_classifier("ONNX export (its parity check compares labels)")
    start = time.perf_counter()
    reference = predictor.predict_logits(examples.texts, examples.pairs)
    torch_speed = len(examples.texts) / (time.perf_counter() - start)
    model = merge_model(predictor.model) if is_adapter else predictor.model
    # Plain tokenizer users then truncate where the model was trained and checked to.
    predictor.tokenizer.model_max_length = predictor.max_length

    with tempfile.TemporaryDirectory() as tmp:
        staging, fp32 = Path(tmp) / "export", Path(tmp) / "fp32.onnx"
        staging.mkdir()
        _to_onnx(model, predictor.tokenizer, fp32)
        model.config.save_pretrained(staging)
        predictor.tokenizer.save_pretrained(staging)
        size_torch = 4 * sum(p.numel() for p in model.parameters()) if is_adapter else adapter_size_bytes(model_dir)

        def checked(kept: list[str], on: Any = examples, expected: np.ndarray = reference) -> ExportCheck:
            """The check of the model in `staging` on the examples `on`, whose PyTorch logits are `expected`."""
            exported = Predictor(
                OnnxClassifier(staging),  # type: ignore[arg-type]  # duck-typed: same call interface
                predictor.tokenizer,
                max_length=predictor.max_length,
                threshold=predictor.threshold,
                batch_size=predictor.batch_size,
            )
            start = time.perf_counter()
            logits = exported.predict_logits(on.texts, on.pairs)
            export_speed = len(on.texts) / (time.perf_counter() - start)
            parity = compare_logits(expected, logits, FP32_TOLERANCE, predictor.task)
            return ExportCheck(
                quantize=quantize,
                n_examples=parity.n_examples,
                max_abs_diff=parity.max_abs_diff,
                mean_abs_diff=parity.mean_abs_diff,
                mean_margin_change=margin_change(expected, logits, predictor.task),
                label_agreement=parity.label_agreement,
                accuracy_torch=_accuracy(expected, on, predictor),
                accuracy_export=_accuracy(logits, on, predictor),
                # for an adapter, the merged model is what gets exported: fp32 weights
                size_torch_mb=size_torch / 2**20,
                size_export_mb=(staging / ONNX_FILE).stat().st_size / 2**20,
                torch_texts_per_s=torch_speed,
                export_texts_per_s=export_speed,
                fp32_nodes=kept,
            )

        if quantize is None:
            fp32.replace(staging / ONNX_FILE)
            check = checked([])
        else:
            # The encoder products kept in fp32 are chosen on other validation rows than the check's, so that the
            # check stays an unbiased measure of the model it passes. Read and run only when the search needs them.
            choice: list[tuple[Any, np.ndarray]] = []

            def choosing(kept: list[str]) -> ExportCheck:
                if not choice:
                    on = parity_examples(
                        Path(path), model_dir, data, info, sample, rest=max(sample, MIN_CHOICE_EXAMPLES)
                    )
                    if len(on) < MIN_CHOICE_EXAMPLES:
                        choice.append((examples, reference))
                    else:
                        choice.append((on, predictor.predict_logits(on.texts, on.pairs)))
                on, expected = choice[0]
                return checked(kept, on=on, expected=expected)

            check = _int8_that_passes(fp32, staging / ONNX_FILE, checked, choosing)
        if not check.passed:
            raise AdaptextError(f"export check failed, nothing written: {check.describe()}")

        detector = exported_detector(model_dir, info)

        def write(folder: Path) -> None:
            for item in staging.iterdir():
                (folder / item.name).write_bytes(item.read_bytes())
            if detector is not None:
                (folder / OOD_FILE).write_bytes((model_dir / OOD_FILE).read_bytes())
            info.updated(
                peft_method="none",
                backend="onnx",
                quantize=quantize,
                exported_from=str(model_dir),
                export_check=asdict(check),
                ood=detector,
            ).write(folder)

        replace_folder(output, write, "export")
    logger.info("exported %s to %s: %s", model_dir, output, check.describe())
    return check


def exported_detector(model_dir: Path, info: ModelInfo) -> dict[str, Any] | None:
    """The out-of-scope detector record an export keeps: msp and energy read the logits the ONNX graph gives; the
    feature scores (mahalanobis, knn) read the output layer's input, which it does not, so the export goes
    without them (logged)."""
    if not info.ood:
        return None
    if info.ood["method"] in FEATURE_SCORES:
        logger.warning(
            "%s: the %s out-of-scope detector reads the model's features, which the ONNX graph does not output; "
            "the export has no detector (train with ood.method=energy or msp to keep one)",
            model_dir,
            info.ood["method"],
        )
        return None
    return info.ood


def _to_onnx(model: Any, tokenizer: Any, target: Path) -> None:
    """torch.onnx (dynamo) export with dynamic batch and sequence axes; the graph's output is named `logits`.

    The exporter records intermediate shapes as traced at the example's size; onnxruntime's quantizer then rejects
    them as conflicting with its own shape inference. They are hints only (onnxruntime infers its own), so the
    written graph goes without them, and every later step (the check, each int8 form) reads it as it is.
    """
    import onnx

    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
            logits: torch.Tensor = self.inner(
                input_ids=input_ids, **{k: v for k, v in given.items() if v is not None}
            ).logits
            return logits

    if names[0] != "input_ids":
        raise AdaptextError(f"cannot export a model whose tokenizer gives {names}: input_ids must come first")
    example = tokenizer(["an example text to trace", "another"], padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    model = model.float().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not actionable for users
        torch.onnx.export(
            Logits(model),
            tuple(example[n] for n in names),
            str(target),
            input_names=names,
            output_names=["logits"],
            dynamic_shapes={n: {0: batch, 1: sequence} for n in names},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    graph = onnx.load(str(target))
    del graph.graph.value_info[:]
    onnx.save(graph, str(target))


def _int8_that_passes(
    source: Path,
    target: Path,
    judge: Callable[[list[str]], ExportCheck],
    choose: Callable[[list[str]], ExportCheck],
) -> ExportCheck:
    """Write to `target` the int8 form of `source` that keeps the fewest encoder products in fp32 among those tried
    and passes the check, and return its check (`judge(kept)` checks the model at `target` on the check's examples,
    `choose(kept)` on other examples); or the failing check of the last form tried when none passes.

    The head alone in fp32 comes first: most models pass so. Otherwise every encoder product is ranked by how much
    keeping it alone in fp32 lowers the mean change of the decision margins from PyTorch's (`margin_change`: for
    one label per text, the top label's logit less the best other's) per weight (its share of the compute),
    and a bisection finds the shortest head of that ranking that passes on the `choose` examples (more products in
    fp32 means fewer differences, so passing is close to monotone in the length); keeping every product but one is
    the most it tries. That form is then judged on the check's examples; if it fails there, the bisection goes on
    above it, judged by the check (and when no form passed on the `choose` examples but the most kept in fp32 passes
    the check, below it). On a weak model this keeps about a third of the compute in fp32 or less, where
    keeping every feed-forward product kept two thirds (docs/benchmarks.md, "int8"). Ranked by the mean |logit
    difference| instead, a few-shot BANKING77 model kept 47% of the encoder's weights in fp32 where the margins keep
    25%: a logit change that every label shares decides nothing.
    """
    check = judge(_quantize_int8(source, target))
    if check.passed:
        return check
    logger.info("int8 with the head in fp32: %s; ranking the encoder products", check.describe())
    products = _product_sizes(source)
    if len(products) < 2:  # keeping every product but one in fp32 is the most tried: nothing to search
        return check  # of the head-only form, still at `target`
    error = choose(_quantize_int8(source, target)).mean_margin_change
    gains = {}
    for name in progress_bar(products, desc="int8: ranking products", unit="product"):
        gains[name] = (error - choose(_quantize_int8(source, target, [name])).mean_margin_change) / products[name]
    order = sorted(products, key=lambda name: -gains[name])

    def shortest(low: int, high: int, test: Callable[[list[str]], ExportCheck]) -> ExportCheck:
        """Bisection for the shortest head of `order` that passes `test`, knowing that `low` products fail and
        trying at most `high` - 1; that form is left at `target` and its check returned, else the last failing
        check."""
        passing: tuple[int, ExportCheck] | None = None
        last, written = check, low
        while high - low > 1:
            written = (low + high) // 2
            last = test(_quantize_int8(source, target, order[:written]))
            logger.info("int8 with the head and %d encoder products in fp32: %s", written, last.describe())
            if last.passed:
                high, passing = written, (written, last)
            else:
                low = written
        if passing is None:
            return last
        if passing[0] != written:  # the last form written failed: write the passing one again
            _quantize_int8(source, target, order[: passing[0]])
        return passing[1]

    chosen = shortest(0, len(order), choose)
    # Judged by the check: the chosen form, or when none passed on the choosing examples the one with the most
    # products in fp32 tried (its check's numbers are then what the user is told).
    check = judge(chosen.fp32_nodes)
    logger.info("the chosen int8 form on the check's examples: %s", check.describe())
    if check.passed == chosen.passed:  # passed on both, or the most kept in fp32 fails both
        return check
    kept = sum(name in products for name in chosen.fp32_nodes)
    if chosen.passed:  # fails the check: more products in fp32, judged by the check
        return shortest(kept, len(order), judge)
    # Nothing passed on the choosing examples, yet the most kept in fp32 passes the check: fewer may pass it too.
    fewer = shortest(0, kept, judge)
    if fewer.passed:
        return fewer
    _quantize_int8(source, target, order[:kept])  # the form that passed, back at the target
    return check


def _quantize_int8(source: Path, target: Path, fp32_products: Collection[str] = ()) -> list[str]:
    """Write `source` with the weights of its matrix products quantized to int8 to `target` (onnxruntime's dynamic
    quantization, per-channel weight scales), keeping the head and the encoder products named in `fp32_products`
    in fp32; return the names of the nodes kept in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kinds = product_kinds(onnx.load(str(source)))
    kept = [name for name, kind in kinds.items() if kind == "head" or name in fp32_products]
    # Per-channel scales: on the quickstart MiniLM per-tensor int8 changed 2.3% of the labels (failing the 99% check),
    # per-channel 0.7%, at the same size (docs/benchmarks.md).
    # The quantizer first rewrites each Gemm as a MatMul named NAME_MatMul (and an Add): exclude both names.
    excluded = kept + [f"{name}_MatMul" for name in kept]
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=excluded)
    return kept


# What each weighted matrix product of a post-LN encoder layer computes, in graph order.
PRODUCT_KINDS = ("query", "key", "value", "attention_output", "feed_forward_in", "feed_forward_out")


def _product_sizes(source: Path) -> dict[str, int]:
    """The encoder's weighted matrix products of the ONNX model at `source` (the head left out), with the number of
    weights each multiplies by: its share of the compute."""
    import onnx

    model = onnx.load(str(source))
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    encoder = {name for name, kind in product_kinds(model).items() if kind != "head"}
    return {
        node.name: max(sizes.get(name, 0) for name in node.input) for node in model.graph.node if node.name in encoder
    }


def product_kinds(model: Any) -> dict[str, str]:
    """The weighted matrix products (MatMul or Gemm with an initializer) of an exported encoder classifier, by node
    name: `head` for those after the encoder's last LayerNorm (the dense layer and the classifier: few weights that
    decide the label), else their kind in `PRODUCT_KINDS` within their encoder layer.

    Layers are told apart by their LayerNorms, two per post-LN layer (BERT, MiniLM, RoBERTa, XLM-R, ELECTRA) after
    the embeddings' one; the graph's nodes are in topological order. A layer whose products do not number six (an
    architecture of another shape) gets `other` for each.
    """
    initializers = {init.name for init in model.graph.initializer}
    nodes = list(model.graph.node)
    norms = [i for i, node in enumerate(nodes) if node.op_type == "LayerNormalization"]
    layers: dict[int, list[str]] = {}
    kinds: dict[str, str] = {}
    for i, node in enumerate(nodes):
        if node.op_type not in ("MatMul", "Gemm") or not set(node.input) & initializers:
            continue
        if norms and i > norms[-1]:
            kinds[node.name] = "head"
        else:
            layers.setdefault((sum(1 for n in norms if n < i) - 1) // 2, []).append(node.name)
    for names in layers.values():
        labels = PRODUCT_KINDS if len(names) == len(PRODUCT_KINDS) else ("other",) * len(names)
        kinds.update(zip(names, labels, strict=True))
    return {node.name: kinds[node.name] for node in nodes if node.name in kinds}  # in graph order


def _accuracy(logits: np.ndarray, examples: Any, predictor: Any) -> float | None:
    """Accuracy of `logits` on the labelled `examples` (exact match of the label set for multi-label)."""
    from adaptext.data.labels import label_targets

    if examples.labels is None:
        return None
    targets = label_targets(examples, predictor.labels, predictor.task)
    if targets.ndim == 1:  # class ids (n,) -> one-hot rows (n, num_labels), as decisions are
        targets = np.eye(len(predictor.labels), dtype=bool)[targets]
    return match_rate(decisions(logits, predictor.task), targets.astype(bool))
