"""A routed classifier: one expert per task on a shared frozen base model, weighed by a router's belief in each task.

`continual.method: adapters` trains, for each task, a LoRA adapter with a head for that task's labels on the frozen
base model, and keeps every earlier task's adapter unchanged (so nothing they knew is lost). The router is linear
discriminant analysis (`adaptext.modeling.lda`) on the base model's own mean-pooled embedding over *routes*, a route
being one (task, label) pair seen in training; the router's probability of a task is the sum of its routes'. For a
text `x`:

    p(label | x) = sum over the k most probable tasks t of  p~(t | x) * p(label | x, expert t)

with `p~` the router's probabilities renormalised over those k tasks (only their experts run) and
`p(label | x, t) = 0` for a label expert `t` was not trained on. The logits are `log p(label | x)`, so `softmax` gives
back exactly these probabilities and everything that reads `model(**inputs).logits` (`Predictor`, `evaluate`,
`serve`) needs nothing else. Class-incremental tasks (each its own labels) and domain-incremental ones (the same labels
on new data) are both mixtures of this form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional
from transformers import PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput

from adaptext.core.task import Task
from adaptext.data.batching import Collator, Encoded
from adaptext.modeling.lda import ClassStatistics

ROUTER_FILE = "router.safetensors"
LOG_ZERO = -1e4  # the logit of a label no chosen expert has: exp(-1e4) is 0 in every float type, and never NaN


@dataclass
class Router:
    """Running LDA statistics over routes, and each route's task and label (indices into the task and label lists)."""

    stats: ClassStatistics
    route_task: np.ndarray  # (routes,) int
    route_label: np.ndarray  # (routes,) int

    @classmethod
    def empty(cls, dim: int) -> Router:
        return cls(ClassStatistics.empty(0, dim), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @property
    def tasks(self) -> int:
        return int(self.route_task.max()) + 1 if len(self.route_task) else 0

    def update(self, embeddings: np.ndarray, task: int, labels: np.ndarray) -> Router:
        """This router with `embeddings` (n, dim) of task `task` and label ids `labels` (n,) added; a (task, label)
        pair not seen before becomes a new route."""
        route_task, route_label = list(self.route_task), list(self.route_label)
        index = {(int(t), int(y)): r for r, (t, y) in enumerate(zip(route_task, route_label, strict=True))}
        targets = np.empty(len(labels), dtype=np.int64)
        for i, label in enumerate(labels):
            key = (task, int(label))
            if key not in index:
                index[key] = len(route_task)
                route_task.append(task)
                route_label.append(int(label))
            targets[i] = index[key]
        stats = self.stats.update(embeddings, targets, len(route_task))
        return Router(stats, np.asarray(route_task, dtype=np.int64), np.asarray(route_label, dtype=np.int64))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "counts": self.stats.counts,
            "sums": self.stats.sums,
            "gram": self.stats.gram,
            "route_task": self.route_task,
            "route_label": self.route_label,
        }
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(path))

    @classmethod
    def load(cls, path: Path) -> Router:
        arrays = {k: v.numpy() for k, v in load_file(str(path)).items()}
        stats = ClassStatistics(arrays["counts"], arrays["sums"], arrays["gram"])
        return cls(stats, arrays["route_task"].astype(np.int64), arrays["route_label"].astype(np.int64))


