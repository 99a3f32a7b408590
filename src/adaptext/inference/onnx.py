"""Running an ONNX export with onnxruntime behind the interface of a transformers classifier."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, PretrainedConfig

from adaptext.core.errors import AdaptextError

ONNX_FILE = "model.onnx"


class OnnxClassifier:
    """An onnxruntime session that answers like a transformers classifier: `model(**inputs).logits`."""

    def __init__(self, folder: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config: PretrainedConfig = AutoConfig.from_pretrained(folder)
        self.device = torch.device("cpu")

    def eval(self) -> OnnxClassifier:
        return self

    def to(self, device: Any) -> OnnxClassifier:
        if torch.device(device).type != "cpu":
            raise AdaptextError("ONNX models run on the CPU here (onnxruntime's CPU provider)")
        return self

    def __call__(self, **inputs: torch.Tensor) -> SimpleNamespace:
        feed = {name: inputs[name].cpu().numpy().astype(np.int64) for name in self.input_names if name in inputs}
        missing = [name for name in self.input_names if name not in feed]
        if missing:
            raise AdaptextError(f"the ONNX model needs inputs {missing}")
        (logits,) = self.session.run(["logits"], feed)
        return SimpleNamespace(logits=torch.from_numpy(logits))
