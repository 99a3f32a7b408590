"""HTTP service: Hugging Face-compatible text classification with dynamic micro-batching.

`POST /predict` (and `POST /`) takes `{"inputs": "text" | ["t1", ...], "parameters": {"top_k": k,
"function_to_apply": "softmax" | "sigmoid" | "none"}}` and answers, per input, a list of `{"label", "score"}` sorted
by score, as Hugging Face inference does, so `huggingface_hub.InferenceClient(model=URL).text_classification(...)`
works unchanged. Concurrent requests for one model are grouped into batches (up to `max_batch_size` texts, waiting
at most `max_wait_ms` for more); the model runs in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adaptext import __version__, adapters
from adaptext.config import AdaptextError
from adaptext.predict import MultiPredictor, Predictor, find_model_dir, read_metadata, scores

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")


@dataclass(frozen=True)
class ServeOptions:
    """Batching and request limits of the service."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_texts: int = 64
    max_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    api_key: str | None = None


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
        texts = [text for request_texts, _ in batch for text in request_texts]
        self.batch_sizes.observe(len(texts))
        try:
            logits = await loop.run_in_executor(self.executor, self.predictor.predict_logits, texts)
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
        if adapters.is_adapter_folder(model_dir):
            base = adapters.base_model_name(model_dir, read_metadata(model_dir))
            groups.setdefault(base, {})[name] = path
        else:
            predictors[name] = Predictor.from_dir(path)
    for group in groups.values():
        predictors |= MultiPredictor.from_dirs(group).predictors
    if precision == "bf16":
        for predictor in predictors.values():
            if predictor.metadata.get("backend") != "onnx":
                predictor.autocast_dtype = torch.bfloat16
    return {name: predictors[name] for name in named}


def create_app(models: Mapping[str, Predictor], options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI application serving `models` (the first one also at `/predict` and `/`)."""
    if not models:
        raise AdaptextError("serve needs at least one model")
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
    )

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), options.api_key):
            raise HTTPException(
                401,
                "missing or wrong API key: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(StarletteHTTPException)  # also FastAPI's, and the router's own 404 / 405
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in error.errors()
        ]
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    def observe(method: str, path: str, status: int, seconds: float) -> None:
        requests.labels(method, path, str(status)).inc()
        if status >= 400:
            errors.labels(path, str(status)).inc()
        latency.labels(path).observe(seconds)

    async def predict(name: str, body: PredictRequest) -> Response:
        if name not in models:
            raise HTTPException(404, f"no model {name!r}; the models are {', '.join(models)}")
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        if not texts:
            raise HTTPException(422, "inputs: give at least one text")
        if len(texts) > options.max_texts:
            raise HTTPException(413, f"inputs: {len(texts)} texts, at most {options.max_texts} per request")
        for i, text in enumerate(texts):
            if len(text) > options.max_chars:
                raise HTTPException(413, f"inputs[{i}]: {len(text)} characters, at most {options.max_chars}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:  # JSON allows lone surrogates ("\ud800"); no text has them
                raise HTTPException(422, f"inputs[{i}]: not valid Unicode ({error.reason} at {error.start})") from None
        predictor = models[name]
        parameters = body.parameters or Parameters()
        function = parameters.function_to_apply or ("sigmoid" if predictor.multi_label else "softmax")
        values = scores(await batchers[name].logits(texts), function)
        top_k = min(parameters.top_k or len(predictor.labels), len(predictor.labels))
        answer = []
        for row in values:
            order = np.argsort(-row, kind="stable")[:top_k]
            answer.append([{"label": predictor.labels[i], "score": float(row[i])} for i in order])
        # Plain JSON: building and validating a model object per label and text cost more than the forward pass.
        return Response(json.dumps(answer), media_type="application/json")

    protected = [Depends(check_key)]

    answers: dict[str, Any] = {"response_model": list[list[LabelScore]]}  # documented; the answer is built as JSON

    @app.post("/predict", dependencies=protected, summary="Classify with the default model", **answers)
    async def predict_default(body: PredictRequest) -> Response:
        return await predict(default, body)

    @app.post(
        "/", dependencies=protected, summary="Classify with the default model (Hugging Face URL style)", **answers
    )
    async def predict_root(body: PredictRequest) -> Response:
        return await predict(default, body)

    @app.post("/models/{name}/predict", dependencies=protected, summary="Classify with the named model", **answers)
    async def predict_named(name: str, body: PredictRequest) -> Response:
        return await predict(name, body)

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info", dependencies=protected, summary="Models, labels, version, backend")
    async def info() -> dict[str, Any]:
        return {
            "version": __version__,
            "default_model": default,
            "models": [
                {
                    "name": name,
                    "labels": p.labels,
                    "multi_label": p.multi_label,
                    "backend": "onnx" if p.metadata.get("backend") == "onnx" else "pytorch",
                    "base_model": p.metadata.get("base_model"),
                    "peft_method": p.metadata.get("peft_method", "none"),
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

    @app.get("/metrics", dependencies=protected, summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    app.add_middleware(BodyLimit, limit=options.max_body_bytes)
    app.add_middleware(Observe, record=observe)  # outermost: it sees every answer, the size limit's 413 too
    return app


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


async def _json_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def run_server(
    specs: Sequence[str], host: str, port: int, options: ServeOptions, precision: Literal["fp32", "bf16"] = "fp32"
) -> None:
    """Load the models and serve until interrupted; SIGINT/SIGTERM finish in-flight requests first."""
    import uvicorn

    models = load_models(specs, precision)
    app = create_app(models, options)
    if host not in ("127.0.0.1", "localhost", "::1") and options.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach this port can use it", host)
    logger.info("serving %s on http://%s:%d (docs at /docs)", ", ".join(models), host, port)
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=30, log_level="warning")
