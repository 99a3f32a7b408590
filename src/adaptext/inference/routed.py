"""A routed classifier: one expert per task on a shared frozen base model, weighed by a router.

`continual.method: adapters` trains, for each task, a LoRA adapter with a head for that task's labels on the frozen
base model, and keeps every earlier task's adapter unchanged (so nothing they knew is lost). The router is linear
discriminant analysis (`adaptext.modeling.lda`) over *routes*, a route being one (task, label) pair seen in training,
on the frozen base model's embedding: the mean-pooled hidden states of its layers, concatenated (`router_layers`; the
layers together separate intents much better than the last alone: docs/benchmarks.md). For a text `x`, the router's
probability of a task is the sum of its routes'; the experts of the `top_k` most probable tasks run, and

    score(label) = log p_router(route (t, label) | x) + log p(label | x, expert t)

summed (in probability) over the chosen tasks t that have the label, normalised over all labels: a product of the
router's and the expert's evidence (measured better than weighing each expert by its task's probability, which
loses the router's own view of the label). A label no chosen expert has gets probability 0. The logits are the log
of these probabilities, so `softmax` gives them back and everything that reads `model(**inputs).logits`
(`Predictor`, `evaluate`, `serve`) needs nothing else. Class-incremental tasks (each its own labels) and
domain-incremental ones (the same labels on new data) are both of this form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from transformers.modeling_outputs import SequenceClassifierOutput

from adaptext.core.task import Task
from adaptext.data.batching import Encoded, map_batches
from adaptext.modeling.build import answer_config
from adaptext.modeling.lda import ClassStatistics, load_arrays, save_arrays

ROUTER_FILE = "router.safetensors"  # in the model folder: the router's head
ROUTER_STATS_FILE = "router_stats.safetensors"  # in the run's `continual/`: the statistics the next task adds to
ROUTER_FEATURES = 4096  # the most features the router reads: its statistics hold features^2 float64 numbers
LOG_ZERO = -1e4  # the logit of a label no chosen expert has: exp(-1e4) is 0 in every float type, and never NaN


def router_layers(hidden_layers: int, hidden_size: int, limit: int = ROUTER_FEATURES) -> list[int]:
    """The hidden states the router reads (0 is the embedding layer's output): all of them, or the last ones that
    fit in `limit` features."""
    states = hidden_layers + 1
    keep = max(1, min(states, limit // hidden_size))
    return list(range(states - keep, states))


@dataclass
class RouterHead:
    """The router's LDA head over routes, and each route's task and label (indices into the task and label lists)."""

    weight: np.ndarray  # (routes, features)
    bias: np.ndarray  # (routes,)
    route_task: np.ndarray  # (routes,) int
    route_label: np.ndarray  # (routes,) int

    @property
    def tasks(self) -> int:
        return int(self.route_task.max()) + 1 if len(self.route_task) else 0

    def save(self, path: Path) -> None:
        save_arrays(
            path,
            {
                "weight": self.weight.astype(np.float32),
                "bias": self.bias.astype(np.float32),
                "route_task": self.route_task,
                "route_label": self.route_label,
            },
        )

    @classmethod
    def load(cls, path: Path) -> RouterHead:
        arrays = load_arrays(path)
        return cls(arrays["weight"], arrays["bias"], arrays["route_task"], arrays["route_label"])


@dataclass
class Router:
    """Running LDA statistics over routes, and each route's task and label."""

    stats: ClassStatistics
    route_task: np.ndarray  # (routes,) int
    route_label: np.ndarray  # (routes,) int

    @classmethod
    def empty(cls, dim: int) -> Router:
        return cls(ClassStatistics.empty(0, dim), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    def update(self, embeddings: np.ndarray, task: int, labels: np.ndarray) -> Router:
        """This router with `embeddings` (n, features) of task `task` and label ids `labels` (n,) added; a (task,
        label) pair not seen before becomes a new route."""
        route_task, route_label = list(self.route_task), list(self.route_label)
        index = self.route_index()
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

    def route_index(self) -> dict[tuple[int, int], int]:
        """Each route's id by its (task, label id)."""
        return {(int(t), int(y)): r for r, (t, y) in enumerate(zip(self.route_task, self.route_label, strict=True))}

    def routes(self, task: int, labels: np.ndarray) -> np.ndarray:
        """The route ids of task `task`'s label ids `labels`, all routed already."""
        index = self.route_index()
        return np.array([index[(task, int(label))] for label in labels], dtype=np.int64)

    def head(self, shrinkage: float) -> RouterHead:
        weight, bias = self.stats.head(shrinkage)
        return RouterHead(weight, bias, self.route_task, self.route_label)

    def save(self, path: Path) -> None:
        save_arrays(path, self.stats.arrays() | {"route_task": self.route_task, "route_label": self.route_label})

    @classmethod
    def load(cls, path: Path) -> Router:
        arrays = load_arrays(path)
        routes = arrays["route_task"].astype(np.int64), arrays["route_label"].astype(np.int64)
        return cls(ClassStatistics.of(arrays), *routes)


def layer_embedding(expert: Any, inputs: dict[str, torch.Tensor], layers: Sequence[int]) -> torch.Tensor:
    """The router's features of a batch: the mean over the unpadded tokens of each of the base model's hidden states
    `layers`, concatenated, with `expert`'s (a peft model's) adapter off."""
    encoder = expert.get_base_model().base_model
    with expert.disable_adapter():
        states = encoder(**inputs, output_hidden_states=True).hidden_states
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    count = mask.sum(1).clamp_min(1.0)
    return torch.cat([(states[layer].float() * mask).sum(1) / count for layer in layers], dim=-1)


@torch.inference_mode()
def route_embeddings(
    expert: Any, encoded: Encoded, layers: Sequence[int], *, pad_token_id: int, batch_size: int = 64
) -> np.ndarray:
    """`layer_embedding` of every example of `encoded`, in example order, as float32 (eval mode)."""
    was_training = expert.training
    expert.eval()
    try:
        return map_batches(
            encoded,
            lambda batch: layer_embedding(expert, batch, layers),
            pad_token_id=pad_token_id,
            device=next(expert.parameters()).device,
            batch_size=batch_size,
        )
    finally:
        expert.train(was_training)


class RoutedClassifier(nn.Module):
    """Experts (peft models on one shared base) combined with the router; see the module's docstring.

    Args:
        experts: One peft classifier per task, in task order, answering `expert(**inputs).logits` over its labels.
        expert_labels: For each expert, the index in `labels` of each of its outputs.
        router: The router's head; its routes' labels index `labels`.
        layers: The base model's hidden states the router reads.
        labels: The label names in output order.
        task: Single-label only (the experts' probabilities are softmaxes).
        top_k: Experts run per text (the router's most probable tasks); 0 runs every expert.
        temperatures: Each expert's logits are divided by its temperature first.
    """

    route_weight: torch.Tensor  # (routes, features)
    route_bias: torch.Tensor  # (routes,)
    task_mask: torch.Tensor  # (tasks, routes): 0 where the route is the task's, -inf elsewhere
    route_of: torch.Tensor  # (tasks, labels): the route of each task's label, -1 where the task has no such label

    def __init__(
        self,
        experts: Sequence[nn.Module],
        expert_labels: Sequence[Sequence[int]],
        router: RouterHead,
        layers: Sequence[int],
        labels: Sequence[str],
        task: Task,
        *,
        top_k: int,
        temperatures: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if task.multi_label:
            raise ValueError("a routed classifier is single-label")
        if len(experts) != len(expert_labels) or len(experts) != router.tasks:
            raise ValueError(f"{len(experts)} experts, {len(expert_labels)} label lists, {router.tasks} routed tasks")
        route_of = torch.full((len(experts), len(labels)), -1, dtype=torch.long)
        route_of[torch.from_numpy(router.route_task), torch.from_numpy(router.route_label)] = torch.arange(
            len(router.route_task)
        )
        for t, ids in enumerate(expert_labels):
            if (route_of[t, list(ids)] < 0).any():
                raise ValueError(f"expert {t} has labels the router has no route for")
        self.experts = nn.ModuleList(experts)
        self.expert_labels = [list(ids) for ids in expert_labels]
        self.layers = list(layers)
        self.temperatures = list(temperatures) if temperatures is not None else [1.0] * len(experts)
        self.top_k = len(experts) if top_k <= 0 else min(top_k, len(experts))
        self.register_buffer("route_weight", torch.from_numpy(router.weight).float(), persistent=False)
        self.register_buffer("route_bias", torch.from_numpy(router.bias).float(), persistent=False)
        mask = torch.full((len(experts), len(router.route_task)), float("-inf"))
        mask[torch.from_numpy(router.route_task), torch.arange(len(router.route_task))] = 0.0
        self.register_buffer("task_mask", mask, persistent=False)
        self.register_buffer("route_of", route_of, persistent=False)
        self.num_labels = len(labels)
        self.config = answer_config(labels, task)

    @property
    def device(self) -> torch.device:
        return self.route_weight.device

    def route_log_probs(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """log p_router(route | x), (batch, routes)."""
        embedding = layer_embedding(self.experts[0], inputs, self.layers)
        with torch.autocast(device_type=embedding.device.type, enabled=False):  # LDA scores are large: keep fp32
            return functional.log_softmax(embedding @ self.route_weight.T + self.route_bias, dim=-1)

    def forward(self, **inputs: Any) -> SequenceClassifierOutput:
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        routes = self.route_log_probs(inputs)
        tasks = torch.logsumexp(routes.unsqueeze(1) + self.task_mask.unsqueeze(0), dim=-1)  # (batch, tasks)
        chosen = tasks.topk(self.top_k, dim=-1).indices  # (batch, k)
        # per (text, chosen task, label): log p_router(route) + log p(label | x, expert), -inf where it has no label
        scores = torch.full((len(routes), self.top_k, self.num_labels), float("-inf"), device=routes.device)
        for t, expert in enumerate(self.experts):
            rows, slots = (chosen == t).nonzero(as_tuple=True)
            if not len(rows):
                continue
            logits = expert(**{k: v[rows] for k, v in inputs.items()}).logits.float() / self.temperatures[t]
            ids = torch.tensor(self.expert_labels[t], device=routes.device)
            own_routes = routes[rows][:, self.route_of[t, ids]]
            scores[rows.unsqueeze(1), slots.unsqueeze(1), ids.unsqueeze(0)] = own_routes + functional.log_softmax(
                logits, dim=-1
            )
        combined = functional.log_softmax(torch.logsumexp(scores, dim=1), dim=-1)
        return SequenceClassifierOutput(logits=combined.clamp_min(LOG_ZERO))
