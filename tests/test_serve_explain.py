"""`adaptext serve`'s /explain: word attributions per text (default, ig, occlusion), the target label, its limits and
errors (ONNX exports have no gradients), the API key, the model's batches meanwhile, and the page's "why?" view in
a real browser."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from adaptext.cli import main
from adaptext.core.config import load_config
from adaptext.deploy.explain_api import MAX_TEXTS, MAX_WORDS
from adaptext.deploy.serve import ServeOptions, create_app
from adaptext.explain.explainer import explain_texts
from adaptext.inference.predictor import Predictor
from adaptext.strategies import train
from conftest import LABELS, LEARNABLE, make_rows, served_in_thread

TEXTS = ["my invoice is wrong again", "where is my parcel today", "login error with the screen, please help"]
KEY = "s3cret-key"
KEYS = {"label", "score", "method", "tokens", "attributions", "predicted"}


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    return str(body["error"])


def assert_explanations(answer: Any, texts: list[str], method: str, labels: list[str]) -> None:
    assert isinstance(answer, list) and len(answer) == len(texts), answer
    for item, text in zip(answer, texts, strict=True):
        assert set(item) == KEYS, item
        assert item["method"] == method
        assert item["label"] in labels and item["predicted"] in labels
        assert 0.0 <= item["score"] <= 1.0
        assert len(item["tokens"]) == len(item["attributions"]) > 0
        assert "".join(item["tokens"]) == "".join(text.split())  # the text's words, in order
        assert all(isinstance(v, float) and np.isfinite(v) for v in item["attributions"])


# fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run of the tiny model that learned the keyword task, and its ONNX export."""
    folder = tmp_path_factory.mktemp("serve-explain")
    paths = {}
    for name, rows in (("train", make_rows(48, seed=1)), ("validation", make_rows(12, seed=2))):
        paths[name] = folder / f"{name}.csv"
        pd.DataFrame(rows).to_csv(paths[name], index=False)
    config = load_config(
        None,
        [
            f"model.name={tiny_model_dir}",
            f"data.train={paths['train']}",
            f"data.validation={paths['validation']}",
            f"output_dir={folder / 'run'}",
            "data.max_length=32",
            "train.precision=fp32",
            "seed=7",
            *LEARNABLE,
        ],
    )
    run = train(config).run_dir
    assert main(["export", str(run), "--output", str(folder / "onnx")]) == 0
    return {"run": run, "onnx": folder / "onnx"}


@pytest.fixture(scope="module")
def models(folders: dict[str, Path]) -> dict[str, Predictor]:
    return {"full": Predictor.from_dir(folders["run"]), "onnx": Predictor.from_dir(folders["onnx"])}


@pytest.fixture
def serve(models: dict[str, Predictor]) -> Iterator[Callable[..., TestClient]]:
    """`serve(**options)`: a started TestClient for `models` (`full` the default, then `onnx`)."""
    with ExitStack() as stack:

        def make(**options: Any) -> TestClient:
            return stack.enter_context(TestClient(create_app(models, ServeOptions(**options))))

        yield make


@pytest.fixture
def client(serve: Callable[..., TestClient]) -> TestClient:
    return serve()


# the API ------------------------------------------------------------------------------------------------------


def test_one_text_and_a_list_are_explained_like_explain_texts(client: TestClient, models: dict[str, Predictor]) -> None:
    one = client.post("/explain", json={"inputs": TEXTS[0]})
    assert one.status_code == 200, one.text
    assert_explanations(one.json(), TEXTS[:1], "ig", LABELS)  # the default method of a PyTorch model
    many = client.post("/explain", json={"inputs": TEXTS, "parameters": {"method": "occlusion"}})
    assert many.status_code == 200, many.text
    assert_explanations(many.json(), TEXTS, "occlusion", LABELS)
    expected = explain_texts(models["full"], TEXTS, methods=["occlusion"]).explanations["occlusion"]
    for item, explanation in zip(many.json(), expected, strict=True):
        assert item["label"] == item["predicted"] == explanation.predicted
        assert item["tokens"] == explanation.tokens
        np.testing.assert_allclose(item["attributions"], explanation.attributions, atol=1e-4)
        assert item["score"] == pytest.approx(explanation.score, abs=1e-5)
    # The named route explains that model.
    named = client.post("/models/full/explain", json={"inputs": TEXTS[1], "parameters": {"method": "ig"}})
    assert_explanations(named.json(), TEXTS[1:2], "ig", LABELS)


