"""Cohere's API (v1, v2) and Jina's rerank: ``/v{1,2}/embed``, ``/v{1,2}/rerank``."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from .base import answer, body, errors, parse, positive, read_json, service
from .encodings import quantize
from .errors import ApiError
from .rerank import rerank_documents, rerank_either
from .schemas import (
    CohereEmbedByTypeResponse,
    CohereEmbedFloatsResponse,
    CohereEmbedRequest,
    CohereRerankRequest,
    CohereRerankResponse,
    TEIRank,
    TEIRerankRequest,
)

router = APIRouter(tags=["Cohere, Jina"])


async def _embed(request: Request, endpoint: str) -> Response:
    async def run() -> Any:
        req = await parse(request, CohereEmbedRequest)
        for name in ("images", "inputs"):
            if getattr(req, name) is not None:
                raise ApiError(422, f"{name}: only texts are served", param=name)
        if req.texts is None:
            raise ApiError(422, "texts: field required", param="texts")
        if req.truncate == "START":
            raise ApiError(
                422,
                "truncate: 'START' is not served; texts are cut at their end ('END')",
                param="truncate",
            )
        svc = service(request)
        emb = svc.embedder()
        as_query = req.input_type == "search_query"
        if req.instruction is not None and not as_query:
            raise ApiError(
                422, "instruction: applies to input_type='search_query' only", param="instruction"
            )
        task = req.instruction if req.instruction is not None else emb.instruction
        texts = req.texts
        if req.max_tokens is not None:
            texts = svc.cut_texts(emb, texts, positive(req.max_tokens, "max_tokens"))

        def too_long(count: int) -> ApiError:
            return ApiError(
                422,
                f"texts: {count} of {len(texts)} texts are longer than max_length="
                f"{emb.max_length} tokens; send truncate='END' to cut them",
                param="texts",
            )

        out = await svc.embed(
            texts,
            request.is_disconnected,
            task=task if as_query else None,
            dimensions=req.output_dimension,
            field="texts",
            dimensions_field="output_dimension",
            refuse_cut=too_long if req.truncate == "NONE" else None,
        )
        meta = {
            "api_version": {"version": "2" if endpoint.startswith("/v2") else "1"},
            "billed_units": {"input_tokens": out.tokens},
        }
        if endpoint.startswith("/v1") and req.embedding_types is None:
            return {
                "response_type": "embeddings_floats",
                "id": str(uuid.uuid4()),
                "embeddings": out.vectors.tolist(),
                "texts": req.texts,
                "meta": meta,
            }
        kinds = list(dict.fromkeys(req.embedding_types or ["float"]))
        return {
            "response_type": "embeddings_by_type",
            "id": str(uuid.uuid4()),
            "embeddings": {kind: quantize(out.vectors, kind) for kind in kinds},
            "texts": req.texts,
            "meta": meta,
        }

    return await answer(request, endpoint, "cohere", run)


_EMBED_DOC = {
    "response_model": CohereEmbedByTypeResponse | CohereEmbedFloatsResponse,
    "responses": errors("cohere"),
    "openapi_extra": body(CohereEmbedRequest),
}


@router.post("/v2/embed", **_EMBED_DOC)  # type: ignore[arg-type]
async def embed_v2(request: Request) -> Response:
    """Cohere embed v2: ``input_type="search_query"`` gets the query instruction.

    ``embedding_types`` may ask for ``float``, ``int8``, ``uint8``, ``binary`` and ``ubinary``.
    """
    return await _embed(request, "/v2/embed")


@router.post("/v1/embed", **_EMBED_DOC)  # type: ignore[arg-type]
async def embed_v1(request: Request) -> Response:
    """Cohere embed v1 (the same, with v1's response shape when no types are asked)."""
    return await _embed(request, "/v1/embed")


@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    responses=errors("cohere"),
    openapi_extra=body(CohereRerankRequest),
)
async def rerank_v2(request: Request) -> Response:
    """Cohere rerank v2 (also Jina's): results best first, ``relevance_score`` = P(yes)."""

    async def run() -> Any:
        return await rerank_documents(request, await read_json(request), "/v2/rerank")

    return await answer(request, "/v2/rerank", "cohere", run)


@router.post(
    "/v1/rerank",
    response_model=CohereRerankResponse | list[TEIRank],
    responses=errors("cohere", "tei"),
    openapi_extra=body(CohereRerankRequest, TEIRerankRequest),
)
async def rerank_v1(request: Request) -> Response:
    """Cohere v1, Jina and vLLM rerank (``documents``, strings or ``{"text"}``).

    A TEI body (``texts``) is answered as TEI does.
    """

    async def run() -> Any:
        return await rerank_either(request, "/v1/rerank")

    return await answer(request, "/v1/rerank", "cohere", run)
