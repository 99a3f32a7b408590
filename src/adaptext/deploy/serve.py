"""HTTP service: Hugging Face-compatible text classification with dynamic micro-batching.

`POST /predict` (and `POST /`) takes `{"inputs": "text" | ["t1", ...], "parameters": {"top_k": k,
"function_to_apply": "softmax" | "sigmoid" | "none"}}` and answers, per input, a list of `{"label", "score"}` sorted
by score, as Hugging Face inference does, so `huggingface_hub.InferenceClient(model=URL).text_classification(...)`
works unchanged. Concurrent requests for one model are grouped into batches (up to `max_batch_size` texts, waiting
at most `max_wait_ms` for more); the model runs in a worker thread, off the event loop. A caller that disconnects
before its batch runs is dropped from it. `POST /explain` gives word attributions (see `explain_api`).
Scores use the model's calibration temperature; a model with an out-of-scope detector answers a text beyond its
threshold with the detector's label first (`{"label": "unknown", "score": s}`, s the share of in-scope validation
texts that looked more in scope), then the labels.

Hardening: the API key is checked before any body is read (401 whatever the body); a request's head and body must
arrive within `request_timeout` seconds (408 for a slow body; a connection that sends no request head in that time is
closed); metrics label only known methods and route templates, so invented methods or paths add no series.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaptext import __version__
from adaptext.apps.router.config import RouteConfig
from adaptext.apps.router.route import Router, load_router
from adaptext.core.device import freeze_loaded_objects
from adaptext.core.errors import AdaptextError
from adaptext.core.info import ModelInfo, find_model_dir, is_adapter_folder
from adaptext.deploy.explain_api import add_explain_routes
from adaptext.deploy.route_api import add_route_routes
from adaptext.inference.predictor import MultiPredictor, Predictor, scores
from adaptext.modeling.adapters import base_model_name

if TYPE_CHECKING:
    import uvicorn


logger = logging.getLogger(__name__)

T = TypeVar("T")


PAGE = Path(__file__).with_name("page.html")


# Methods the metrics name; any other is counted as "other", so invented methods add no series.
KNOWN_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})


KEEP_ALIVE_S = 5  # uvicorn closes a kept-alive connection idle this long after an answer


UNAUTHORIZED = "missing or wrong API key: send Authorization: Bearer <key>"


@dataclass(frozen=True)
class ServeOptions:
    """Batching and request limits of the service.

    `request_timeout`: seconds a client has to send a request's head and body (408 for a body not in within it; a
    connection that sends no request head in that time is closed). `docs`: serve interactive docs at `/docs` and
    `/redoc`; their scripts and styles load from a CDN, so they need a browser with internet access (`/openapi.json`
    is always served).
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_texts: int = 64
    max_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    api_key: str | None = None
    request_timeout: float = 10.0
    docs: bool = False

    def __post_init__(self) -> None:
        least = {"max_batch_size": 1, "max_texts": 1, "max_chars": 1, "max_body_bytes": 1, "max_wait_ms": 0}
        for field in fields(self):
            value = getattr(self, field.name)
            flag = "--" + field.name.replace("_", "-")
            if field.name in least and not (math.isfinite(value) and value >= least[field.name]):
                raise AdaptextError(f"{field.name} ({flag}) must be at least {least[field.name]}, got {value}")
            if field.name == "request_timeout" and not (math.isfinite(value) and value > 0):
                raise AdaptextError(f"{field.name} ({flag}) must be a positive number of seconds, got {value}")
        if self.api_key is not None:
            if not self.api_key or self.api_key != self.api_key.strip():
                raise AdaptextError("the API key must not be empty nor start or end with a space")
            try:
                self.api_key.encode("utf-8")
            except UnicodeEncodeError:
                raise AdaptextError(
                    "the API key is not valid Unicode (is $ADAPTEXT_API_KEY in another encoding?)"
                ) from None


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(None, ge=1, description="Return only the k most probable labels (default: all).")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="Scores from logits: softmax (single-label default), sigmoid (multi-label default), none."
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] = Field(description="One text or a list of texts.")
    parameters: Parameters | None = None