def test_the_target_parameter_names_the_explained_label(client: TestClient) -> None:
    predicted = client.post("/explain", json={"inputs": TEXTS[0], "parameters": {"method": "occlusion"}}).json()[0]
    other = next(label for label in LABELS if label != predicted["predicted"])
    body = {"inputs": TEXTS[0], "parameters": {"method": "occlusion", "target": other}}
    answer = client.post("/explain", json=body).json()[0]
    assert answer["label"] == other and answer["predicted"] == predicted["predicted"]
    assert answer["score"] < predicted["score"]
    assert answer["tokens"] == predicted["tokens"] and answer["attributions"] != predicted["attributions"]


def test_onnx_exports_are_explained_by_occlusion_and_ig_is_refused_with_the_reason(client: TestClient) -> None:
    body = {"inputs": TEXTS[:2], "parameters": {"method": "ig"}}
    error = assert_error(client.post("/models/onnx/explain", json=body), 422)
    assert "ig" in error and "ONNX" in error and "occlusion" in error, error
    default = client.post("/models/onnx/explain", json={"inputs": TEXTS[:2]})
    assert default.status_code == 200, default.text
    assert_explanations(default.json(), TEXTS[:2], "occlusion", LABELS)  # the default where ig cannot run
    torch_answer = client.post("/explain", json={"inputs": TEXTS[:2], "parameters": {"method": "occlusion"}}).json()
    for onnx_item, torch_item in zip(default.json(), torch_answer, strict=True):
        np.testing.assert_allclose(onnx_item["attributions"], torch_item["attributions"], atol=1e-3)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"inputs": TEXTS[0], "parameters": {"method": "lime"}}, 422, ["lime", "occlusion", "ig"]),
        ({"inputs": TEXTS[0], "parameters": {"method": "all"}}, 422, ["'all'", "default"]),
        ({"inputs": TEXTS[0], "parameters": {"target": "weather"}}, 422, ["weather", "billing", "predicted"]),
        ({"inputs": TEXTS[0], "parameters": {"temperature": 1}}, 422, ["parameters.temperature"]),
        ({"inputs": [TEXTS[0]] * (MAX_TEXTS + 1)}, 413, [f"at most {MAX_TEXTS}", "explanation"]),
        ({"inputs": " ".join(["help"] * (MAX_WORDS + 1))}, 413, [f"at most {MAX_WORDS}", "words"]),
        ({"inputs": [TEXTS[0], "  "]}, 422, ["inputs[1]", "empty"]),
        ({"inputs": []}, 422, ["at least one"]),
        ({"texts": TEXTS[0]}, 422, ["inputs"]),
    ],
)
def test_bad_requests_say_why(client: TestClient, body: dict[str, Any], status: int, words: list[str]) -> None:
    error = assert_error(client.post("/explain", json=body), status)
    assert all(word in error for word in words), error


def test_unknown_model_is_404_and_the_service_limits_still_apply(serve: Callable[..., TestClient]) -> None:
    client = serve(max_texts=2, max_chars=30)
    assert "no model 'nope'" in assert_error(client.post("/models/nope/explain", json={"inputs": "a"}), 404)
    assert "at most 2 per request" in assert_error(client.post("/explain", json={"inputs": TEXTS}), 413)
    assert "at most 30" in assert_error(client.post("/explain", json={"inputs": TEXTS[2]}), 413)


def test_the_api_key_applies_to_explain(serve: Callable[..., TestClient]) -> None:
    client = serve(api_key=KEY)
    for headers in ({}, {"authorization": "Bearer wrong"}):
        for path in ("/explain", "/models/onnx/explain"):
            response = client.post(path, json={"inputs": TEXTS[0]}, headers=headers)
            assert "API key" in assert_error(response, 401)
        assert_error(client.post("/explain", json={}, headers=headers), 401)  # before the body is checked
    good = {"authorization": f"Bearer {KEY}"}
    body = {"inputs": TEXTS[0], "parameters": {"method": "occlusion"}}
    assert client.post("/models/onnx/explain", json=body, headers=good).status_code == 200


