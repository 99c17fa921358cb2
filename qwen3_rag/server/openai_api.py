"""OpenAI's API: ``/v1/embeddings`` (also Infinity's ``/embeddings``) and ``/v1/models``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from .base import answer, body, errors, parse, service
from .encodings import to_base64
from .errors import ApiError
from .schemas import OpenAIEmbeddingRequest, OpenAIEmbeddingResponse, OpenAIModelList

router = APIRouter(tags=["OpenAI"])


async def _embeddings(request: Request, endpoint: str) -> Response:
    async def run() -> Any:
        req = await parse(request, OpenAIEmbeddingRequest)
        texts = _texts(req.input)
        if req.input_type == "document" and req.instruction is not None:
            raise ApiError(
                422,
                "instruction: applies to queries only; drop it or set input_type='query'",
                param="instruction",
            )
        svc = service(request)
        as_query = req.input_type == "query" or req.instruction is not None
        task = req.instruction if req.instruction is not None else svc.embedder().instruction
        out = await svc.embed(
            texts,
            request.is_disconnected,
            task=task if as_query else None,
            dimensions=req.dimensions,
            field="input",
        )
        base64 = req.encoding_format == "base64"
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": to_base64(v) if base64 else v.tolist(),
                }
                for i, v in enumerate(out.vectors)
            ],
            "model": svc.model_name("embedding"),
            "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
        }

    return await answer(request, endpoint, "openai", run)


@router.post(
    "/v1/embeddings",
    response_model=OpenAIEmbeddingResponse,
    responses=errors("openai"),
    openapi_extra=body(OpenAIEmbeddingRequest),
)
async def embeddings(request: Request) -> Response:
    r"""Embeddings: documents, unless ``input_type="query"`` or an ``instruction`` is given.

    Stock clients send queries as plain text, which is embedded as a document: format it as
    ``Instruct: {task}\nQuery:{query}`` or set ``input_type``.
    """
    return await _embeddings(request, "/v1/embeddings")


@router.post(
    "/embeddings",
    response_model=OpenAIEmbeddingResponse,
    responses=errors("openai"),
    openapi_extra=body(OpenAIEmbeddingRequest),
)
async def infinity_embeddings(request: Request) -> Response:
    """Infinity's path for ``/v1/embeddings`` (LiteLLM's ``infinity/`` provider posts here)."""
    return await _embeddings(request, "/embeddings")


@router.get("/v1/models", response_model=OpenAIModelList, responses=errors("openai"))
async def models(request: Request) -> Response:
    """The served models, under their served names (``--served-model-name``)."""

    async def run() -> Any:
        svc = service(request)
        svc.ready()
        return {
            "object": "list",
            "data": [
                {
                    "id": svc.model_name(kind),
                    "object": "model",
                    "created": 0,
                    "owned_by": "qwen3-rag",
                }
                for kind in svc.served_kinds()
            ],
        }

    return await answer(request, "/v1/models", "openai", run)


def _texts(value: str | list[Any]) -> list[str]:
    """OpenAI's ``input`` as a list of texts; token arrays are refused, naming the item."""
    if isinstance(value, str):
        return [value]
    for i, item in enumerate(value):
        if isinstance(item, (int, list)):
            raise ApiError(
                422,
                f"input[{i}]: token arrays are not accepted, send text (they would be another "
                "tokenizer's ids; with LangChain's OpenAIEmbeddings set "
                "check_embedding_ctx_length=False)",
                param=f"input[{i}]",
            )
        if not isinstance(item, str):
            raise ApiError(
                422,
                f"input[{i}]: must be a string, got {type(item).__name__}",
                param=f"input[{i}]",
            )
    return list(value)
