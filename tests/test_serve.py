"""Contract tests of `adaptext serve`: the Hugging Face-compatible API (format, scores, top_k, function_to_apply,
routing), /info /health /metrics, limits and errors, the API key, dynamic micro-batching, a real server in a
subprocess (InferenceClient, graceful shutdown), fuzzed request bodies and the web page in a real browser."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

import adaptext
from adaptext.core.config import load_config
from adaptext.core.errors import AdaptextError
from adaptext.deploy.serve import Batcher, ServeOptions, create_app, load_models
from adaptext.inference.predictor import Predictor
from adaptext.strategies import train
from conftest import LABELS, LEARNABLE, make_rows, served_in_thread

B_LABELS = ["billing", "shipping"]
TEXTS = [
    "my invoice is wrong again",
    "where is my parcel today",
    "login error with the screen",
    "please help with the refund",
    "the courier did not arrive with my package",
    "why is my password an error again",
]
KEY = "s3cret-key"
FUNCTIONS = ["softmax", "sigmoid", "none"]


# helpers ---------------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the Prometheus samples called `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def by_label(row: list[dict[str, Any]], labels: list[str]) -> list[float]:
    scores = {item["label"]: item["score"] for item in row}
    return [scores[label] for label in labels]


def assert_ranked(row: list[dict[str, Any]], labels: list[str], k: int | None = None) -> None:
    """`row` is `k` (default all) distinct labels of `labels`, each `{"label", "score"}`, best score first."""
    assert all(set(item) == {"label", "score"} for item in row), row
    assert all(isinstance(item["label"], str) and isinstance(item["score"], float) for item in row), row
    names = [item["label"] for item in row]
    assert len(names) == len(set(names)) == (k if k is not None else len(labels))
    assert set(names) <= set(labels)
    scores = [item["score"] for item in row]
    assert scores == sorted(scores, reverse=True), row


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return str(body["error"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run folders trained once per module: `full` (3 labels, full fine-tuning), `lora_b` (LoRA on the 2-label
    subset) and `lora` (LoRA on the 3 labels, same base as `lora_b`)."""
    folder = tmp_path_factory.mktemp("serve-runs")
    files = {
        "train": (make_rows(48, seed=1), "train.csv"),
        "validation": (make_rows(12, seed=2), "validation.csv"),
        "train_b": (make_rows(24, seed=4, labels=B_LABELS), "train_b.csv"),
        "validation_b": (make_rows(8, seed=5, labels=B_LABELS), "validation_b.csv"),
    }
    paths = {}
    for key, (rows, name) in files.items():
        paths[key] = folder / name
        pd.DataFrame(rows).to_csv(paths[key], index=False)

    def run(name: str, train_key: str, *overrides: str) -> Path:
        config = load_config(
            None,
            [
                f"model.name={tiny_model_dir}",
                f"data.train={paths[train_key]}",
                f"data.validation={paths['validation' + train_key[len('train') :]]}",
                f"output_dir={folder / name}",
                "data.max_length=32",
                "train.precision=fp32",
                "seed=7",
                *overrides,
            ],
        )
        return train(config).run_dir

    lora = ("peft.method=lora", "train.epochs=2", "train.batch_size=8", "train.learning_rate=1e-2")
    return {
        "full": run("full", "train", *LEARNABLE),
        "lora_b": run("lora_b", "train_b", *lora),
        "lora": run("lora", "train", *lora),
    }


@pytest.fixture(scope="module")
def models(runs: dict[str, Path]) -> dict[str, Predictor]:
    """What the service serves: `full` (the default) and `b` (a LoRA adapter with 2 labels)."""
    return load_models([f"full={runs['full']}", f"b={runs['lora_b']}"])


@pytest.fixture(scope="module")
def refs(runs: dict[str, Path]) -> dict[str, Predictor]:
    """Independently loaded predictors: what each served model must answer."""
    return {"full": Predictor.from_dir(runs["full"]), "b": Predictor.from_dir(runs["lora_b"])}


@pytest.fixture
def serve(models: dict[str, Predictor]) -> Iterator[Callable[..., TestClient]]:
    """`serve(**options)`: a started TestClient (lifespan run, batchers up) for `models` with `ServeOptions`."""
    with ExitStack() as stack:

        def make(served: dict[str, Predictor] | None = None, raise_errors: bool = True, **options: Any) -> TestClient:
            app = create_app(served or models, ServeOptions(**options))
            return stack.enter_context(TestClient(app, raise_server_exceptions=raise_errors))

        yield make


@pytest.fixture
def client(serve: Callable[..., TestClient]) -> TestClient:
    return serve()


def gather_posts(app: Any, requests: list[tuple[str, Any]]) -> list[httpx.Response]:
    """POST every `(path, json body)` at once, concurrently, in one event loop, with the app's lifespan started."""

    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve.test", timeout=60) as client:
                return list(await asyncio.gather(*(client.post(path, json=body) for path, body in requests)))

    return asyncio.run(main())


class Spy:
    """Wraps `predictor.predict_logits`: records each call's batch size and thread; raises for a text `BOOM`."""

    def __init__(self, predictor: Predictor) -> None:
        self.original = predictor.predict_logits
        self.sizes: list[int] = []
        self.threads: list[str] = []

    def __call__(self, texts: list[str], *args: Any, **kwargs: Any) -> np.ndarray:
        self.sizes.append(len(texts))
        self.threads.append(threading.current_thread().name)
        if "BOOM" in texts:
            raise RuntimeError("this text cannot be scored")
        return self.original(texts, *args, **kwargs)


# 1. response format, scores, parameters, routing -------------------------------------------------