def mean_embedding(expert: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The base model's mean-pooled last hidden state of a batch: `expert` (a peft model) with its adapter off."""
    encoder = expert.get_base_model().base_model
    with expert.disable_adapter():
        hidden = encoder(**inputs).last_hidden_state.float()
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


@torch.inference_mode()
def route_embeddings(expert: Any, encoded: Encoded, *, pad_token_id: int, batch_size: int = 64) -> np.ndarray:
    """`mean_embedding` of every example of `encoded`, in example order, as float32 (eval mode)."""
    collate = Collator(pad_token_id)
    device = next(expert.parameters()).device
    was_training = expert.training
    expert.eval()
    out = np.zeros((len(encoded), 0), dtype=np.float32)
    try:
        for start in range(0, len(encoded), batch_size):
            items = [
                {k: v[i] for k, v in encoded.features.items()} | {"index": i}
                for i in range(start, min(start + batch_size, len(encoded)))
            ]
            batch = {k: v.to(device) for k, v in collate(items).items() if k not in ("index", "labels")}
            values = mean_embedding(expert, batch).cpu().numpy()
            if not out.shape[1]:
                out = np.zeros((len(encoded), values.shape[1]), dtype=np.float32)
            out[start : start + len(values)] = values
    finally:
        expert.train(was_training)
    return out


class RoutedClassifier(nn.Module):
    """Experts (peft models on one shared base) combined by the router; see the module's docstring.

    Args:
        experts: One peft classifier per task, in task order, answering `expert(**inputs).logits` over its labels.
        expert_labels: For each expert, the index in `labels` of each of its outputs.
        router: The routes' statistics; its head is computed here with `shrinkage`.
        labels: The label names in output order.
        task: Single-label only (the experts' probabilities are softmaxes).
        top_k: Experts run per text (the router's most probable tasks); 0 runs every expert.
        temperatures: Each expert's logits are divided by its temperature first.
    """

    route_weight: torch.Tensor  # (routes, dim)
    route_bias: torch.Tensor  # (routes,)
    task_mask: torch.Tensor  # (tasks, routes): 0 where the route is the task's, -inf elsewhere

    def __init__(
        self,
        experts: Sequence[nn.Module],
        expert_labels: Sequence[Sequence[int]],
        router: Router,
        labels: Sequence[str],
        task: Task,
        *,
        shrinkage: float,
        top_k: int,
        temperatures: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if task.multi_label:
            raise ValueError("a routed classifier is single-label")
        if len(experts) != len(expert_labels) or len(experts) != router.tasks:
            raise ValueError(f"{len(experts)} experts, {len(expert_labels)} label lists, {router.tasks} routed tasks")
        self.experts = nn.ModuleList(experts)
        self.expert_labels = [list(ids) for ids in expert_labels]
        self.temperatures = list(temperatures) if temperatures is not None else [1.0] * len(experts)
        self.top_k = len(experts) if top_k <= 0 else min(top_k, len(experts))
        weights, bias = router.stats.head(shrinkage)
        self.register_buffer("route_weight", torch.from_numpy(weights).float(), persistent=False)
        self.register_buffer("route_bias", torch.from_numpy(bias).float(), persistent=False)
        mask = torch.full((len(experts), len(router.route_task)), float("-inf"))
        mask[torch.from_numpy(router.route_task), torch.arange(len(router.route_task))] = 0.0
        self.register_buffer("task_mask", mask, persistent=False)
        self.num_labels = len(labels)
        self.config = PretrainedConfig(
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            problem_type=task.problem_type,  # type: ignore[arg-type]  # one of transformers' literals, as a str
        )

    @property
    def device(self) -> torch.device:
        return self.route_weight.device

    def task_log_probs(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p(task | x), (batch, tasks): the log of the summed probabilities of each task's routes."""
        embedding = mean_embedding(self.experts[0], inputs)
        with torch.autocast(device_type=embedding.device.type, enabled=False):  # LDA scores are large: keep fp32
            routes = functional.log_softmax(embedding @ self.route_weight.T + self.route_bias, dim=-1)
        return torch.logsumexp(routes.unsqueeze(1) + self.task_mask.unsqueeze(0), dim=-1)

    def forward(self, **inputs: Any) -> SequenceClassifierOutput:
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        batch = inputs["input_ids"].shape[0]
        task_log_p = self.task_log_probs(inputs)
        top, chosen = task_log_p.topk(self.top_k, dim=-1)  # (batch, k)
        top = top - torch.logsumexp(top, dim=-1, keepdim=True)  # renormalised over the chosen tasks
        # per (text, chosen task): log p~(t | x) + log p(label | x, t), -inf for the labels t's expert does not have
        scores = torch.full((batch, self.top_k, self.num_labels), float("-inf"), device=top.device)
        for t, expert in enumerate(self.experts):
            rows, slots = (chosen == t).nonzero(as_tuple=True)
            if not len(rows):
                continue
            logits = expert(**{k: v[rows] for k, v in inputs.items()}).logits.float() / self.temperatures[t]
            ids = torch.tensor(self.expert_labels[t], device=top.device)
            scores[rows.unsqueeze(1), slots.unsqueeze(1), ids.unsqueeze(0)] = top[rows, slots].unsqueeze(
                1
            ) + functional.log_softmax(logits, dim=-1)
        return SequenceClassifierOutput(logits=torch.logsumexp(scores, dim=1).clamp_min(LOG_ZERO))
