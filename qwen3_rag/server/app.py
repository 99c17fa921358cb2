"""The FastAPI app: the routers of each API over one model service, and the plumbing around them.

One router module per API family (:mod:`.openai_api`, :mod:`.cohere_api`, :mod:`.tei_api`,
:mod:`.search_api`, :mod:`.ops_api`) parses, calls the :class:`~.service.ModelService` and
shapes the answer; this module wires them, adds request ids, the access log and CORS, answers
unknown routes in the called API's error shape, and completes the OpenAPI document.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import cohere_api, openai_api, ops_api, search_api, tei_api
from .base import REQUEST_MODELS
from .errors import ApiError, ApiStyle
from .service import Models, ModelService, ServerOptions

logger = logging.getLogger(__name__)
#: One line per request (``--access-log``): client, method, path, status, time, request id.
access_logger = logging.getLogger("qwen3_rag.server.access")

REQUEST_ID = "x-request-id"
_GOOD_ID = re.compile(r"[\x21-\x7e]{1,128}")

#: The error shape of each known path; others go by prefix (see :func:`style_of`).
_STYLES: dict[str, ApiStyle] = {
    "/v1/embeddings": "openai",
    "/embeddings": "openai",
    "/v1/models": "openai",
    "/v1/embed": "cohere",
    "/v1/rerank": "cohere",
    "/embed": "tei",
    "/": "tei",
    "/info": "tei",
    "/tokenize": "tei",
    "/rerank": "tei",
    "/v1/search": "ours",
}


def style_of(path: str) -> ApiStyle:
    """The error shape a client of ``path`` reads: OpenAI under /v1, Cohere under /v2, else TEI."""
    if path in _STYLES:
        return _STYLES[path]
    if path.startswith("/v2/"):
        return "cohere"
    if path.startswith("/v1/"):
        return "openai"
    return "tei"


def create_app(
    models: Models | Callable[[], Models],
    options: ServerOptions | None = None,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The server's ASGI app.

    Args:
        models: The loaded models, or a function that loads them: it runs in a thread when the
            app starts, and ``/health`` answers 503 until it returns.
        options: Limits, names, CORS origins and the API key.
        on_load_error: Called (from the loading thread) if ``models()`` raises; the CLI stops
            the server there.

    Returns:
        A FastAPI app; run it with uvicorn. Its shutdown finishes the work in flight.
    """
    options = options or ServerOptions()
    svc = ModelService(options)

    def failed(error: BaseException) -> None:
        logger.error("loading the models failed: %s", error)
        if on_load_error is not None:
            on_load_error(error)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if callable(models):
            svc.load_in_background(models, failed)
        else:
            svc.start(models)
        yield
        # uvicorn has answered every request by now (SIGTERM stops new ones and waits for
        # those in flight); the workers finish anything left, then stop.
        for worker in svc.workers():
            await run_in_threadpool(worker.close)

    app = FastAPI(
        title="qwen3-rag",
        summary="Qwen3-Embedding and Qwen3-Reranker on the OpenAI, Cohere, Jina and TEI APIs",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = svc
    for module in (openai_api, cohere_api, tei_api, search_api, ops_api):
        app.include_router(module.router)

    @app.exception_handler(HTTPException)
    async def unknown_route(request: Request, exc: HTTPException) -> Response:
        # Starlette's 404 (no such path) and 405 (no such method), in the caller's shape.
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = f"no endpoint {request.method} {request.url.path}"
        error = ApiError(exc.status_code, message, headers=dict(exc.headers or {}))
        return error.response(style_of(request.url.path))

    if options.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
        )
    # Outermost: every answer, CORS preflights included, carries the request id.
    app.add_middleware(RequestIdMiddleware)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            # The request bodies the routes read themselves (see base.body).
            _, defs = models_json_schema(
                [(m, "validation") for m in REQUEST_MODELS],
                ref_template="#/components/schemas/{model}",
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class RequestIdMiddleware:
    """Gives every request an ``x-request-id`` and writes the access log.

    The id is the client's (printable ASCII, at most 128 characters) or a new one; it is echoed
    on the answer and written in the access log with the method, path and status.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        text = given.decode("latin-1")
        request_id = text if _GOOD_ID.fullmatch(text) else uuid.uuid4().hex
        started = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_logger.info(
                    '%s "%s %s" %d %.1f ms request_id=%s',
                    f"{client[0]}:{client[1]}" if client else "-",
                    scope["method"],
                    scope["path"],
                    status,
                    1000 * (time.monotonic() - started),
                    request_id,
                )


def _version() -> str:
    import qwen3_rag

    return qwen3_rag.__version__


__all__ = ["Models", "ServerOptions", "create_app"]
