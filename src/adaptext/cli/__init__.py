"""The `adaptext` command: parse arguments, call one library function, print a summary.

Exit codes: 0 success, 2 a user error (bad config, data or path; the message says what and where),
1 anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from adaptext import __version__
from adaptext.core.config import load_config
from adaptext.core.errors import AdaptextError
from adaptext.core.outputs import check_output_file, expand

EXIT_USER_ERROR = 2


def _cmd_train(args: argparse.Namespace) -> int:
    from adaptext.strategies import train

    config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    metrics = result.metrics
    print(f"run folder:  {result.run_dir}")
    if config.strategy in ("finetune",):
        print(
            f"model:       {result.model_dir}  (best {config.train.metric_for_best}="
            f"{result.best_metric:.4f} at step {result.best_step} of {result.global_step})"
        )
    else:
        print(f"model:       {result.model_dir}  ({config.strategy}, {result.stats.get('train_seconds', 0):.0f} s)")
    print(f"{result.eval_split} accuracy {metrics['accuracy']:.4f}, macro_f1 {metrics['macro_f1']:.4f}")
    print(f"report:      {result.run_dir / 'report.html'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from adaptext.evaluation.evaluate import evaluate_file

    columns = {
        "text_column": args.text_column,
        "text_pair_column": args.text_pair_column,
        "label_column": args.label_column,
    }
    report = evaluate_file(args.model, args.data, args.output, columns, overwrite=args.overwrite)
    print(
        f"{report.n_examples} examples: accuracy {report.metrics['accuracy']:.4f}, "
        f"macro_f1 {report.metrics['macro_f1']:.4f}"
    )
    print(f"report: {Path(args.output) / 'report.html'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from adaptext.inference.files import check_predict_output, predict_file
    from adaptext.inference.predictor import Predictor

    check_predict_output(args.input, args.output, overwrite=args.overwrite)  # before the model is loaded
    predictor = Predictor.from_dir(expand(args.model), batch_size=args.batch_size)
    saved = predictor.metadata
    count = predict_file(
        predictor,
        args.input,
        args.output,
        text_column=args.text_column or saved.get("text_column") or "text",
        text_pair_column=args.text_pair_column or saved.get("text_pair_column"),
        label_delimiter=saved.get("label_delimiter") or "|",
        sliding_window=args.sliding_window,
        stride=args.stride,
        aggregate=args.aggregate,
        overwrite=args.overwrite,
    )
    print(f"{count} predictions written to {args.output}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from adaptext.core.config import DataConfig
    from adaptext.core.errors import DataError
    from adaptext.data.io import SUPPORTED_SUFFIXES, load_examples, write_table
    from adaptext.data.splits import sample_per_class

    names = [args.output] + ([args.rest] if args.rest else [])
    outputs = [check_output_file(name, overwrite=args.overwrite, inputs=[args.data]) for name in names]
    for name, path in zip(names, outputs, strict=True):
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataError(f"{name}: unsupported output format; use one of {', '.join(sorted(SUPPORTED_SUFFIXES))}")
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise DataError("--output and --rest name the same file")
    output = outputs[0]
    cfg = DataConfig(
        text_column=args.text_column or "text",
        label_column=args.label_column or "label",
        multi_label=args.multi_label,
        label_delimiter=args.label_delimiter,
    )
    data = load_examples(expand(args.data), cfg)
    chosen, short = sample_per_class(data, args.per_class, args.seed)
    for name, count in short.items():
        logging.getLogger("adaptext").warning("label %r has only %d example(s); all are taken", name, count)
    assert data.frame is not None
    write_table(data.frame.iloc[chosen], output)
    print(f"{len(chosen)} of {len(data)} rows ({args.per_class} per label, seed {args.seed}) written to {output}")
    if args.rest:
        taken = set(chosen)
        rest = [i for i in range(len(data)) if i not in taken]
        write_table(data.frame.iloc[rest], outputs[1])
        print(f"the other {len(rest)} rows written to {args.rest}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from adaptext.deploy.merge import merge_adapter

    check = merge_adapter(
        args.run, args.output, data=args.data, tolerance=args.tolerance, sample=args.sample, overwrite=args.overwrite
    )
    print(f"merge check passed on {check.describe()}")
    print(f"merged model: {args.output}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from adaptext.deploy.serve import ServeOptions, run_server

    # ServeOptions checks the limits, and run_server the address, before any model is loaded.
    options = ServeOptions(
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes,
        api_key=args.api_key or os.environ.get("ADAPTEXT_API_KEY") or None,
        request_timeout=args.request_timeout,
        docs=args.docs,
    )
    run_server(args.models, args.host, args.port, options, precision=args.precision)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptext", description="Fine-tune, evaluate and use text classifiers built on Hugging Face models."
    )
    parser.add_argument("--version", action="version", version=f"adaptext {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="fine-tune a model from a YAML config",
        description="Fine-tune, keep the best checkpoint, evaluate and write the run folder.",
    )
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. train.epochs=2")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in output_dir from its checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run in output_dir")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a saved model on a labelled file")
    p.add_argument("model", help="run folder or model folder")
    p.add_argument("--data", required=True, help="labelled CSV/TSV/JSONL/Parquet file")
    p.add_argument("--output", required=True, help="new or empty folder for metrics.json, report.html and plots")
    _overwrite_option(p, "an earlier evaluation report in --output")
    _column_options(p, with_label=True)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="predict labels for every row of a file")
    p.add_argument("model", help="run folder or model folder")
    p.add_argument("--input", required=True, help="CSV/TSV/JSONL/Parquet file with a text column")
    p.add_argument("--output", required=True, help="output .csv, .tsv or .jsonl (input columns + label, score)")
    _overwrite_option(p, "an existing --output file (never the input)")
    _column_options(p, with_label=False)
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument(
        "--sliding-window",
        action="store_true",
        help="score texts longer than max_length in overlapping windows and aggregate",
    )
    p.add_argument(
        "--stride", type=int, default=None, help="tokens of overlap between windows (default: min(32, max_length/4))"
    )
    p.add_argument("--aggregate", choices=["mean", "max"], default="mean", help="how window scores combine")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "sample",
        help="draw N examples per label from a labelled file, reproducibly (few-shot training files)",
        description="Write N rows of every label (all rows of a label that has fewer), in file order, with all "
        "columns kept. The same file, N and seed always give the same rows.",
    )
    p.add_argument("data", help="labelled CSV/TSV/JSONL/Parquet file")
    p.add_argument("--per-class", type=int, required=True, help="rows per label")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--output", required=True, help="output .csv, .tsv, .jsonl or .parquet file")
    p.add_argument("--rest", help="also write the rows not drawn to this file (held-out data to evaluate on)")
    _overwrite_option(p, "existing --output / --rest files (never the input)")
    _column_options(p, with_label=True, with_pair=False)
    p.add_argument("--multi-label", action="store_true", help="rows carry several labels (see data.multi_label)")
    p.add_argument("--label-delimiter", default="|", help="separator of labels in a CSV/TSV cell (default |)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "merge",
        help="fold a run's adapter into its base model, checked against the unmerged model",
        description="Merge a LoRA-style adapter into the base weights and save a plain transformers model folder. "
        "Fails without writing anything when the merged logits differ from the adapter model's.",
    )
    p.add_argument("run", help="run folder or adapter folder")
    p.add_argument("--output", required=True, help="new or empty folder for the merged model")
    _overwrite_option(p, "an earlier merged model in --output")
    p.add_argument("--data", help="file of texts to check on (default: the run's validation split)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |logit difference|, times the largest |logit| when that is over 1 (default 1e-4)",
    )
    p.add_argument("--sample", type=int, default=256, help="examples to check on (default 256)")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser(
        "export",
        help="export to ONNX (optionally int8), verified against the PyTorch model",
        description="Merge adapters, export to ONNX with dynamic batch and sequence axes, and check the export on "
        "validation data before writing it: fp32 logits within 1e-4 with identical labels; int8 labels agreeing "
        "on >= 99%% and accuracy within 1 point.",
    )
    p.add_argument("run", help="run folder, model folder or adapter folder")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default onnx)")
    p.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantization of the weights")
    p.add_argument("--output", required=True, help="new or empty folder for model.onnx, config, tokenizer")
    _overwrite_option(p, "an earlier export in --output")
    p.add_argument("--data", help="file to check on (default: the run's validation split); int8 needs labels")
    p.add_argument("--sample", type=int, default=512, help="examples to check on (default 512)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "serve",
        help="serve models over HTTP (Hugging Face-compatible API, web page at /)",
        description="Serve one or more run, model, adapter or ONNX folders. The first is the default at /predict "
        "and POST /; each is also at /models/NAME/predict. Adapters of one base model share it in memory.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL_DIR", help="folder, or NAME=folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require Authorization: Bearer KEY (default: $ADAPTEXT_API_KEY if set)")
    p.add_argument("--max-batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait to fill a batch (default 5 ms)")
    p.add_argument("--max-texts", type=int, default=64, help="texts per request (default 64)")
    p.add_argument("--max-chars", type=int, default=10_000, help="characters per text (default 10000)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body size (default 1 MB)")
    p.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to send a request's head and body: 408 for a slower body; a connection that "
        "sends no request in that time is closed (default 10)",
    )
    p.add_argument(
        "--docs",
        action="store_true",
        help="serve interactive API docs at /docs and /redoc; they load their scripts from a CDN, so the browser "
        "needs internet access (/openapi.json is always served)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: PyTorch models run under bf16 autocast, about 2x faster on CPUs with native bf16 (default fp32)",
    )
    p.set_defaults(func=_cmd_serve)
    return parser


def _overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def _column_options(parser: argparse.ArgumentParser, *, with_label: bool, with_pair: bool = True) -> None:
    parser.add_argument("--text-column", help="text column (default: as in training, else 'text')")
    if with_pair:
        parser.add_argument("--text-pair-column", help="second text column for pair models")
    if with_label:
        parser.add_argument("--label-column", help="label column (default: as in training, else 'label')")


def _quiet_libraries() -> None:
    # Our own log lines and progress bar say what happens; the libraries' per-file chatter does not help.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `key=value` overrides may also follow flags (`train run.yaml --resume train.epochs=5`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "train" or any("=" not in item or item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    _quiet_libraries()
    try:
        return int(args.func(args))
    except AdaptextError as error:
        print(f"adaptext {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