def test_explanations_are_counted_and_run_in_the_models_worker_thread_between_its_batches(
    client: TestClient, models: dict[str, Predictor], monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = models["full"]
    original = predictor.predict_logits
    calls: list[tuple[str, int, float, float]] = []

    def spy(texts: list[str], *args: Any, **kwargs: Any) -> np.ndarray:
        start = time.perf_counter()
        out = original(texts, *args, **kwargs)
        calls.append((threading.current_thread().name, len(texts), start, time.perf_counter()))
        return out

    monkeypatch.setattr(predictor, "predict_logits", spy)
    answers: dict[str, Any] = {}

    def explain() -> None:
        answers["explain"] = client.post("/explain", json={"inputs": TEXTS, "parameters": {"method": "occlusion"}})

    thread = threading.Thread(target=explain)
    thread.start()
    predictions = [client.post("/predict", json={"inputs": text}) for text in TEXTS * 3]
    thread.join(60)
    assert answers["explain"].status_code == 200 and all(r.status_code == 200 for r in predictions)
    assert {name for name, *_ in calls} == {"adaptext-full_0"}  # one thread: never two passes at once
    spans = sorted((start, end) for *_, start, end in calls)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    metrics = client.get("/metrics").text
    assert 'adaptext_requests_total{method="POST",path="/explain",status="200"}' in metrics


# the page in a browser ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_url(models: dict[str, Predictor]) -> Iterator[str]:
    """The service on a free local port, run by uvicorn in a thread of this process."""
    options = ServeOptions()
    with served_in_thread(create_app(models, options), options) as (url, _):
        yield url


def test_the_page_shows_why_with_highlighted_words(browser: Any, server_url: str) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{server_url}/")
        page.wait_for_function("document.querySelectorAll('#model option').length === 2")
        page.fill("#texts", "\n".join(TEXTS[:2]))
        page.select_option("#method", "occlusion")
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('#results .why-button').length === 2")
        assert page.locator("#results .why").first.is_hidden()

        page.locator("#results .why-button").first.click()
        page.wait_for_selector("#why-0 .why-words .word")
        api = httpx.post(
            f"{server_url}/models/full/explain",
            json={"inputs": TEXTS[0], "parameters": {"method": "occlusion"}},
            timeout=60,
        ).json()[0]
        words = page.eval_on_selector_all(
            "#why-0 .word",
            "spans => spans.map(s => ({text: s.textContent, title: s.title, background: s.style.background}))",
        )
        assert [w["text"] for w in words] == api["tokens"]
        assert [float(w["title"]) for w in words] == pytest.approx(api["attributions"], abs=1e-4)
        largest = max(range(len(words)), key=lambda i: abs(api["attributions"][i]))
        for word, value in zip(words, api["attributions"], strict=True):
            colour = "rgba(22, 163, 74" if value > 0 else "rgba(220, 38, 38"
            assert word["background"].startswith(colour) or abs(value) < 1e-9, (word, value)
        assert words[largest]["background"].endswith(", 0.85)")  # the largest at full shade
        about = page.inner_text("#why-0 .why-about")
        assert api["label"] in about and "occlusion" in about
        assert page.locator("#results .why-button").first.get_attribute("aria-expanded") == "true"

        # By keyboard: the second text's button with Enter, then the arrow keys over its words.
        page.locator("#results .why-button").nth(1).focus()
        page.keyboard.press("Enter")
        page.wait_for_selector("#why-1 .why-words .word")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.classList.contains('word')")
        first = page.evaluate("document.activeElement.textContent")
        page.keyboard.press("ArrowRight")
        second = page.evaluate("document.activeElement.textContent")
        assert [first, second] == TEXTS[1].split()[:2]

        # A method the model cannot use is explained in the view; a second press closes it.
        page.select_option("#model", "onnx")
        page.select_option("#method", "ig")
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('#results .why-button').length === 2")
        page.locator("#results .why-button").first.click()
        page.wait_for_selector("#why-0 .why-error")
        assert "ONNX" in page.inner_text("#why-0 .why-error")
        page.locator("#results .why-button").first.click()
        assert page.locator("#why-0").is_hidden()
    finally:
        page.close()