class LabelScore(BaseModel):
    label: str
    score: float


def scored_logits(predictor: Predictor, texts: list[str]) -> np.ndarray:
    """The logits divided by the model's calibration temperature (n, num_labels), and with an out-of-scope detector
    one more column: its raw score."""
    if predictor.detector is None:
        return predictor.predict_logits(texts) / predictor.temperature
    logits, probs, hidden = predictor.predict_with_features(texts, features=predictor.detector.needs_features)
    return np.column_stack([logits / predictor.temperature, predictor.detector.scores(logits, probs, hidden)])


class Batcher:
    """Groups concurrent requests for one model into batches and runs them in one worker thread."""

    def __init__(self, predictor: Predictor, options: ServeOptions, batch_sizes: Histogram, name: str) -> None:
        self.predictor = predictor
        self.options = options
        self.batch_sizes = batch_sizes.labels(model=name)
        self.queue: asyncio.Queue[tuple[list[str], asyncio.Future[np.ndarray]] | None] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"adaptext-{name}")
        self.task: asyncio.Task[None] | None = None
        self.concurrent = True  # did the last batch have company? (then the next one waits for it)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Finish every queued request, then stop."""
        await self.queue.put(None)
        if self.task is not None:
            await self.task
        self.executor.shutdown(wait=True)

    async def logits(self, texts: list[str]) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carried: tuple[list[str], asyncio.Future[np.ndarray]] | None = None  # opens the next batch
        stopping = False
        while not stopping or carried is not None:
            item = carried if carried is not None else await self.queue.get()
            carried = None
            if item is None:
                break
            if item[1].done():  # its caller has gone (cancelled future): nothing to score
                continue
            batch = [item]
            size = len(item[0])
            # Wait for company only when requests have been arriving together: a lone client would otherwise pay
            # the wait on every request for nothing. What is already queued always joins.
            wait = self.options.max_wait_ms / 1000 if self.concurrent else 0.0
            deadline = loop.time() + wait
            while not stopping and size < self.options.max_batch_size:
                try:
                    if loop.time() >= deadline:
                        nxt = self.queue.get_nowait()
                    else:
                        nxt = await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if nxt is None:
                    stopping = True
                elif nxt[1].done():
                    continue  # its caller has gone
                elif size + len(nxt[0]) > self.options.max_batch_size:
                    carried = nxt  # would overflow the batch: it opens the next one
                    break
                else:
                    batch.append(nxt)
                    size += len(nxt[0])
            self.concurrent = len(batch) > 1 or carried is not None or not self.queue.empty()
            await self._answer(batch)

    async def _answer(self, batch: list[tuple[list[str], asyncio.Future[np.ndarray]]]) -> None:
        loop = asyncio.get_running_loop()
        batch = [request for request in batch if not request[1].done()]  # drop callers gone while it filled
        if not batch:
            return
        texts = [text for request_texts, _ in batch for text in request_texts]
        self.batch_sizes.observe(len(texts))
        try:
            logits = await loop.run_in_executor(self.executor, scored_logits, self.predictor, texts)
        except Exception as error:
            if len(batch) > 1:  # find the request that fails; the others still get their answers
                for request in batch:
                    await self._answer([request])
                return
            if not batch[0][1].done():
                batch[0][1].set_exception(error)
            return
        start = 0
        for request_texts, future in batch:
            if not future.done():  # a caller that went away has cancelled its future
                future.set_result(logits[start : start + len(request_texts)])
            start += len(request_texts)


