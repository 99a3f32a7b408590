"""adaptext: fine-tune, evaluate, save and serve text classifiers built on Hugging Face models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Config", "EvalReport", "Prediction", "Predictor", "TrainResult", "evaluate_file", "load_config", "train"]

if TYPE_CHECKING:
    from adaptext.config import Config, load_config
    from adaptext.evaluate import EvalReport, evaluate_file
    from adaptext.predict import Prediction, Predictor
    from adaptext.train import TrainResult, train

_LAZY = {
    "Config": "adaptext.config",
    "load_config": "adaptext.config",
    "EvalReport": "adaptext.evaluate",
    "evaluate_file": "adaptext.evaluate",
    "Prediction": "adaptext.predict",
    "Predictor": "adaptext.predict",
    "TrainResult": "adaptext.train",
    "train": "adaptext.train",
}


def __getattr__(name: str) -> Any:
    # Lazy, so `import adaptext` (and `adaptext --help`) does not pay for importing torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adaptext' has no attribute {name!r}")
