"""What int8 recipe keeps a model's labels: onnxruntime quantization variants against the fp32 export, per run.

    python bench/int8_variants.py runs/sst2-weak runs/quickstart --json bench/results/int8_variants.json

For each run: the model is exported once to fp32 ONNX as `adaptext export` does, then quantized several ways. Each
variant predicts the export check's sample (the run's validation split, at most `--sample` texts, as
`adaptext export` draws it) and is compared with PyTorch: label agreement (the check needs >= 99%), accuracy,
mean |logit difference|, size, and batched texts/s against the fp32 export (taking turns over `--repeats` rounds,
best round). Variants:

  dynamic, all            onnxruntime dynamic int8 (per-channel weights, per-tensor uint8 activations), every MatMul
  dynamic, head fp32      the same with the head (dense layer and classifier) left in fp32: `adaptext export`'s
                          first recipe
  + Q/K/V fp32            also the attention's query, key and value products in fp32
  + feed-forward fp32     also both feed-forward products in fp32 (`adaptext export`'s second recipe until
                          2026-12-02; it now searches for the fewest products that pass, docs/deploy.md)
  + feed-forward out fp32 only the second feed-forward product (its input is the GELU output) in fp32
  + first/last fp32       also every product of the first and the last encoder layer in fp32
  + first two fp32        also every product of the first two encoder layers in fp32
  static (min-max)        onnxruntime static int8 (QDQ, per-channel weights, uint8 activations with fixed scales
                          calibrated on other validation texts: min-max), head in fp32
  static (percentile)     the same with scales from the 99.999th percentile of the calibration activations
  smoothquant             SmoothQuant (alpha 0.5: activation outliers moved into the weights, calibrated on
                          other validation texts), then dynamic with the head in fp32
  per-row activations     int8 weights per output channel and activations quantized per token (one scale per
                          row instead of one per tensor), built as plain ONNX operators
  weight-only 8-bit       MatMulNBits, 8-bit weights in blocks of 128, int8 compute (accuracy_level 4)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def per_row_quantized(model: Any, exclude: set[str]) -> Any:
    """`model` with each weight MatMul outside `exclude` computed as int8 x int8 with one activation scale per row
    (per token) and one weight scale per output channel, from standard ONNX operators."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(127.0, np.float32), "rq_127"),
            numpy_helper.from_array(np.array(128.0, np.float32), "rq_128"),
            numpy_helper.from_array(np.array(1e-12, np.float32), "rq_eps"),
            numpy_helper.from_array(np.array(128, np.uint8), "rq_zero"),
            numpy_helper.from_array(np.array([-1], np.int64), "rq_axes"),
        ]
    )
    nodes = []
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or node.name in exclude or len(weight.dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)
        scale = np.maximum(np.abs(w).max(axis=0) / 127.0, 1e-12).astype(np.float32)
        p, x = node.name, node.input[0]
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.clip(np.round(w / scale), -127, 127).astype(np.int8), p + "_wq"),
                numpy_helper.from_array(scale, p + "_ws"),
            ]
        )
        reduce = (
            helper.make_node("ReduceMax", [p + "_abs", "rq_axes"], [p + "_max"], keepdims=1)
            if opset >= 18
            else helper.make_node("ReduceMax", [p + "_abs"], [p + "_max"], axes=[-1], keepdims=1)
        )
        nodes += [
            helper.make_node("Abs", [x], [p + "_abs"]),
            reduce,
            helper.make_node("Div", [p + "_max", "rq_127"], [p + "_s0"]),
            helper.make_node("Max", [p + "_s0", "rq_eps"], [p + "_s"]),
            helper.make_node("Div", [x, p + "_s"], [p + "_xs"]),
            helper.make_node("Round", [p + "_xs"], [p + "_xr"]),
            helper.make_node("Add", [p + "_xr", "rq_128"], [p + "_xo"]),  # symmetric int8 as uint8, zero point 128
            helper.make_node("Cast", [p + "_xo"], [p + "_xu"], to=TensorProto.UINT8),
            helper.make_node("MatMulInteger", [p + "_xu", p + "_wq", "rq_zero"], [p + "_yi"]),
            helper.make_node("Cast", [p + "_yi"], [p + "_yf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "_yf", p + "_s"], [p + "_y1"]),
            helper.make_node("Mul", [p + "_y1", p + "_ws"], list(node.output)),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def smoothed(model: Any, predictor: Any, texts: list[str], alpha: float) -> Any:
    """A copy of `model` whose encoder linears take x / s and hold W * s, with s from the activations' per-channel
    maxima on `texts` (SmoothQuant): the same function in fp32, with the activation outliers moved into weights."""
    import torch
    from torch import nn
    from torch.nn import functional

    from adaptext.inference.predictor import Predictor

    class Smoothed(nn.Module):
        def __init__(self, linear: nn.Linear, s: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("inverse", 1.0 / s)
            self.weight = nn.Parameter(linear.weight.detach() * s[None, :])
            self.bias = linear.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return functional.linear(x * self.inverse, self.weight, self.bias)

    model = copy.deepcopy(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".encoder.layer." in n}
    peaks: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0)
            peaks[name] = torch.maximum(peaks[name], x) if name in peaks else x

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in linears.items()]
    Predictor(model, predictor.tokenizer, max_length=predictor.max_length).predict_logits(texts)
    for hook in hooks:
        hook.remove()
    for name, linear in linears.items():
        if name not in peaks:  # the pooling layer's products, which the direct mean never runs
            continue
        w = linear.weight.detach().abs().amax(0).clamp(min=1e-5)
        s = (peaks[name].clamp(min=1e-5) ** alpha / w ** (1 - alpha)).clamp(1e-2, 1e2)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, Smoothed(linear, s))
    return model


def measure(run: Path, sample: int, repeats: int) -> dict[str, Any]:
    import numpy as np
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from adaptext.core.info import ModelInfo, find_model_dir
    from adaptext.deploy.export import _accuracy, _to_onnx, product_kinds
    from adaptext.deploy.parity import compare_logits, parity_examples
    from adaptext.inference.onnx import ONNX_FILE, OnnxClassifier
    from adaptext.inference.predictor import Predictor

    model_dir = find_model_dir(run)
    info = ModelInfo.read(model_dir)
    examples = parity_examples(run, model_dir, None, info, sample)
    calibration = parity_examples(run, model_dir, None, info, 2 * sample).texts[sample:] or examples.texts
    predictor = Predictor.from_dir(model_dir, device="cpu")
    reference = predictor.predict_logits(examples.texts, examples.pairs)
    work = Path(tempfile.mkdtemp(prefix="int8-variants-"))

    def plain(model: Any, name: str) -> Path:
        _to_onnx(model, predictor.tokenizer, work / f"{name}.onnx")  # without the exporter's shape hints
        return work / f"{name}.onnx"

    fp32 = plain(predictor.model, "fp32")
    base = onnx.load(str(fp32))
    kinds_of = product_kinds(base)
    head = [name for name, kind in kinds_of.items() if kind == "head"]
    head_split = head + [f"{n}_MatMul" for n in head]  # the quantizer rewrites a Gemm as NAME_MatMul
    body = [name for name, kind in kinds_of.items() if kind != "head"]
    per_layer = 6
    edge_layers = set(body[:per_layer] + body[-per_layer:])  # the first and the last encoder layer's products
    first_two = set(body[: 2 * per_layer])

    def kinds(*wanted: str, edges: bool = False, first: bool = False) -> list[str]:
        return head_split + [
            n for n in body if kinds_of[n] in wanted or (edges and n in edge_layers) or (first and n in first_two)
        ]

    def dynamic(source: Path, exclude: list[str]) -> Callable[[Path], None]:
        return lambda target: quantize_dynamic(
            str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=exclude
        )

    class Calibration(CalibrationDataReader):  # type: ignore[misc]
        """The calibration texts in full batches of 32, all padded to one length: the histogram calibration stacks
        every batch's activations into one array."""

        def __init__(self) -> None:
            tokenizer, names = predictor.tokenizer, predictor.tokenizer.model_input_names
            length = min(predictor.max_length, max(len(ids) for ids in tokenizer(calibration)["input_ids"]))
            batches = []
            for start in range(0, max(len(calibration) - 31, 1), 32):
                encoded = tokenizer(
                    calibration[start : start + 32],
                    padding="max_length",
                    truncation=True,
                    max_length=length,
                    return_tensors="np",
                )
                batches.append({n: encoded[n].astype(np.int64) for n in names if n in encoded})
            self.batches = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    def static(method: Any) -> Callable[[Path], None]:
        return lambda target: quantize_static(
            str(fp32),
            str(target),
            Calibration(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=head_split,
            calibrate_method=method,
        )

    def rows(target: Path) -> None:
        onnx.save(per_row_quantized(onnx.load(str(fp32)), set(head)), str(target))

    def weight_only(target: Path) -> None:
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(fp32)), bits=8, block_size=128, is_symmetric=True, accuracy_level=4, nodes_to_exclude=head
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=False)

    smooth = plain(smoothed(predictor.model, predictor, calibration, 0.5), "smooth")
    smooth_head = [name for name, kind in product_kinds(onnx.load(str(smooth))).items() if kind == "head"]
    variants: dict[str, Callable[[Path], None]] = {
        "fp32": lambda target: shutil.copy(fp32, target),
        "dynamic, all": dynamic(fp32, []),
        "dynamic, head fp32": dynamic(fp32, head_split),
        "+ Q/K/V fp32": dynamic(fp32, kinds("query", "key", "value")),
        "+ feed-forward fp32": dynamic(fp32, kinds("feed_forward_in", "feed_forward_out")),
        "+ feed-forward out fp32": dynamic(fp32, kinds("feed_forward_out")),
        "+ first/last fp32": dynamic(fp32, kinds(edges=True)),
        "+ first two fp32": dynamic(fp32, kinds(first=True)),
        "static (min-max)": static(CalibrationMethod.MinMax),
        "static (percentile)": static(CalibrationMethod.Percentile),
        "smoothquant": dynamic(smooth, smooth_head + [f"{n}_MatMul" for n in smooth_head]),
        "per-row activations": rows,
        "weight-only 8-bit": weight_only,
    }
    predictors = {}
    for name, make in variants.items():
        folder = work / name.replace(" ", "_").replace("/", "-").replace(",", "")
        folder.mkdir()
        predictor.tokenizer.save_pretrained(folder)
        predictor.model.config.save_pretrained(folder)
        make(folder / ONNX_FILE)
        predictors[name] = (
            folder,
            Predictor(OnnxClassifier(folder), predictor.tokenizer, max_length=predictor.max_length),
        )  # type: ignore[arg-type]
    speeds: dict[str, list[float]] = {n: [] for n in predictors}
    logits: dict[str, Any] = {}
    for round_ in range(repeats):
        for name in list(predictors) if round_ % 2 == 0 else list(reversed(predictors)):
            start = time.perf_counter()
            logits[name] = predictors[name][1].predict_logits(examples.texts, examples.pairs)
            speeds[name].append(len(examples.texts) / (time.perf_counter() - start))
    result = {}
    for name, (folder, _) in predictors.items():
        parity = compare_logits(reference, logits[name], 1e-4, predictor.task)
        result[name] = {
            "label_agreement": parity.label_agreement,
            "accuracy_torch": _accuracy(reference, examples, predictor),
            "accuracy": _accuracy(logits[name], examples, predictor),
            "mean_abs_logit_difference": float(np.abs(logits[name] - reference).mean()),
            "size_mb": (folder / ONNX_FILE).stat().st_size / 2**20,
            "texts_per_s": max(speeds[name]),
        }
    shutil.rmtree(work, ignore_errors=True)
    return {"run": str(run), "n_examples": len(examples.texts), "variants": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sample", type=int, default=512, help="texts compared (the export check's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = [measure(run, args.sample, args.repeats) for run in args.runs]
    for result in results:
        print(f"\n{result['run']}: {result['n_examples']} texts of the export check's sample\n")
        print("| variant | labels = PyTorch | accuracy (PyTorch) | mean abs logit diff | size MB | texts/s | vs fp32 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        base = result["variants"]["fp32"]["texts_per_s"]
        for name, row in result["variants"].items():
            print(
                f"| {name} | {row['label_agreement']:.2%} | {row['accuracy']:.4f} ({row['accuracy_torch']:.4f}) | "
                f"{row['mean_abs_logit_difference']:.4f} | {row['size_mb']:.1f} | {row['texts_per_s']:.0f} | "
                f"{row['texts_per_s'] / base:.2f}x |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