def test_predict_answers_all_labels_sorted_with_the_predictor_probabilities(
    client: TestClient, refs: dict[str, Predictor]
) -> None:
    response = client.post("/predict", json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    expected = refs["full"].predict_proba(TEXTS)
    assert refs["full"].labels == LABELS
    assert isinstance(answer, list) and len(answer) == len(TEXTS)
    for row, probs in zip(answer, expected, strict=True):
        assert_ranked(row, LABELS)
        np.testing.assert_allclose(by_label(row, LABELS), probs, rtol=0, atol=1e-5)
        assert row[0]["label"] == LABELS[int(np.argmax(probs))]
        assert sum(item["score"] for item in row) == pytest.approx(1.0, abs=1e-5)
    # The model is not constant: the texts get different top labels, so a mix-up would show.
    assert len({row[0]["label"] for row in answer}) >= 2
    # POST / (the Hugging Face URL style) answers the same.
    root = client.post("/", json={"inputs": TEXTS})
    assert root.status_code == 200
    np.testing.assert_allclose(
        [by_label(row, LABELS) for row in root.json()], [by_label(row, LABELS) for row in answer], atol=1e-6
    )


def test_single_string_is_answered_as_a_list_of_one(client: TestClient) -> None:
    one = client.post("/predict", json={"inputs": TEXTS[1]})
    listed = client.post("/predict", json={"inputs": [TEXTS[1]]})
    assert one.status_code == listed.status_code == 200
    assert len(one.json()) == 1 and isinstance(one.json()[0], list)
    assert [item["label"] for item in one.json()[0]] == [item["label"] for item in listed.json()[0]]
    np.testing.assert_allclose(by_label(one.json()[0], LABELS), by_label(listed.json()[0], LABELS), atol=1e-6)


def test_top_k_keeps_the_best_labels(client: TestClient) -> None:
    full = client.post("/predict", json={"inputs": TEXTS}).json()
    for k in (1, 2, 3, 50):
        response = client.post("/predict", json={"inputs": TEXTS, "parameters": {"top_k": k}})
        assert response.status_code == 200, response.text
        for row, whole in zip(response.json(), full, strict=True):
            assert_ranked(row, LABELS, min(k, 3))
            assert [item["label"] for item in row] == [item["label"] for item in whole[: min(k, 3)]]
    # top_k above the 2 labels of model b gives its 2 labels.
    response = client.post("/models/b/predict", json={"inputs": TEXTS[0], "parameters": {"top_k": 3}})
    assert_ranked(response.json()[0], B_LABELS, 2)


def test_function_to_apply(client: TestClient, refs: dict[str, Predictor]) -> None:
    logits = refs["full"].predict_logits(TEXTS)
    expected = {
        "none": logits,
        "sigmoid": sigmoid(logits),
        "softmax": refs["full"].predict_proba(TEXTS),
    }
    for function, values in expected.items():
        body = {"inputs": TEXTS, "parameters": {"function_to_apply": function}}
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        for row, want in zip(response.json(), values, strict=True):
            assert_ranked(row, LABELS)
            np.testing.assert_allclose(by_label(row, LABELS), want, rtol=0, atol=1e-5, err_msg=function)
    # Raw logits are not probabilities: some are negative or the row does not sum to 1.
    raw = client.post("/predict", json={"inputs": TEXTS, "parameters": {"function_to_apply": "none"}}).json()
    assert any(abs(sum(item["score"] for item in row) - 1) > 1e-3 for row in raw)
    # top_k and function_to_apply together.
    both = {"inputs": TEXTS[2], "parameters": {"function_to_apply": "sigmoid", "top_k": 1}}
    row = client.post("/predict", json=both).json()[0]
    assert len(row) == 1 and row[0]["label"] == LABELS[int(np.argmax(logits[2]))]
    assert row[0]["score"] == pytest.approx(float(sigmoid(logits[2]).max()), abs=1e-5)


def test_models_route_to_their_own_model(client: TestClient, refs: dict[str, Predictor]) -> None:
    assert refs["b"].labels == B_LABELS
    for name, labels in (("full", LABELS), ("b", B_LABELS)):
        response = client.post(f"/models/{name}/predict", json={"inputs": TEXTS})
        assert response.status_code == 200, response.text
        expected = refs[name].predict_proba(TEXTS)
        for row, probs in zip(response.json(), expected, strict=True):
            assert_ranked(row, labels)
            np.testing.assert_allclose(by_label(row, labels), probs, rtol=0, atol=1e-5, err_msg=name)
    # /predict is the first model.
    default = client.post("/predict", json={"inputs": TEXTS}).json()
    assert all(len(row) == 3 for row in default)
    error = assert_error(client.post("/models/nope/predict", json={"inputs": "x"}), 404)
    assert "nope" in error and "full" in error and "b" in error


def test_info_health_page_and_docs(client: TestClient) -> None:
    info = client.get("/info")
    assert info.status_code == 200
    body = info.json()
    assert body["version"] == adaptext.__version__
    assert body["default_model"] == "full"
    assert [m["name"] for m in body["models"]] == ["full", "b"]
    full, b = body["models"]
    assert full["labels"] == LABELS and b["labels"] == B_LABELS
    assert full["multi_label"] is False and b["multi_label"] is False
    assert full["backend"] == b["backend"] == "pytorch"
    assert full["peft_method"] == "none" and b["peft_method"] == "lora"
    assert full["max_length"] == b["max_length"] == 32
    assert full["base_model"] == b["base_model"] and full["base_model"]
    assert body["limits"] == {
        "max_texts": 64,
        "max_chars": 10_000,
        "max_body_bytes": 1_000_000,
        "max_batch_size": 32,
        "max_wait_ms": 5.0,
    }

    health = client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="go"' in page.text and 'id="texts"' in page.text

    # /docs (Swagger UI from a CDN) is off by default: test_docs_are_off_unless_asked_for.
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/", "/models/{name}/predict", "/health", "/info", "/metrics"} <= set(spec["paths"])
    assert "post" in spec["paths"]["/"] and "get" not in spec["paths"]["/"]  # the page stays out of the schema
    assert "PredictRequest" in spec["components"]["schemas"]


def test_info_reports_the_configured_limits(serve: Callable[..., TestClient]) -> None:
    client = serve(max_batch_size=7, max_wait_ms=12.5, max_texts=9, max_chars=99, max_body_bytes=12_345)
    assert client.get("/info").json()["limits"] == {
        "max_texts": 9,
        "max_chars": 99,
        "max_body_bytes": 12_345,
        "max_batch_size": 7,
        "max_wait_ms": 12.5,
    }


def test_metrics_count_requests_errors_latency_and_batch_sizes(client: TestClient) -> None:
    before = client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    text = before.text
    assert metric(text, "adaptext_requests_total", path="/predict") == 0
    assert metric(text, "adaptext_batch_size_count", model="full") == 0

    assert client.post("/predict", json={"inputs": TEXTS[:3]}).status_code == 200
    assert client.post("/predict", json={"inputs": TEXTS[0]}).status_code == 200
    assert client.post("/models/b/predict", json={"inputs": TEXTS[:2]}).status_code == 200
    assert client.post("/predict", json={"inputs": []}).status_code == 422
    assert client.post("/predict", json={"nothing": 1}).status_code == 422

    text = client.get("/metrics").text
    assert metric(text, "adaptext_requests_total", method="POST", path="/predict", status="200") == 2
    assert metric(text, "adaptext_requests_total", method="POST", path="/predict", status="422") == 2
    assert metric(text, "adaptext_requests_total", path="/models/{name}/predict", status="200") == 1
    assert metric(text, "adaptext_errors_total", path="/predict", status="422") == 2
    assert metric(text, "adaptext_errors_total", status="200") == 0
    assert metric(text, "adaptext_request_latency_seconds_count", path="/predict") == 4
    assert metric(text, "adaptext_request_latency_seconds_sum", path="/predict") > 0
    # One forward pass per request here (sequential requests): 3 texts and 1 text for `full`, 2 for `b`.
    assert metric(text, "adaptext_batch_size_count", model="full") == 2
    assert metric(text, "adaptext_batch_size_sum", model="full") == 4
    assert metric(text, "adaptext_batch_size_bucket", model="full", le="1.0") == 1
    assert metric(text, "adaptext_batch_size_bucket", model="full", le="4.0") == 2
    assert metric(text, "adaptext_batch_size_sum", model="b") == 2
    assert metric(text, "adaptext_requests_total", method="GET", path="/metrics", status="200") == 1


# 2. limits and errors ---------------------------------------------------------------------------


def test_too_many_texts_and_too_long_texts_are_413(serve: Callable[..., TestClient]) -> None:
    client = serve(max_texts=3, max_chars=20)
    assert client.post("/predict", json={"inputs": ["a", "b", "c"]}).status_code == 200
    assert "3" in assert_error(client.post("/predict", json={"inputs": ["a", "b", "c", "d"]}), 413)
    assert client.post("/predict", json={"inputs": "x" * 20}).status_code == 200
    error = assert_error(client.post("/predict", json={"inputs": ["ok", "y" * 21]}), 413)
    assert "inputs[1]" in error and "20" in error
    assert_error(client.post("/models/b/predict", json={"inputs": "z" * 21}), 413)
    # Characters, not bytes: 20 Chinese characters (60 UTF-8 bytes) are within the limit.
    assert client.post("/predict", json={"inputs": "好" * 20}).status_code == 200


JSON_HEADERS = {"content-type": "application/json"}
SMALL_BODY = json.dumps({"inputs": "a" * 200}).encode()  # under a 300-byte limit
BIG_BODY = json.dumps({"inputs": "a" * 400}).encode()  # over it


def chunked(body: bytes) -> Iterator[bytes]:
    """`body` in 64-byte pieces: httpx sends it chunked, without a Content-Length."""
    for i in range(0, len(body), 64):
        yield body[i : i + 64]


def test_body_over_the_limit_is_413(serve: Callable[..., TestClient]) -> None:
    client = serve(max_body_bytes=300)
    assert client.post("/predict", content=SMALL_BODY, headers=JSON_HEADERS).status_code == 200
    # Declared: Content-Length is over the limit.
    declared = client.post("/predict", content=BIG_BODY, headers=JSON_HEADERS)
    assert int(declared.request.headers["content-length"]) > 300
    assert "300" in assert_error(declared, 413)
    assert_error(client.post("/models/b/predict", content=BIG_BODY, headers=JSON_HEADERS), 413)
    # A small body sent chunked (no Content-Length) is fine.
    ok = client.post("/predict", content=chunked(SMALL_BODY), headers=JSON_HEADERS)
    assert "content-length" not in ok.request.headers
    assert ok.status_code == 200, ok.text


def test_streamed_body_over_the_limit_is_413(serve: Callable[..., TestClient]) -> None:
    client = serve(max_body_bytes=300)
    streamed = client.post("/predict", content=chunked(BIG_BODY), headers=JSON_HEADERS)
    assert "content-length" not in streamed.request.headers
    assert "300" in assert_error(streamed, 413)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({}, "inputs"),
        ({"parameters": {"top_k": 1}}, "inputs"),
        ({"inputs": 5}, "inputs"),
        ({"inputs": None}, "inputs"),
        ({"inputs": ["a", 2]}, "inputs"),
        ({"inputs": {"text": "a"}}, "inputs"),
        ({"inputs": "a", "extra": 1}, "extra"),
        ({"inputs": "a", "parameters": {"top_k": 0}}, "top_k"),
        ({"inputs": "a", "parameters": {"top_k": -2}}, "top_k"),
        ({"inputs": "a", "parameters": {"top_k": "many"}}, "top_k"),
        ({"inputs": "a", "parameters": {"top_k": 1.5}}, "top_k"),
        ({"inputs": "a", "parameters": {"function_to_apply": "relu"}}, "function_to_apply"),
        ({"inputs": "a", "parameters": {"temperature": 2}}, "temperature"),
        ({"inputs": "a", "parameters": [1]}, "parameters"),
        ({"inputs": []}, "inputs"),
        ([], "body"),
        ("just a string", "body"),
    ],
)
def test_invalid_requests_are_422_with_an_error(client: TestClient, body: Any, where: str) -> None:
    error = assert_error(client.post("/predict", json=body), 422)
    assert where in error


