"""What each part of a fast model's prediction path is worth: one process, the paths alternated pass by pass.

    python bench/predict_paths.py STUDENT_DIR HELDOUT.csv --json bench/results/predict_paths.json

One text per call over the first `--texts` held-out texts, by each path:

- `tokenizer call, padded forward`: the tokenizer's own call and the padded `model(**inputs)` (the path before
  `DirectEncoder` and `bag_logits`);
- `direct encoder, padded forward`: the tokenizer's Rust encoder called directly, then the padded forward;
- `direct encoder, torch bag`: `bag_logits` kept in torch (a no-op forward hook on the head forces it);
- `direct encoder, numpy bag`: what `Predictor` does now for a static student.

Then batched: all held-out texts in batches of 1, 2, 4, 8 and 64, `bag_logits` in numpy (forced at every size)
against torch; `NUMPY_MAX_TEXTS` in adaptext/modeling/static.py is the crossover this measures. Medians and best of
`--passes` passes; the machine should be idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ONE_TEXT_PATHS = (
    "tokenizer call, padded forward",
    "direct encoder, padded forward",
    "direct encoder, torch bag",
    "direct encoder, numpy bag",
)


def path_setter(predictor: Any) -> Callable[[str], Callable[[], None]]:
    """A function that puts `predictor` on one path and returns how to undo it."""

    def use(path: str) -> Callable[[], None]:
        undo: list[Callable[[], None]] = []
        if path.startswith("tokenizer call"):
            predictor.direct_encoder = lambda: None
            undo.append(lambda: predictor.__dict__.pop("direct_encoder"))
        if path.endswith("padded forward"):
            predictor.model.bag_logits = None  # Predictor pads and calls model(**inputs) without it
            undo.append(lambda: predictor.model.__dict__.pop("bag_logits"))
        if path.endswith("torch bag"):
            hook = predictor.model.head[-1].register_forward_hook(lambda *_: None)
            undo.append(hook.remove)
        return lambda: [step() for step in undo]

    return use


def rates(timed: dict[str, Callable[[], float]], passes: int) -> dict[str, dict[str, float]]:
    """Each of `timed` (returning texts/s of one pass) run `passes` times, alternating; median and best."""
    results: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(passes):
        for name, run in timed.items():
            results[name].append(run())
    return {name: {"median": statistics.median(r), "best": max(r), "passes": r} for name, r in results.items()}


def cpu_name() -> str:
    """The CPU's model name and whether it has AVX-512 (Linux), which decides how fast a transformer teacher runs."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return f"{name}, {'with' if 'avx512f' in info else 'without'} AVX-512"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a static student folder (adaptext distill)")
    parser.add_argument("data", type=Path, help="CSV with a text column")
    parser.add_argument("--texts", type=int, default=1000, help="texts predicted one per call in a pass")
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import pandas as pd

    from adaptext.inference.predictor import Predictor
    from adaptext.modeling import static

    crossover = static.NUMPY_MAX_TEXTS

    predictor = Predictor.from_dir(args.model)
    if not hasattr(predictor.model, "bag_logits"):
        parser.error(f"{args.model} is not a static student")
    texts = pd.read_csv(args.data, keep_default_na=False).text.tolist()
    use = path_setter(predictor)

    def one_text(path: str) -> Callable[[], float]:
        def run() -> float:
            undo = use(path)
            started = time.perf_counter()
            for text in texts[: args.texts]:
                predictor.predict([text])
            rate = min(args.texts, len(texts)) / (time.perf_counter() - started)
            undo()
            return rate

        return run

    def batched(path: str, size: int) -> Callable[[], float]:
        def run() -> float:
            undo = use(path)
            static.NUMPY_MAX_TEXTS = size  # numpy wherever the path allows it, whatever the batch size
            predictor.batch_size = size
            started = time.perf_counter()
            predictor.predict(texts)
            rate = len(texts) / (time.perf_counter() - started)
            static.NUMPY_MAX_TEXTS = crossover
            undo()
            return rate

        return run

    for path in ONE_TEXT_PATHS:  # warm-up
        one_text(path)()
    one = rates({path: one_text(path) for path in ONE_TEXT_PATHS}, args.passes)
    by_size = {
        size: rates(
            {"numpy": batched("direct encoder, numpy bag", size), "torch": batched("direct encoder, torch bag", size)},
            args.passes,
        )
        for size in (1, 2, 4, 8, 64)
    }
    for path, r in one.items():
        print(f"one text, {path}: {r['median']:.0f} texts/s (best {r['best']:.0f})")
    for size, r in by_size.items():
        ratio = r["numpy"]["median"] / r["torch"]["median"]
        numpy, torch = r["numpy"]["median"], r["torch"]["median"]
        print(f"batches of {size}: numpy {numpy:.0f}, torch {torch:.0f} texts/s ({ratio:.2f}x)")
    if args.json is not None:
        record = {
            "command": "python bench/predict_paths.py " + " ".join(sys.argv[1:]),
            "cpu": cpu_name(),
            "one_text": one,
            "batched": by_size,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"written: {args.json}")


if __name__ == "__main__":
    main()
