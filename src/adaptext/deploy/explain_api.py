"""`POST /explain` and `POST /models/{name}/explain` of `adaptext serve`: which words made the model decide.

The body is `{"inputs": "text" | ["t1", ...], "parameters": {"method": "default" | "ig" | "occlusion" | "shap",
"target": "predicted" | LABEL}}`; the answer holds one object per input, `{"label", "score", "method", "tokens",
"attributions", "predicted"}`: the explained label and its probability, the method, the text's words and one
attribution per word (its push on the label's log-odds; positive is for the label), and the model's own label.

An explanation runs the model many times per text (integrated gradients 32 steps with gradients, occlusion once per
word, SHAP hundreds of times), so a request holds at most `MAX_TEXTS` texts of at most `MAX_WORDS` words.

It needs the model itself, not the micro-batcher: `serve` runs it in the model's own worker thread, the one its
batches run in, between two batches. Integrated gradients hooks the model's embedding layer while it runs; in that
thread no batch's forward pass can meet the hook, and the batches wait for the explanation, as for a large batch.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from adaptext.core.errors import AdaptextError
from adaptext.explain.explainer import choose_methods, explain_texts
from adaptext.explain.methods import EXPLAINERS
from adaptext.explain.words import word_spans
from adaptext.inference.predictor import Predictor

MAX_TEXTS = 16  # texts per explanation request
MAX_WORDS = 256  # words per explained text (occlusion runs the model once per word)

ANSWER_KEYS = ("label", "score", "method", "tokens", "attributions", "predicted")


class ExplainParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field(
        "default",
        description="ig (integrated gradients), occlusion (leave one word out), shap, or default: ig where the "
        "model allows it, else occlusion.",
    )
    target: str = Field("predicted", description="The label to explain: predicted (default) or a label name.")


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] = Field(description=f"One text or a list of at most {MAX_TEXTS} texts.")
    parameters: ExplainParameters | None = None


class WordAttributions(BaseModel):
    label: str = Field(description="The explained label.")
    score: float = Field(description="Its probability.")
    method: str
    tokens: list[str] = Field(description="The text's words.")
    attributions: list[float] = Field(
        description="One per word: its push on the explained label's log-odds (positive: for the label)."
    )
    predicted: str = Field(description="The model's label for the text.")
    words_seen: int | None = Field(
        None, description="Only for a text longer than the model reads: the words after this many were not read."
    )


# Runs `work` for model `name` off the event loop, where it cannot meet the model's batches; None when the caller
# has gone before it ran.
RunOnModel = Callable[[str, Callable[[], Any], Request], Awaitable[Any]]


def add_explain_routes(
    app: FastAPI,
    models: Mapping[str, Predictor],
    default: str,
    *,
    texts_of: Callable[[str | list[str]], list[str]],
    run_on_model: RunOnModel,
) -> set[Callable[..., Any]]:
    """Add `POST /explain` (the `default` model) and `POST /models/{name}/explain` to `app`; returns their endpoints
    (for the API key check). `texts_of` checks the request's texts as the predict routes do."""

    async def explain(name: str, body: ExplainRequest, request: Request) -> Response:
        if name not in models:
            raise HTTPException(404, f"no model {name!r}; the models are {', '.join(models)}")
        count = 1 if isinstance(body.inputs, str) else len(body.inputs)
        if count > MAX_TEXTS:
            raise HTTPException(413, f"inputs: {count} texts, at most {MAX_TEXTS} per explanation request")
        texts = texts_of(body.inputs)
        for i, text in enumerate(texts):
            words = len(word_spans(text))
            if words > MAX_WORDS:
                raise HTTPException(413, f"inputs[{i}]: {words} words, at most {MAX_WORDS} for an explanation")
        predictor = models[name]
        parameters = body.parameters or ExplainParameters()
        method = _method(predictor, parameters.method)
        target = parameters.target
        if target != "predicted" and target not in predictor.labels:
            labels = ", ".join(predictor.labels[:20]) + (", ..." if len(predictor.labels) > 20 else "")
            raise HTTPException(422, f"parameters.target: unknown label {target!r}; give predicted or one of {labels}")

        def work() -> list[dict[str, Any]]:
            # Any target but `predicted` is a label name here, even `true` (the service has no label column).
            named = target if target == "predicted" else f"label:{target}"
            result = explain_texts(predictor, texts, methods=[method], target=named)
            answers = []
            for explanation in result.explanations[method]:
                record = explanation.to_dict()
                # `words_seen` only for a text longer than the model reads: the words after it were never read.
                answers.append({key: record[key] for key in (*ANSWER_KEYS, "words_seen") if key in record})
            return answers

        try:
            answer = await run_on_model(name, work, request)
        except AdaptextError as error:  # what the checks above cannot foresee, e.g. shap not installed
            raise HTTPException(422, str(error)) from None
        if answer is None:  # the caller has gone
            return Response(status_code=499)
        return Response(json.dumps(answer), media_type="application/json")

    answers: dict[str, Any] = {"response_model": list[WordAttributions]}  # documented; the answer is built as JSON

    @app.post("/explain", summary="Explain the default model's decisions: word attributions", **answers)
    async def explain_default(body: ExplainRequest, request: Request) -> Response:
        return await explain(default, body, request)

    @app.post("/models/{name}/explain", summary="Explain the named model's decisions: word attributions", **answers)
    async def explain_named(name: str, body: ExplainRequest, request: Request) -> Response:
        return await explain(name, body, request)

    return {explain_default, explain_named}


def _method(predictor: Predictor, requested: str) -> str:
    """The one method to run for `requested` (a method's name or `default`); 422 with the reason when it cannot
    explain the model."""
    names = ["default", *EXPLAINERS.names()]
    if requested not in names:
        raise HTTPException(422, f"parameters.method: unknown method {requested!r}; give one of {', '.join(names)}")
    try:
        chosen, _ = choose_methods(predictor, [requested])
    except AdaptextError as error:
        raise HTTPException(422, f"parameters.method: {error}") from None
    return chosen[0]