def test_malformed_and_missing_json_is_422(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    assert_error(client.post("/predict", content=b'{"inputs": "a"', headers=headers), 422)
    assert_error(client.post("/predict", content=b"", headers=headers), 422)
    assert_error(client.post("/predict"), 422)


def test_api_key(serve: Callable[..., TestClient]) -> None:
    client = serve(api_key=KEY)
    good = {"authorization": f"Bearer {KEY}"}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}, {"authorization": f"Basic {KEY}"}):
        for path in ("/predict", "/", "/models/full/predict"):
            response = client.post(path, json={"inputs": "a"}, headers=headers)
            assert "API key" in assert_error(response, 401), (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
        assert_error(client.get("/info", headers=headers), 401)
        assert_error(client.get("/metrics", headers=headers), 401)
        # An invalid body without a key is refused for the key, before its schema is checked.
        assert_error(client.post("/predict", json={}, headers=headers), 401)
    response = client.post("/predict", json={"inputs": TEXTS}, headers=good)
    assert response.status_code == 200 and len(response.json()) == len(TEXTS)
    assert client.post("/models/b/predict", json={"inputs": "a"}, headers=good).status_code == 200
    assert client.get("/info", headers=good).status_code == 200
    assert client.get("/metrics", headers=good).status_code == 200
    assert client.post("/predict", json={"inputs": "a"}, headers={"authorization": f"bearer {KEY}"}).status_code == 200
    # Open without a key: liveness and the page (which then asks for the key).
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/").status_code == 200


def test_failed_model_call_is_a_500_json_error_and_the_service_keeps_running(
    serve: Callable[..., TestClient], models: dict[str, Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(models["full"], "predict_logits", Spy(models["full"]))
    client = serve(raise_errors=False)
    assert_error(client.post("/predict", json={"inputs": ["BOOM"]}), 500)
    assert client.post("/predict", json={"inputs": TEXTS}).status_code == 200
    text = client.get("/metrics").text
    assert metric(text, "adaptext_errors_total", path="/predict", status="500") == 1


def test_errors_outside_the_routes_are_json_with_an_error_key(client: TestClient) -> None:
    assert_error(client.get("/no/such/path"), 404)
    assert_error(client.get("/predict"), 405)
    # A body that is not UTF-8: refused as a client error, with the service's error shape.
    response = client.post("/predict", content=b'{"inputs": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)


def test_lone_surrogate_text_is_a_client_error(serve: Callable[..., TestClient]) -> None:
    client = serve(raise_errors=False)
    response = client.post(
        "/predict", content=b'{"inputs": ["fine", "bad \\ud800 text"]}', headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, response.text
    assert_error(response, response.status_code)


# 3. micro-batching ------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_answer(
    models: dict[str, Predictor], refs: dict[str, Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [row["text"] for row in make_rows(24, seed=11)]
    assert len(set(texts)) == len(texts)
    expected = np.concatenate([refs["full"].predict_proba([text]) for text in texts])
    # The answers differ from text to text, so a caller given another caller's answer would show.
    gaps = np.abs(expected[:, None, :] - expected[None, :, :]).max(axis=-1) + np.eye(len(texts))
    assert gaps.min() > 1e-4

    spy = Spy(models["full"])
    monkeypatch.setattr(models["full"], "predict_logits", spy)
    app = create_app(models, ServeOptions(max_batch_size=32, max_wait_ms=100))
    responses = gather_posts(app, [("/predict", {"inputs": text}) for text in texts])
    for text, response, probs in zip(texts, responses, expected, strict=True):
        assert response.status_code == 200, response.text
        (row,) = response.json()
        np.testing.assert_allclose(by_label(row, LABELS), probs, rtol=0, atol=1e-5, err_msg=text)

    # Fewer forward passes than requests, every text scored once, in the worker thread, off the event loop.
    assert sum(spy.sizes) == len(texts)
    assert len(spy.sizes) < len(texts) and max(spy.sizes) > 1, spy.sizes
    assert all(name.startswith("adaptext-full") for name in spy.threads), spy.threads


def test_batch_size_histogram_shows_the_merged_batches(
    serve: Callable[..., TestClient],
    models: dict[str, Predictor],
    refs: dict[str, Predictor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same with threads through TestClient; the histogram shows what the batcher did."""
    spy = Spy(models["full"])
    monkeypatch.setattr(models["full"], "predict_logits", spy)
    client = serve(max_wait_ms=100)
    texts = [row["text"] for row in make_rows(16, seed=12)]
    results: dict[int, httpx.Response] = {}

    def call(i: int) -> None:
        results[i] = client.post("/predict", json={"inputs": texts[i]})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == list(range(len(texts)))
    for i, text in enumerate(texts):
        assert results[i].status_code == 200
        np.testing.assert_allclose(
            by_label(results[i].json()[0], LABELS), refs["full"].predict_proba([text])[0], atol=1e-5
        )
    text = client.get("/metrics").text
    passes = metric(text, "adaptext_batch_size_count", model="full")
    assert metric(text, "adaptext_batch_size_sum", model="full") == len(texts)
    assert passes == len(spy.sizes) < len(texts)
    # Some forward pass had more than one text.
    assert metric(text, "adaptext_batch_size_bucket", model="full", le="1.0") < passes


def test_a_long_request_fills_a_batch_without_waiting(serve: Callable[..., TestClient]) -> None:
    client = serve(max_batch_size=4, max_wait_ms=5_000)
    start = time.perf_counter()
    response = client.post("/predict", json={"inputs": TEXTS[:4]})
    assert response.status_code == 200
    assert time.perf_counter() - start < 2.5  # a full batch does not wait the 5 s for more


def test_merged_requests_never_exceed_max_batch_size(
    models: dict[str, Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(models["full"])
    monkeypatch.setattr(models["full"], "predict_logits", spy)
    app = create_app(models, ServeOptions(max_batch_size=4, max_wait_ms=300))
    responses = gather_posts(app, [("/predict", {"inputs": TEXTS[:3]}), ("/predict", {"inputs": TEXTS[3:6]})])
    assert [r.status_code for r in responses] == [200, 200]
    assert sum(spy.sizes) == 6
    assert max(spy.sizes) <= 4, spy.sizes


def test_a_failing_text_fails_only_its_own_request(
    models: dict[str, Predictor], refs: dict[str, Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(models["full"])
    monkeypatch.setattr(models["full"], "predict_logits", spy)
    app = create_app(models, ServeOptions(max_wait_ms=300))
    good, bad = gather_posts(app, [("/predict", {"inputs": TEXTS[0]}), ("/predict", {"inputs": "BOOM"})])
    assert spy.sizes[0] == 2  # both were in one batch
    assert bad.status_code == 500
    assert good.status_code == 200, good.text
    np.testing.assert_allclose(by_label(good.json()[0], LABELS), refs["full"].predict_proba([TEXTS[0]])[0], atol=1e-5)


def test_declared_oversize_body_is_counted_in_the_metrics(serve: Callable[..., TestClient]) -> None:
    client = serve(max_body_bytes=100)
    response = client.post("/predict", content=b"x" * 500, headers={"content-type": "application/json"})
    assert_error(response, 413)
    text = client.get("/metrics").text
    assert metric(text, "adaptext_errors_total", status="413") == 1
    assert metric(text, "adaptext_requests_total", status="413") == 1


# 2b. hardening: the key, metric labels, body messages, timeouts, start-up errors, dropped work ---------


def asgi_requests(app: Any, requests: list[tuple[str, str, dict[str, Any]]]) -> list[httpx.Response]:
    """Each `(method, path, httpx keyword arguments)` in turn, with the app's lifespan started, through httpx's ASGI
    transport, which passes header bytes as they are (TestClient re-encodes them as UTF-8)."""

    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve.test", timeout=60) as client:
                return [await client.request(method, path, **kwargs) for method, path, kwargs in requests]

    return asyncio.run(main())


NON_ASCII_HEADERS = [b"Bearer \xff\xfe", b"Bearer cl\xe9", b"Bearer cl\xc3\xa9", b"\xc3\xa9 x", KEY.encode() + b"\xff"]


def test_a_non_ascii_authorization_header_is_401_never_500(models: dict[str, Predictor]) -> None:
    app = create_app(models, ServeOptions(api_key=KEY))
    requests = []
    for header in NON_ASCII_HEADERS:
        for path in ("/predict", "/models/b/predict"):
            requests.append(("POST", path, {"json": {"inputs": "a"}, "headers": {"authorization": header}}))
        requests.append(("GET", "/info", {"headers": {"authorization": header}}))
    responses = asgi_requests(app, requests)
    for (_, path, kwargs), response in zip(requests, responses, strict=True):
        assert dict(response.request.headers.raw)[b"authorization"] == kwargs["headers"]["authorization"]
        assert "API key" in assert_error(response, 401), (path, kwargs)


def test_a_non_ascii_api_key_works_when_sent_in_utf8(models: dict[str, Predictor]) -> None:
    app = create_app(models, ServeOptions(api_key="clé"))
    good = {"authorization": "Bearer clé".encode()}
    wrong = [b"Bearer cl\xe9", b"Bearer cle", "Bearer clé!".encode(), b"Bearer", b""]  # cl\xe9: clé in Latin-1
    responses = asgi_requests(
        app,
        [
            ("POST", "/predict", {"json": {"inputs": TEXTS[0]}, "headers": good}),
            ("GET", "/info", {"headers": good}),
            ("POST", "/predict", {"json": {"inputs": "a"}}),
            *[("POST", "/predict", {"json": {"inputs": "a"}, "headers": {"authorization": h}}) for h in wrong],
        ],
    )
    assert responses[0].status_code == 200 and len(responses[0].json()) == 1, responses[0].text
    assert responses[1].status_code == 200
    for response in responses[2:]:
        assert_error(response, 401)


def series(text: str) -> int:
    """How many samples (one per series and suffix) the Prometheus text has."""
    return sum(len(family.samples) for family in text_string_to_metric_families(text))


def test_invented_methods_and_paths_add_no_metric_series(serve: Callable[..., TestClient]) -> None:
    client = serve(api_key=KEY)
    good = {"authorization": f"Bearer {KEY}"}
    assert_error(client.request("INVENTED", "/predict"), 405)
    assert_error(client.request("INVENTED", "/no/such/path"), 404)
    assert_error(client.request("INVENTED", "/info"), 405)
    client.get("/metrics", headers=good)
    before = client.get("/metrics", headers=good).text
    for i in range(40):  # no key needed
        assert_error(client.request(f"INVENTED-{i}", "/predict"), 405)
        assert_error(client.request(f"M{i}", f"/no/such/path/{i}"), 404)
        assert_error(client.request(f"get{i}", "/info"), 405)
    after = client.get("/metrics", headers=good).text
    assert series(after) == series(before)
    assert metric(after, "adaptext_requests_total", method="other", path="/predict", status="405") == 41
    assert metric(after, "adaptext_requests_total", method="other", path="unmatched", status="404") == 41
    assert metric(after, "adaptext_requests_total", method="other", path="/info", status="405") == 41
    assert metric(after, "adaptext_requests_total", method="GET", path="/metrics", status="200") == 2  # not this one
    methods = {
        s.labels["method"] for f in text_string_to_metric_families(after) for s in f.samples if "method" in s.labels
    }
    assert methods == {"GET", "other"}


def test_the_api_key_is_checked_before_the_body(serve: Callable[..., TestClient]) -> None:
    client = serve(api_key=KEY, max_body_bytes=300)
    good = {"authorization": f"Bearer {KEY}"}
    bodies = {  # what each body gets with the key
        "malformed JSON": (b'{"inputs": ', 422),
        "not UTF-8": (b'{"inputs": "\xff"}', 400),
        "over the size limit": (BIG_BODY, 413),
        "wrong schema": (b'{"nothing": 1}', 422),
    }
    for name, (content, status) in bodies.items():
        for path in ("/predict", "/", "/models/b/predict"):
            for headers in ({}, {"authorization": "Bearer wrong"}):
                response = client.post(path, content=content, headers={**JSON_HEADERS, **headers})
                assert "API key" in assert_error(response, 401), (name, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
            assert_error(client.post(path, content=content, headers={**JSON_HEADERS, **good}), status)
    assert_error(client.post("/predict", content=chunked(BIG_BODY), headers=JSON_HEADERS), 401)
    # The refusals are counted under their route.
    text = client.get("/metrics", headers=good).text
    assert metric(text, "adaptext_requests_total", method="POST", path="/predict", status="401") == 9
    assert metric(text, "adaptext_requests_total", path="unmatched", status="401") == 0


def test_empty_and_blank_texts_are_422_naming_the_text(client: TestClient) -> None:
    for inputs, where in (
        ("", "inputs[0]"),
        ("   ", "inputs[0]"),
        (["fine", ""], "inputs[1]"),
        (["a", "b", " \n\t"], "inputs[2]"),
    ):
        error = assert_error(client.post("/predict", json={"inputs": inputs}), 422)
        assert error.startswith(where) and "empty" in error, (inputs, error)
    assert_error(client.post("/models/b/predict", json={"inputs": ["\u3000"]}), 422)  # an ideographic space


@pytest.mark.parametrize(
    ("content", "headers", "status", "expected"),
    [
        (b'{"inputs": ', JSON_HEADERS, 422, "body: not valid JSON (Expecting value at line 1 column 12)"),
        (b'{"inputs": "a"', JSON_HEADERS, 422, "body: not valid JSON (Expecting ',' delimiter at line 1 column 15)"),
        (b'{"inputs":\n  "a",\n}', JSON_HEADERS, 422, "at line 3 column 1)"),
        (b'{"inputs": "\xff\xfe"}', JSON_HEADERS, 400, "body: not valid UTF-8 (invalid start byte at byte 12)"),
        (b"", JSON_HEADERS, 422, "body: missing"),
        (b'{"inputs": "a"}', {"content-type": "text/plain"}, 422, "Content-Type: application/json"),
        (b'["a"]', JSON_HEADERS, 422, "body: must be a JSON object"),
    ],
)
def test_body_errors_say_what_is_wrong(
    client: TestClient, content: bytes, headers: dict[str, str], status: int, expected: str
) -> None:
    error = assert_error(client.post("/predict", content=content, headers=headers), status)
    assert expected in error
    assert "JSON decode error" not in error and "error parsing the body" not in error


def test_head_health_is_200(serve: Callable[..., TestClient]) -> None:
    for client in (serve(), serve(api_key=KEY)):
        response = client.head("/health")
        assert response.status_code == 200 and response.content == b""
        assert client.get("/health").json() == {"status": "ok"}


def test_docs_are_off_unless_asked_for(serve: Callable[..., TestClient]) -> None:
    plain = serve()
    assert_error(plain.get("/docs"), 404)
    assert_error(plain.get("/redoc"), 404)
    assert "/predict" in plain.get("/openapi.json").json()["paths"]
    documented = serve(docs=True)
    page = documented.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert documented.get("/redoc").status_code == 200
    assert "/predict" in documented.get("/openapi.json").json()["paths"]


def test_a_slow_body_is_408(models: dict[str, Predictor]) -> None:
    app = create_app(models, ServeOptions(request_timeout=0.5))

    async def slow_body() -> Any:
        yield b'{"inputs": '
        await asyncio.sleep(30)  # a client that stalls (or drips its body)
        yield b'"a"}'

    async def main() -> tuple[httpx.Response, float]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve.test", timeout=60) as client:
                start = time.monotonic()
                response = await client.post("/predict", content=slow_body(), headers=JSON_HEADERS)
                return response, time.monotonic() - start

    response, seconds = asyncio.run(main())
    assert "0.5 s" in assert_error(response, 408)
    assert response.headers["connection"] == "close"
    assert seconds < 5


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--port", "99999"], "port 99999"),
        (["--port", "0"], "port 0"),
        (["--max-body-bytes", "-1"], "--max-body-bytes"),
        (["--max-texts", "0"], "--max-texts"),
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["--max-chars", "-5"], "--max-chars"),
        (["--max-wait-ms", "-1"], "--max-wait-ms"),
        (["--max-wait-ms", "nan"], "--max-wait-ms"),
        (["--request-timeout", "0"], "--request-timeout"),
        (["--api-key", " spaced "], "API key"),
    ],
)
def test_serve_refuses_bad_options_in_one_line_before_loading_models(
    flags: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adaptext.cli import main

    assert main(["-q", "serve", str(tmp_path / "no-such-model"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adaptext serve: error: ") and err.count("\n") == 1, err
    assert named in err, err
    assert "no-such-model" not in err  # refused before the models are looked at


def test_serve_reports_a_port_in_use_before_loading_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adaptext.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["-q", "serve", str(tmp_path / "no-such-model"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"adaptext serve: error: 127.0.0.1:{port} is already in use") and err.count("\n") == 1, err


def test_serve_flags_reach_the_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import adaptext.deploy.serve
    from adaptext.cli import main

    calls: list[dict[str, Any]] = []

    def run_server(
        specs: list[str],
        host: str,
        port: int,
        options: ServeOptions,
        precision: str = "fp32",
        route: Path | None = None,
    ) -> None:
        calls.append({"specs": specs, "port": port, "options": options, "route": route})

    monkeypatch.setattr(adaptext.deploy.serve, "run_server", run_server)
    monkeypatch.setenv("ADAPTEXT_API_KEY", "clé")
    assert main(["-q", "serve", "m", "--port", "8123", "--request-timeout", "2.5", "--docs"]) == 0
    route = tmp_path / "route.yaml"
    route.write_text("model: run\nanswers: answers.csv\n")
    assert main(["-q", "serve", "m", "--route", str(route)]) == 0
    first, second = calls
    assert first["route"] is None and second["route"].answers == tmp_path / "answers.csv"
    assert main(["-q", "serve", "m", "--route", str(tmp_path / "none.yaml")]) == 2  # before any model loads
    assert len(calls) == 2
    assert first["specs"] == ["m"] and first["port"] == 8123
    assert first["options"].request_timeout == 2.5 and first["options"].docs is True
    assert first["options"].api_key == "clé"
    assert second["options"].request_timeout == 10.0 and second["options"].docs is False


@pytest.mark.parametrize(
    "options",
    [
        {"max_texts": 0},
        {"max_batch_size": -1},
        {"max_chars": 0},
        {"max_body_bytes": 0},
        {"max_wait_ms": -0.5},
        {"max_wait_ms": float("inf")},
        {"request_timeout": 0},
        {"request_timeout": float("nan")},
        {"api_key": ""},
        {"api_key": "key "},
        {"api_key": "bad \udcff key"},
    ],
)
def test_serve_options_refuse_impossible_values(options: dict[str, Any]) -> None:
    with pytest.raises(AdaptextError):
        ServeOptions(**options)


def read_until_closed(conn: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything `conn` receives until the server closes it (or `limit` s pass), and how long that took."""
    start = time.monotonic()
    conn.settimeout(limit)
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open over {limit} s; got {data!r}")
    except ConnectionResetError:
        pass
    return data, time.monotonic() - start


def test_idle_and_slow_connections_are_closed(models: dict[str, Predictor]) -> None:
    options = ServeOptions(request_timeout=1.0)
    with served_in_thread(create_app(models, options), options) as (url, port):
        assert httpx.post(f"{url}/predict", json={"inputs": TEXTS[0]}, timeout=30).status_code == 200

        # A connection that never sends anything.
        with socket.create_connection(("127.0.0.1", port)) as idle:
            data, seconds = read_until_closed(idle, 8)
        assert data == b"" and seconds < 6

        # A request head that never ends: a header line every 0.2 s.
        with socket.create_connection(("127.0.0.1", port)) as slow_head:
            start = time.monotonic()
            slow_head.settimeout(0.2)
            closed = False
            for i in range(40):
                try:
                    slow_head.sendall(b"POST /predict HTTP/1.1\r\n" if i == 0 else f"x-slow-{i}: 1\r\n".encode())
                    closed = slow_head.recv(1) == b""
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
                if closed:
                    break
            assert closed and time.monotonic() - start < 6

        # A body that stalls half-way: 408, then the connection is closed.
        with socket.create_connection(("127.0.0.1", port)) as slow_body:
            slow_body.sendall(
                b"POST /predict HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
                b"content-length: 100\r\n\r\n" + b'{"inputs": '
            )
            data, seconds = read_until_closed(slow_body, 8)
        assert data.startswith(b"HTTP/1.1 408"), data
        assert b'"error"' in data and seconds < 6

        # A kept-alive connection that goes quiet after its answer.
        with httpx.Client(base_url=url, timeout=30) as kept:
            assert kept.get("/health").status_code == 200
            time.sleep(2.5)
            assert kept.get("/health").status_code == 200  # httpx reconnects: the old one was closed
        assert httpx.post(f"{url}/predict", json={"inputs": TEXTS[1]}, timeout=30).status_code == 200


class Recorder:
    """A predictor stand-in that records the texts of each forward pass."""

    detector = None  # no out-of-scope detector
    temperature = 1.0

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.zeros((len(texts), 3), dtype=np.float32)


def test_batcher_drops_requests_whose_caller_has_gone() -> None:
    recorder = Recorder()

    async def main() -> None:
        registry = CollectorRegistry()
        sizes = Histogram("batch", "texts per batch", ["model"], registry=registry)
        batcher = Batcher(recorder, ServeOptions(max_wait_ms=300), sizes, "m")  # type: ignore[arg-type]
        batcher.start()
        loop = asyncio.get_running_loop()
        # Gone before the batcher takes it from the queue.
        gone = loop.create_future()
        gone.cancel()
        await batcher.queue.put((["gone before"], gone))
        assert (await batcher.logits(["kept 1"])).shape == (1, 3)
        # Gone while its batch waits for company.
        batcher.concurrent = True
        leaving = loop.create_future()
        await batcher.queue.put((["gone while waiting"], leaving))
        kept = asyncio.ensure_future(batcher.logits(["kept 2"]))
        await asyncio.sleep(0.05)
        leaving.cancel()
        assert (await kept).shape == (1, 3)
        # Alone and gone: no forward pass at all.
        alone = loop.create_future()
        await batcher.queue.put((["gone alone"], alone))
        alone.cancel()
        await batcher.stop()

    asyncio.run(main())
    assert recorder.calls == [["kept 1"], ["kept 2"]]


def test_a_client_gone_before_its_batch_runs_is_not_scored(
    models: dict[str, Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(models["full"])
    monkeypatch.setattr(models["full"], "predict_logits", spy)
    app = create_app(models, ServeOptions(max_wait_ms=1_000))  # a lone first request waits 1 s for company
    body = json.dumps({"inputs": [TEXTS[0]]}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("serve.test", 80),
    }
    sent: list[dict[str, Any]] = []

    async def main() -> float:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(0.1)  # the client hangs up while its request waits in the batcher
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async with app.router.lifespan_context(app):
            start = time.monotonic()
            await app(scope, receive, send)
            return time.monotonic() - start

    seconds = asyncio.run(main())
    assert spy.sizes == []  # the model never saw the text
    assert seconds < 0.9  # the handler did not wait for the batch
    assert sent[0]["status"] == 499


# load_models -----------------------------------------------------------------------------------


def test_load_models_names_groups_adapters_on_a_shared_base(runs: dict[str, Path]) -> None:
    served = load_models([f"a={runs['lora']}", str(runs["full"] / "model"), f"b={runs['lora_b']}"])
    assert list(served) == ["a", "full", "b"]  # the given order; a model/ folder is named after its run
    assert served["a"].labels == LABELS and served["b"].labels == B_LABELS and served["full"].labels == LABELS

    def words(predictor: Predictor) -> int:
        model = predictor.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return int(base.bert.embeddings.word_embeddings.weight.data_ptr())

    assert words(served["a"]) == words(served["b"])  # the adapters share one base in memory
    assert words(served["full"]) != words(served["a"])
    for name, run in (("a", "lora"), ("b", "lora_b"), ("full", "full")):
        alone = Predictor.from_dir(runs[run])
        np.testing.assert_allclose(served[name].predict_logits(TEXTS), alone.predict_logits(TEXTS), atol=1e-6)

    with TestClient(create_app(served)) as client:
        for name, run in (("a", "lora"), ("b", "lora_b")):
            row = client.post(f"/models/{name}/predict", json={"inputs": TEXTS[0]}).json()[0]
            labels = served[name].labels
            expected = Predictor.from_dir(runs[run]).predict_proba([TEXTS[0]])[0]
            np.testing.assert_allclose(by_label(row, labels), expected, atol=1e-5)


def test_load_models_refuses_two_models_with_one_name(runs: dict[str, Path]) -> None:
    with pytest.raises(AdaptextError, match="NAME=DIR"):
        load_models([str(runs["full"]), f"full={runs['lora']}"])
    with pytest.raises(AdaptextError, match="at least one model"):
        create_app({})


# 5. fuzzing ------------------------------------------------------------------------------------

FUZZ_LIMITS = {"max_texts": 8, "max_chars": 40, "max_body_bytes": 4_000}
# Lone surrogates are left out here: they are the known 500 of test_lone_surrogate_text_is_a_client_error.
SAFE_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=50)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | SAFE_TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(SAFE_TEXT, inner, max_size=4),
    max_leaves=12,
)
PARAMETERS = st.fixed_dictionaries(
    {},
    optional={
        "top_k": st.integers(-2, 6) | JSON_VALUES,
        "function_to_apply": st.sampled_from([*FUNCTIONS, None]) | JSON_VALUES,
        "temperature": JSON_VALUES,
    },
)
REQUESTS = st.fixed_dictionaries(
    {},
    optional={
        "inputs": SAFE_TEXT | st.lists(SAFE_TEXT, max_size=10) | JSON_VALUES,
        "parameters": PARAMETERS | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)

# Mostly well-formed requests, so that a fair share reaches the model (200) or a limit (413).
LIKELY_VALID = st.fixed_dictionaries(
    {"inputs": SAFE_TEXT | st.lists(SAFE_TEXT, min_size=1, max_size=10)},
    optional={
        "parameters": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "top_k": st.none() | st.integers(1, 5),
                "function_to_apply": st.sampled_from([*FUNCTIONS, None]),
            },
        )
    },
)


def expected_status(body: Any, size: int) -> int | None:
    """What the service must answer to `body` (`size` bytes), where that is certain; None where pydantic's lax
    coercions (e.g. top_k "2" or 2.0) decide."""
    if size > FUZZ_LIMITS["max_body_bytes"]:
        return 413
    if not isinstance(body, dict) or "inputs" not in body or set(body) - {"inputs", "parameters"}:
        return 422
    inputs = body["inputs"]
    if not (isinstance(inputs, str) or (isinstance(inputs, list) and all(isinstance(t, str) for t in inputs))):
        return 422
    parameters = body.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict) or set(parameters) - {"top_k", "function_to_apply"}:
            return 422
        function = parameters.get("function_to_apply")
        if function is not None and function not in FUNCTIONS:
            return 422
        top_k = parameters.get("top_k")
        if top_k is not None:
            if type(top_k) is not int:
                return None
            if top_k < 1:
                return 422
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not texts:
        return 422
    if len(texts) > FUZZ_LIMITS["max_texts"]:
        return 413
    for text in texts:  # the first text at fault decides
        if not text.strip():
            return 422
        if len(text) > FUZZ_LIMITS["max_chars"]:
            return 413
    return 200


@pytest.fixture
def fuzz_client(serve: Callable[..., TestClient]) -> TestClient:
    return serve(raise_errors=False, **FUZZ_LIMITS)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=LIKELY_VALID | REQUESTS | JSON_VALUES,
    ascii_only=st.booleans(),
    path=st.sampled_from(["/predict", "/", "/models/b/predict"]),
)
def test_fuzzed_bodies_never_break_the_service(fuzz_client: TestClient, body: Any, ascii_only: bool, path: str) -> None:
    content = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8")
    response = fuzz_client.post(path, content=content, headers={"content-type": "application/json"})
    event(f"status {response.status_code}")  # --hypothesis-show-statistics: how often each answer came
    assert response.status_code < 500, (body, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    answer = response.json()
    expected = expected_status(body, len(content))
    if expected is not None:
        assert response.status_code == expected, (body, response.text)
    if response.status_code == 200:
        texts = [body["inputs"]] if isinstance(body["inputs"], str) else body["inputs"]
        labels = B_LABELS if path.startswith("/models/b") else LABELS
        assert isinstance(answer, list) and len(answer) == len(texts)
        top_k = (body.get("parameters") or {}).get("top_k")
        if top_k is None:
            k = len(labels)
        elif type(top_k) is int:
            k = min(top_k, len(labels))
        else:  # a value pydantic coerced
            k = len(answer[0]) if answer else 0
        for row in answer:
            assert_ranked(row, labels, k)
    else:
        assert 400 <= response.status_code < 500
        assert isinstance(answer, dict) and set(answer) == {"error"} and isinstance(answer["error"], str)


# 4. a real server in a subprocess ----------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_server(log_dir: Path, *args: str) -> Server:
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("ADAPTEXT_API_KEY", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "adaptext", "serve", *args, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Server(proc, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"adaptext serve exited with {server.proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"adaptext serve did not answer /health within {timeout} s:\n{server.output()}")


@pytest.fixture(scope="module")
def servers(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Three `adaptext serve` processes, started together: `open` (full + b), `keyed` (--api-key) and `slow`
    (--max-wait-ms 2000, for the shutdown test)."""
    log_dir = tmp_path_factory.mktemp("serve-logs")
    full, lora_b = f"full={runs['full']}", f"b={runs['lora_b']}"
    started = {
        "open": start_server(log_dir, full, lora_b),
        "keyed": start_server(log_dir, full, "--api-key", KEY),
        "slow": start_server(log_dir, full, "--max-wait-ms", "2000"),
    }
    try:
        for server in started.values():
            wait_ready(server)
        yield started
    finally:
        for server in started.values():
            server.stop()


def test_inference_client_reads_the_server(
    servers: dict[str, Server], refs: dict[str, Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient, TextClassificationOutputElement

    # conftest's HF_HUB_OFFLINE=1 makes huggingface_hub refuse every request, even to 127.0.0.1.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert not huggingface_hub.constants.is_offline_mode()
    url = servers["open"].url
    client = InferenceClient(model=url, timeout=60)
    for text in TEXTS[:3]:
        api = httpx.post(f"{url}/predict", json={"inputs": text}, timeout=60).json()[0]
        np.testing.assert_allclose(by_label(api, LABELS), refs["full"].predict_proba([text])[0], atol=1e-5)
        out = client.text_classification(text)
        assert all(isinstance(item, TextClassificationOutputElement) for item in out)
        assert [item.label for item in out] == [item["label"] for item in api]
        assert [item.score for item in out] == pytest.approx([item["score"] for item in api], abs=1e-6)
        top = client.text_classification(text, top_k=1)
        assert len(top) == 1 and top[0].label == api[0]["label"]
        assert top[0].score == pytest.approx(api[0]["score"], abs=1e-6)
    raw = client.text_classification(TEXTS[2], function_to_apply="none")
    logits = refs["full"].predict_logits([TEXTS[2]])[0]
    np.testing.assert_allclose([{o.label: o.score for o in raw}[label] for label in LABELS], logits, atol=1e-5)
    # The named route is a model URL too.
    named = InferenceClient(model=f"{url}/models/b/predict", timeout=60).text_classification(TEXTS[0])
    assert sorted(item.label for item in named) == sorted(B_LABELS)


def test_the_server_log_names_the_schema_not_the_docs(servers: dict[str, Server]) -> None:
    output = servers["open"].output()
    assert "serving full, b on http://127.0.0.1:" in output and "/openapi.json" in output, output
    assert "/docs" not in output


@pytest.fixture(scope="module")
def sigterm_outcome(servers: dict[str, Server]) -> dict[str, Any]:
    """SIGTERM sent to the `slow` server while a request waits in its batcher (max_wait_ms 2000)."""
    server = servers["slow"]
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            response = httpx.post(f"{server.url}/predict", json={"inputs": TEXTS[0]}, timeout=60)
            outcome["status"], outcome["answer"] = response.status_code, response.json()
        except Exception as error:  # the assertions report it
            outcome["error"] = repr(error)
        outcome["answered_at"] = time.monotonic()

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.6)  # the request has arrived and waits for more texts
    outcome["signalled_at"] = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    thread.join(60)
    try:
        outcome["returncode"] = server.proc.wait(60)
    except subprocess.TimeoutExpired:
        outcome["returncode"] = None
    outcome["output"] = server.output()
    return outcome


def test_sigterm_finishes_the_request_in_flight_then_stops(
    sigterm_outcome: dict[str, Any], refs: dict[str, Predictor]
) -> None:
    outcome = sigterm_outcome
    assert "error" not in outcome, outcome
    assert outcome["status"] == 200, outcome
    assert outcome["answered_at"] > outcome["signalled_at"]  # it was in flight when the signal came
    np.testing.assert_allclose(
        by_label(outcome["answer"][0], LABELS), refs["full"].predict_proba([TEXTS[0]])[0], atol=1e-5
    )
    assert outcome["returncode"] is not None, "the server did not stop after SIGTERM"
    assert "Traceback" not in outcome["output"], outcome["output"]


def test_sigterm_ends_the_server_as_a_signal_would(sigterm_outcome: dict[str, Any]) -> None:
    # After its graceful shutdown uvicorn re-raises the signal, so process managers see "terminated by SIGTERM"
    # (shell status 143), as for any program stopped that way; anything else means the shutdown went wrong.
    assert sigterm_outcome["returncode"] in (0, -signal.SIGTERM), sigterm_outcome["returncode"]


# 6. the web page in a browser ------------------------------------------------------------------------


def page_results(page: Any) -> list[dict[str, Any]]:
    """Each `.result` block of the page: its text, label names, score values and bar widths (px)."""
    return page.eval_on_selector_all(
        "#results .result",
        """blocks => blocks.map(b => ({
            text: b.querySelector('.text').textContent,
            labels: [...b.querySelectorAll('.label')].map(e => e.textContent),
            scores: [...b.querySelectorAll('.score')].map(e => Number(e.textContent)),
            widths: [...b.querySelectorAll('.fill')].map(e => e.getBoundingClientRect().width),
        }))""",
    )


def check_results(page: Any, url: str, model: str, texts: list[str], headers: dict[str, str] | None = None) -> None:
    page.wait_for_function(f"document.querySelectorAll('#results .result').length === {len(texts)}")
    shown = page_results(page)
    api = httpx.post(
        f"{url}/models/{model}/predict",
        json={"inputs": texts, "parameters": {"top_k": 3}},
        headers=headers or {},
        timeout=60,
    ).json()
    assert [block["text"] for block in shown] == texts
    for block, row in zip(shown, api, strict=True):
        assert block["labels"] == [item["label"] for item in row]  # the API's top label first, all in its order
        assert block["scores"] == pytest.approx([item["score"] for item in row], abs=6e-4)
        assert len(block["widths"]) == len(row) and block["widths"][0] > 0
        assert block["widths"] == sorted(block["widths"], reverse=True)


def test_page_classifies_with_each_model(browser: Any, servers: dict[str, Server]) -> None:
    url = servers["open"].url
    page = browser.new_page()
    try:
        page.goto(f"{url}/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        options = page.locator("#model option").all_inner_texts()
        assert options == ["full (3 labels, pytorch)", "b (2 labels, pytorch)"]
        assert page.locator("#keyrow").is_hidden()
        assert adaptext.__version__ in page.inner_text("#about")

        texts = [TEXTS[0], TEXTS[2]]
        page.fill("#texts", "\n".join(texts))
        page.click("#go")
        check_results(page, url, "full", texts)
        assert page.inner_text("#error") == ""

        page.select_option("#model", "b")
        page.fill("#texts", f"{TEXTS[1]}\n\n  {TEXTS[3]}  \n")  # blank lines dropped, lines trimmed
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('#results .result .label').length === 4")
        check_results(page, url, "b", [TEXTS[1], TEXTS[3]])
    finally:
        page.close()


def test_page_asks_for_the_api_key_and_works_with_it(browser: Any, servers: dict[str, Server]) -> None:
    url = servers["keyed"].url
    page = browser.new_page()
    try:
        page.goto(f"{url}/")
        page.wait_for_selector("#keyrow", state="visible")
        assert "API key" in page.inner_text("#about")
        assert page.locator("#model option").count() == 0

        texts = [TEXTS[4], TEXTS[5]]
        page.fill("#texts", "\n".join(texts))
        page.fill("#key", "wrong")
        page.press("#key", "Tab")
        page.click("#go")
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "API key" in page.inner_text("#error")
        assert page.locator("#results .result").count() == 0

        page.fill("#key", KEY)
        page.press("#key", "Tab")  # `change` reloads the model list with the key
        page.wait_for_function("document.querySelectorAll('#model option').length === 1")
        page.click("#go")
        check_results(page, url, "full", texts, headers={"authorization": f"Bearer {KEY}"})
        assert page.inner_text("#error") == ""
    finally:
        page.close()