def load_models(specs: Sequence[str], precision: Literal["fp32", "bf16"] = "fp32") -> dict[str, Predictor]:
    """Predictors for `specs` (`DIR` or `NAME=DIR`); adapters of one base model share it in memory.

    `precision="bf16"` runs PyTorch models under bf16 autocast (weights stay fp32): about twice the throughput on
    CPUs with native bf16, with scores that differ slightly from fp32. ONNX exports are unaffected.
    """
    named: dict[str, Path] = {}
    for spec in specs:
        name, _, folder = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(folder)
        name = name or (path.name if path.name != "model" else path.parent.name) or "model"
        if name in named:
            raise AdaptextError(f"two models are named {name!r}; name them: NAME=DIR")
        named[name] = path
    groups: dict[str, dict[str, Path]] = {}
    predictors: dict[str, Predictor] = {}
    for name, path in named.items():
        model_dir = find_model_dir(path)
        if is_adapter_folder(model_dir):
            base = base_model_name(model_dir, ModelInfo.read(model_dir))
            groups.setdefault(base, {})[name] = path
        else:
            predictors[name] = Predictor.from_dir(path)
    for group in groups.values():
        predictors |= MultiPredictor.from_dirs(group).predictors
    if precision == "bf16":
        for predictor in predictors.values():
            if predictor.info.backend != "onnx":
                predictor.autocast_dtype = torch.bfloat16
    return {name: predictors[name] for name in named}


