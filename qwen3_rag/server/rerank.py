"""Rerank bodies of every peer, on every rerank path.

TEI posts ``{query, texts}`` and reads a list; Cohere, Jina, vLLM and Infinity post
``{query, documents}`` and read ``{results: [...]}``. ``/rerank`` and ``/v1/rerank`` take either
and answer in the shape the body implies (errors too); ``/v2/rerank`` is Cohere's alone. vLLM
and Infinity differ only in a returned document (``{"text"}`` or a string) on ``/rerank``:
``ServerOptions.rerank_documents`` picks.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request

from qwen3_rag.core.reranker import ranked

from .base import positive, read_json, service, validate
from .errors import ApiError, ApiStyle
from .schemas import CohereRerankRequest, TEIRerankRequest


async def rerank_either(request: Request, endpoint: str) -> Any:
    """Dispatch on the body: ``texts`` is TEI's, ``documents`` Cohere's (and its followers')."""
    data = await read_json(request)
    style: ApiStyle = "tei" if "texts" in data else "cohere"
    try:
        if "texts" in data and "documents" in data:
            raise ApiError(
                422,
                "give texts (TEI's body) or documents (Cohere's, Jina's, vLLM's), not both",
                param="texts",
            )
        if style == "tei":
            return await rerank_texts(request, data)
        return await rerank_documents(request, data, endpoint)
    except ApiError as e:
        e.style = style
        raise


async def rerank_documents(request: Request, data: dict[str, Any], endpoint: str) -> Any:
    """Cohere v1/v2, Jina, vLLM, Infinity: ``results`` best first, ``relevance_score`` P(yes)."""
    req = validate(data, CohereRerankRequest)
    svc = service(request)
    rr = svc.reranker()
    documents = [d if isinstance(d, str) else d.text for d in req.documents]
    if req.top_n is not None:
        positive(req.top_n, "top_n")
    if req.max_tokens_per_doc is not None:
        limit = positive(req.max_tokens_per_doc, "max_tokens_per_doc")
        documents = svc.cut_texts(rr, documents, limit)
    out = await svc.score(
        req.query,
        documents,
        request.is_disconnected,
        instruction=req.instruction,
        field="documents",
    )
    # Infinity answers documents as strings; everyone else (and /v1, /v2) as {"text"}.
    as_string = endpoint == "/rerank" and svc.options.rerank_documents == "string"
    results: list[dict[str, Any]] = []
    for r in ranked(out.scores, documents, req.top_n):
        item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
        if req.return_documents:
            item["document"] = r.document if as_string else {"text": r.document}
        results.append(item)
    return {
        "id": str(uuid.uuid4()),
        "results": results,
        "meta": {
            "api_version": {"version": "2" if endpoint.startswith("/v2") else "1"},
            "billed_units": {"search_units": 1},
        },
        # Jina's and vLLM's fields, for their clients.
        "model": svc.model_name("reranker"),
        "usage": {"total_tokens": out.tokens},
    }


async def rerank_texts(request: Request, data: dict[str, Any]) -> Any:
    """TEI: ``[{index, score, text?}]`` best first; ``raw_scores`` gives the log-odds."""
    req = validate(data, TEIRerankRequest)
    if req.truncation_direction.lower() != "right":
        raise ApiError(
            422,
            "truncation_direction: only 'Right' is served (the end of the document is cut)",
            param="truncation_direction",
        )

    def too_long(count: int) -> ApiError:
        return ApiError(
            413,
            f"texts: {count} of {len(req.texts)} pairs are longer than max_length; "
            "send truncate=true to cut them",
            param="texts",
        )

    out = await service(request).score(
        req.query,
        req.texts,
        request.is_disconnected,
        instruction=req.instruction,
        field="texts",
        refuse_cut=None if req.truncate else too_long,
    )
    results = []
    for r in ranked(out.scores, req.texts):
        item: dict[str, Any] = {
            "index": r.index,
            "score": out.log_odds[r.index] if req.raw_scores else r.score,
        }
        if req.return_text:
            item["text"] = r.document
        results.append(item)
    return results
