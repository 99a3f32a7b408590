"""adaptext: fine-tune, evaluate, save and serve text classifiers built on Hugging Face models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Config", "EvalReport", "Prediction", "Predictor", "TrainResult", "evaluate_file", "load_config", "train"]

if TYPE_CHECKING:
    from adaptext.core.config import Config, load_config
    from adaptext.evaluation.evaluate import evaluate_file
    from adaptext.evaluation.metrics import EvalReport
    from adaptext.inference.predictor import Prediction, Predictor
    from adaptext.strategies import train
    from adaptext.training.state import TrainResult

_LAZY = {
    "Config": "adaptext.core.config",
    "load_config": "adaptext.core.config",
    "EvalReport": "adaptext.evaluation.metrics",
    "evaluate_file": "adaptext.evaluation.evaluate",
    "Prediction": "adaptext.inference.predictor",
    "Predictor": "adaptext.inference.predictor",
    "TrainResult": "adaptext.training.state",
    "train": "adaptext.strategies",
}


def __getattr__(name: str) -> Any:
    # Lazy, so `import adaptext` (and `adaptext --help`) does not pay for importing torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adaptext' has no attribute {name!r}")