def create_app(
    models: Mapping[str, Predictor], options: ServeOptions | None = None, router: tuple[str, Router] | None = None
) -> FastAPI:
    """The FastAPI application serving `models` (the first one also at `/predict` and `/`); with `router` (the name
    of its served model, the router), also `POST /route`."""
    if not models:
        raise AdaptextError("serve needs at least one model")
    for name, predictor in models.items():  # its answers are labels with probabilities
        predictor.require_classifier(f"serve (model {name!r})")
    options = options or ServeOptions()
    default = next(iter(models))
    registry = CollectorRegistry()
    requests = Counter("adaptext_requests", "HTTP requests", ["method", "path", "status"], registry=registry)
    errors = Counter("adaptext_errors", "HTTP requests answered with an error", ["path", "status"], registry=registry)
    latency = Histogram(
        "adaptext_request_latency_seconds",
        "Request latency",
        ["path"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        registry=registry,
    )
    batch_sizes = Histogram(
        "adaptext_batch_size",
        "Texts per model forward pass",
        ["model"],
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        registry=registry,
    )
    batchers: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        for name, predictor in models.items():
            batchers[name] = Batcher(predictor, options, batch_sizes, name)
            batchers[name].start()
        yield
        for batcher in batchers.values():  # in-flight requests have finished; drain what is queued
            await batcher.stop()

    app = FastAPI(
        title="adaptext",
        version=__version__,
        description="Text classification, compatible with Hugging Face text-classification inference.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN: off unless asked for, so that an offline server has
        # no broken page; the schema itself is always at /openapi.json.
        docs_url="/docs" if options.docs else None,
        redoc_url="/redoc" if options.docs else None,
    )

    @app.exception_handler(StarletteHTTPException)  # also FastAPI's, and the router's own 404 / 405
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail
        if error.status_code == 400 and error.__cause__ is not None:  # FastAPI: "There was an error parsing the body"
            detail = _unreadable_body(error.__cause__)
        return JSONResponse({"error": detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(e, error.body) for e in error.errors()]
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    def observe(method: str, path: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "other"
        requests.labels(method, path, str(status)).inc()
        if status >= 400:
            errors.labels(path, str(status)).inc()
        latency.labels(path).observe(seconds)

    async def predict(name: str, body: PredictRequest, request: Request) -> Response:
        if name not in models:
            raise HTTPException(404, f"no model {name!r}; the models are {', '.join(models)}")
        texts = _request_texts(body.inputs, options)
        predictor = models[name]
        parameters = body.parameters or Parameters()
        function = parameters.function_to_apply or predictor.task.activation
        logits = await _unless_disconnected(batchers[name].logits(texts), request.receive)
        if logits is None:  # nobody is listening; the batcher has dropped the texts if they had not run yet
            return Response(status_code=499)
        k = len(predictor.labels)
        values = scores(logits[:, :k], function)
        top_k = min(parameters.top_k or k, k)
        answer = []
        detector = predictor.detector
        outside = detector.out_of_scope(logits[:, k]) if detector is not None else np.zeros(len(values), dtype=bool)
        shares = detector.share_below(logits[:, k]) if detector is not None else outside
        for row, out, share in zip(values, outside, shares, strict=True):
            order = np.argsort(-row, kind="stable")[:top_k]
            labels = [{"label": predictor.labels[i], "score": float(row[i])} for i in order]
            if out and detector is not None:  # out of scope: the detector's label comes first, with its score
                labels = [{"label": detector.label, "score": float(share)}, *labels][:top_k]
            answer.append(labels)
        # Plain JSON: building and validating a model object per label and text cost more than the forward pass.
        return Response(json.dumps(answer), media_type="application/json")

    answers: dict[str, Any] = {"response_model": list[list[LabelScore]]}  # documented; the answer is built as JSON

    # The key of protected routes is checked by `KeyCheck`, before the body is read: see the end of this function.
    @app.post("/predict", summary="Classify with the default model", **answers)
    async def predict_default(body: PredictRequest, request: Request) -> Response:
        return await predict(default, body, request)

    @app.post("/", summary="Classify with the default model (Hugging Face URL style)", **answers)
    async def predict_root(body: PredictRequest, request: Request) -> Response:
        return await predict(default, body, request)

    @app.post("/models/{name}/predict", summary="Classify with the named model", **answers)
    async def predict_named(name: str, body: PredictRequest, request: Request) -> Response:
        return await predict(name, body, request)

    async def run_on_model(name: str, work: Callable[[], Any], request: Request) -> Any:
        # In the model's own worker thread, between its batches: see explain_api's docstring.
        running = asyncio.get_running_loop().run_in_executor(batchers[name].executor, work)
        return await _unless_disconnected(running, request.receive)

    explain_routes = add_explain_routes(
        app, models, default, texts_of=lambda inputs: _request_texts(inputs, options), run_on_model=run_on_model
    )

    route_routes: set[Callable[..., Any]] = set()
    if router is not None:
        route_routes = add_route_routes(
            app,
            router[1],
            router[0],
            texts_of=lambda inputs: _request_texts(inputs, options),
            run_on_model=run_on_model,
        )

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.head("/health", summary="Liveness, without a body")
    async def health_head() -> Response:
        return Response(media_type="application/json")

    @app.get("/info", summary="Models, labels, version, backend")
    async def info() -> dict[str, Any]:
        return {
            "version": __version__,
            "default_model": default,
            "models": [
                {
                    "name": name,
                    "labels": p.labels,
                    "multi_label": p.multi_label,
                    "backend": "onnx" if p.info.backend == "onnx" else "pytorch",
                    "base_model": p.info.base_model,
                    "peft_method": p.info.peft_method or "none",
                    "max_length": p.max_length,
                }
                for name, p in models.items()
            ],
            "limits": {
                "max_texts": options.max_texts,
                "max_chars": options.max_chars,
                "max_body_bytes": options.max_body_bytes,
                "max_batch_size": options.max_batch_size,
                "max_wait_ms": options.max_wait_ms,
            },
        }

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    # Outermost last: Observe sees every answer; the key is checked before the body's time and size limits.
    app.add_middleware(BodyLimit, limit=options.max_body_bytes)
    app.add_middleware(BodyTimeout, seconds=options.request_timeout)
    if options.api_key is not None:
        protected: set[Callable[..., Any]] = {predict_default, predict_root, predict_named, info, metrics}
        protected |= explain_routes | route_routes
        app.add_middleware(KeyCheck, key=options.api_key.encode("utf-8"), routes=app.router.routes, protected=protected)
    app.add_middleware(Observe, record=observe)
    return app


def _request_texts(inputs: str | list[str], options: ServeOptions) -> list[str]:
    """The texts of a request's `inputs`, checked against `options`' limits (413) and for empty or invalid text
    (422)."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts:
        raise HTTPException(422, "inputs: give at least one text")
    if len(texts) > options.max_texts:
        raise HTTPException(413, f"inputs: {len(texts)} texts, at most {options.max_texts} per request")
    for i, text in enumerate(texts):
        if not text.strip():
            raise HTTPException(422, f"inputs[{i}]: empty text (only spaces or nothing); give some words")
        if len(text) > options.max_chars:
            raise HTTPException(413, f"inputs[{i}]: {len(text)} characters, at most {options.max_chars}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # JSON allows lone surrogates ("\ud800"); no text has them
            raise HTTPException(422, f"inputs[{i}]: not valid Unicode ({error.reason} at {error.start})") from None
    return texts


def _problem(error: Mapping[str, Any], body: Any) -> str:
    """One validation error in plain words, prefixed with where it is (`body`, `inputs`, `parameters.top_k`, ...)."""
    loc = [str(part) for part in error["loc"] if part != "body"]
    if error["type"] == "json_invalid":  # FastAPI puts the character offset in `loc`
        position = error["loc"][-1]
        reason = str(error.get("ctx", {}).get("error", "cannot be parsed"))
        if isinstance(body, str) and isinstance(position, int):
            line, column = body.count("\n", 0, position) + 1, position - body.rfind("\n", 0, position)
            reason += f" at line {line} column {column}"
        return f"body: not valid JSON ({reason})"
    if not loc and error["type"] == "missing":
        return 'body: missing; send a JSON object such as {"inputs": "some text"}'
    if not loc and isinstance(error.get("input"), bytes):
        return "body: not read as JSON; send it with Content-Type: application/json"
    if not loc and error["type"] in ("model_attributes_type", "dict_type", "model_type"):
        return 'body: must be a JSON object such as {"inputs": "some text"}'
    return f"{'.'.join(loc) or 'body'}: {error['msg']}"


def _unreadable_body(cause: BaseException) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"body: not valid UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "body: JSON nested too deeply"
    return f"body: could not be read as JSON ({type(cause).__name__})"


async def _unless_disconnected(work: Awaitable[T], receive: Receive) -> T | None:
    """The result of `work`, or None (with `work` cancelled) when the client disconnects first."""
    task: asyncio.Future[T] = asyncio.ensure_future(work)

    async def disconnected() -> None:
        # The body has been read: the next message is the disconnect (or comes once the answer is sent).
        while (await receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()  # cancels the request's future too, so the batcher drops it
    return task.result() if task in done else None


class Observe:
    """Records each request's method, route, status and latency; answers a JSON 500 to an unexpected error.

    Plain ASGI rather than `BaseHTTPMiddleware`, which would read the body in a task group of its own and turn the
    size limit's 413 into a 400.
    """

    def __init__(self, app: ASGIApp, record: Callable[[str, str, int, float], None]) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _json_error(send, 500, "internal error")
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.record(str(scope.get("method")), path, status, time.perf_counter() - start)


class KeyCheck:
    """Answers 401 to a request for a protected route without the API key, before anything reads its body: a caller
    without the key learns nothing from the body's checks (size, JSON, schema) and cannot make the server wait for
    a body.

    The route is the one the router will pick (the first full match); the key is compared as bytes, so a header with
    any bytes is a wrong key, never an error, and a key with non-ASCII characters works when sent in UTF-8.
    """

    def __init__(
        self, app: ASGIApp, key: bytes, routes: Sequence[BaseRoute], protected: Collection[Callable[..., Any]]
    ) -> None:
        self.app = app
        self.key = key
        self.routes = routes
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = next((r for r in self.routes if r.matches(scope)[0] is Match.FULL), None)
            if getattr(route, "endpoint", None) in self.protected and not self.has_key(scope):
                scope["route"] = route  # for the metrics' route label
                await _json_error(send, 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)

    def has_key(self, scope: Scope) -> bool:
        given = next((value for name, value in scope.get("headers") or [] if name.lower() == b"authorization"), b"")
        scheme, _, token = bytes(given).partition(b" ")
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self.key)


class BodyTimeout:
    """Answers 408 when a request body is not all in within `seconds` of the request's start (a slow or stalled
    client would otherwise hold the connection and the request for as long as it likes)."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:  # after the body: the disconnect, which may come at any time
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                # FastAPI turns this into the JSON 408 answer; the connection is closed after it.
                raise HTTPException(
                    408, f"request body not received within {self.seconds:g} s", headers={"connection": "close"}
                ) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


class BodyLimit:
    """Answers 413 to a request body over `limit` bytes, declared or streamed, before the app reads it all."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _json_error(send, 413, f"request body over {self.limit} bytes")
            return
        seen = 0

        async def limited_receive() -> Message:
            # A streamed body without a declared length: FastAPI turns this into the JSON 413 answer.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _json_error(send: Send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (`host`, `port`), not yet listening, as uvicorn would bind it; AdaptextError when the
    port is out of range, taken, or not ours to take."""
    if isinstance(port, bool) or not 1 <= port <= 65535:
        raise AdaptextError(f"port {port} is out of range: choose a port from 1 to 65535 (--port)")
    ipv6 = ":" in host
    address = f"[{host}]:{port}" if ipv6 else f"{host}:{port}"
    sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a closing old server is no obstacle
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise AdaptextError(
                f"{address} is already in use: stop what listens there or choose another --port"
            ) from None
        raise AdaptextError(f"cannot listen on {address}: {error.strerror or error}") from None
    return sock


def build_server(app: ASGIApp, options: ServeOptions) -> uvicorn.Server:
    """The uvicorn server for `app`: graceful shutdown, keep-alive and request-head timeouts (see `_head_timeout`)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        http=_head_timeout(options.request_timeout),
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=30,
        log_level="warning",
    )
    return uvicorn.Server(config)


def _head_timeout(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose next request head is not in within `seconds` of the
    connection or of the last answer. uvicorn arms its own keep-alive timer only after an answer and stops it at the
    first byte, so a connection that sends nothing, or a header line now and then, would be held for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.wait_for_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.wait_for_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
            super().connection_lost(exc)

        def wait_for_head(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
            self.head_timer = self.loop.call_later(seconds, self.head_overdue)

        def head_overdue(self) -> None:
            self.head_timer = None
            cycle = getattr(self, "cycle", None)
            waiting = cycle is None or cycle.response_complete  # no request under way: its head is late
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return Protocol


def run_server(
    specs: Sequence[str],
    host: str,
    port: int,
    options: ServeOptions,
    precision: Literal["fp32", "bf16"] = "fp32",
    route: RouteConfig | None = None,
) -> None:
    """Load the models and serve until interrupted; SIGINT/SIGTERM finish in-flight requests first.

    The address is taken before the models load, so a port in use is reported at once, and stays ours meanwhile.
    """
    with bind_socket(host, port) as sock:
        models = load_models(specs, precision)
        router = attach_router(models, route) if route is not None else None
        app = create_app(models, options, router)
        if host not in ("127.0.0.1", "localhost", "::1") and options.api_key is None:
            logger.warning("serving on %s without an API key: anyone who can reach this port can use it", host)
        docs = "docs at /docs, loading their assets from a CDN" if options.docs else "OpenAPI schema at /openapi.json"
        logger.info("serving %s on http://%s:%d (%s)", ", ".join(models), host, port, docs)
        server = build_server(app, options)
        freeze_loaded_objects()  # the models stay loaded until the server stops
        server.run(sockets=[sock])


def attach_router(models: dict[str, Predictor], route: RouteConfig) -> tuple[str, Router]:
    """The router of config `route`, its model loaded and added to `models` as `route` (a name a served model may
    not take then)."""
    if "route" in models:
        raise AdaptextError("with --route, no served model may be named 'route'; name it: NAME=DIR")
    router = load_router(route)
    models["route"] = router.predictor
    return "route", router
