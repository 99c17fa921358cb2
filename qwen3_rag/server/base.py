"""What every router shares: reading a body, checking the key, answering in the API's shape."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, Union

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from .errors import ApiError, ApiStyle, SafeJSONResponse
from .errors import validation_error as _validation_error
from .schemas import MessageError, OpenAIError, TEIError
from .service import ModelService

logger = logging.getLogger("qwen3_rag.server")

B = TypeVar("B", bound=BaseModel)


def service(request: Request) -> ModelService:
    """The app's model service."""
    svc: ModelService = request.app.state.service
    return svc


async def answer(
    request: Request,
    endpoint: str,
    style: ApiStyle,
    handler: Callable[[], Awaitable[Any]],
    *,
    auth: bool = True,
) -> Response:
    """Run ``handler`` and answer with its result, or with its error in ``style``'s shape.

    Every answer is counted in the metrics under ``endpoint``; an unexpected exception is
    logged with its traceback and answered 500 (never a hang, never the traceback).
    """
    svc = service(request)
    started = time.monotonic()
    try:
        if auth:
            check_key(request, svc.options.api_key)
        result = await handler()
        response = result if isinstance(result, Response) else SafeJSONResponse(result)
    except ApiError as e:
        response = e.response(e.style or style)
    except Exception as e:
        logger.exception("%s failed", endpoint)
        response = ApiError(500, f"internal error: {type(e).__name__}").response(style)
    svc.metrics.on_answer(endpoint, response.status_code, time.monotonic() - started)
    return response


def check_key(request: Request, key: str | None) -> None:
    """401 unless the request carries ``Authorization: Bearer <key>`` (when a key is set)."""
    if key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    # hmac.compare_digest takes the same time wherever the strings differ.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(
            401,
            "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object.

    413 past ``--max-body-mb``, 408 past ``--read-timeout``, 400 if not UTF-8 JSON (or nested
    too deep to parse), 422 if not an object.
    """
    options = service(request).options
    limit = options.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body has {length} bytes, more than {limit}")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        raw = await asyncio.wait_for(read(), options.read_timeout)
    except asyncio.TimeoutError as e:
        raise ApiError(
            408,
            f"the request body did not arrive within {options.read_timeout:g} s (--read-timeout)",
        ) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(
            400, f"the request body is not UTF-8 (byte {e.start} is {raw[e.start]:#04x})"
        ) from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(
            400, f"the request body is not JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from e
    except RecursionError as e:  # the decoder's own depth guard: arrays or objects ~1000 deep
        raise ApiError(400, "the request body is nested too deeply to read") from e
    if not isinstance(data, dict):
        raise ApiError(422, f"the request body must be a JSON object, got {_kind(data)}")
    return data


def validate(data: dict[str, Any], model: type[B]) -> B:
    """``data`` as ``model``, or 422 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _validation_error(e) from e
    except RecursionError as e:
        raise ApiError(400, "the request body is nested too deeply") from e


async def parse(request: Request, model: type[B]) -> B:
    """Read and validate the body as ``model``."""
    return validate(await read_json(request), model)


def positive(value: int, name: str) -> int:
    """``value``, or 422 if it is below 1."""
    if value < 1:
        raise ApiError(422, f"{name}: must be at least 1, got {value}", param=name)
    return value


def _kind(value: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}
    return names.get(type(value), type(value).__name__)


# -- the OpenAPI document ------------------------------------------------------------------------
#: Request models whose schemas go into ``components`` (see :func:`body`).
REQUEST_MODELS: list[type[BaseModel]] = []

_ERROR_MODELS: dict[str, type[BaseModel]] = {
    "openai": OpenAIError,
    "cohere": MessageError,
    "ours": MessageError,
    "tei": TEIError,
}
_STATUSES = {
    400: "The body is not UTF-8 JSON",
    401: "Missing or wrong API key",
    404: "The model or collection is not served",
    408: "The body did not arrive in time",
    413: "The body or an input is too large",
    422: "A field is wrong; the message names it",
    499: "The client closed the connection",
    500: "A bug or a failed forward",
    503: "Loading, queue full (Retry-After) or shutting down",
    504: "No result within --timeout",
}


def body(*models: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring the JSON body of a route that reads it itself.

    The routes parse their bodies with :func:`parse` (for the limits and each API's error
    shape); this puts the same models in the document.
    """
    for model in models:
        if model not in REQUEST_MODELS:
            REQUEST_MODELS.append(model)
    refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def errors(style: ApiStyle, *more: ApiStyle) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, for ``responses=``: ``style``'s shape, or any of ``more``."""
    models = tuple(dict.fromkeys(_ERROR_MODELS[s] for s in (style, *more)))
    model: Any = models[0] if len(models) == 1 else Union[models]  # noqa: UP007
    return {status: {"model": model, "description": text} for status, text in _STATUSES.items()}
