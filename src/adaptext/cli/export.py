"""`adaptext export RUN --output DIR`: an ONNX model (optionally int8), checked against the PyTorch one."""

from __future__ import annotations

import argparse

from adaptext.cli.options import add_overwrite_option


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="export to ONNX (optionally int8), verified against the PyTorch model",
        description="Merge adapters, export to ONNX with dynamic batch and sequence axes, and check the export on "
        "validation data before writing it: fp32 logits within 1e-4 with identical labels; int8 labels agreeing "
        "on >= 99%% and accuracy within 1 point.",
    )
    p.add_argument("run", help="run folder, model folder or adapter folder")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default onnx)")
    p.add_argument(
        "--quantize",
        choices=["int8"],
        help="dynamic int8 quantization of the weights; where the check fails, the fewest matrix products that "
        "pass stay in fp32 (docs/deploy.md)",
    )
    p.add_argument("--output", required=True, help="new or empty folder for model.onnx, config, tokenizer")
    add_overwrite_option(p, "an earlier export in --output")
    p.add_argument("--data", help="file to check on (default: the run's validation split); int8 needs labels")
    p.add_argument("--sample", type=int, default=512, help="examples to check on (default 512)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adaptext.deploy.export import export_onnx

    check = export_onnx(
        args.run, args.output, quantize=args.quantize, data=args.data, sample=args.sample, overwrite=args.overwrite
    )
    print(f"export check passed on {check.describe()}")
    print(
        f"size: {check.size_export_mb:.1f} MB (PyTorch {check.size_torch_mb:.1f} MB); "
        f"speed on the check: {check.export_texts_per_s:.0f} texts/s (PyTorch {check.torch_texts_per_s:.0f})"
    )
    print(f"exported model: {args.output}")
    return 0
