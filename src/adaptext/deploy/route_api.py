"""`POST /route` in `adaptext serve --route route.yaml`: the intent router over HTTP.

The request is `{"inputs": "text" | ["t1", ...]}`; the answer, per text, is the router's decision: `intent`,
`confidence`, `action` (answer | faq | handoff), `answer`, `score`, `reason`, `faq_question`, `ood_score` (see
`adaptext.apps.router`). The router runs in its model's worker thread, between that model's batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from adaptext.apps.router.route import Router
from adaptext.deploy.explain_api import RunOnModel


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] = Field(description="One text or a list of texts.")


def add_route_routes(
    app: FastAPI,
    router: Router,
    model_name: str,
    *,
    texts_of: Callable[[str | list[str]], list[str]],
    run_on_model: RunOnModel,
) -> set[Callable[..., Any]]:
    """Add `POST /route` for `router`, whose model is served as `model_name`; returns the endpoint (for the API key
    check). `texts_of` checks the request's texts as the predict routes do."""

    @app.post("/route", summary="Route texts: answer, answer from the FAQ, or hand over")
    async def route(body: RouteRequest, request: Request) -> Response:
        texts = texts_of(body.inputs)
        answer = await run_on_model(model_name, lambda: [r.to_dict() for r in router.route(texts)], request)
        if answer is None:  # the caller has gone
            return Response(status_code=499)
        return JSONResponse(answer)

    return {route}
