"""Ours: ``/v1/search`` over the served Chroma collection, and the search page at ``/``."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response

from qwen3_rag.core.reranker import ranked

from .base import answer, body, errors, parse, service
from .errors import ApiError, SafeJSONResponse
from .schemas import SearchRequest, SearchResponse

router = APIRouter(tags=["Search"])

_STATIC = files("qwen3_rag.server").joinpath("static")
_TYPES = {"app.js": "text/javascript", "style.css": "text/css"}


@router.post(
    "/v1/search",
    response_model=SearchResponse,
    responses=errors("ours"),
    openapi_extra=body(SearchRequest),
)
async def search(request: Request) -> Response:
    """Vector search over the collection, reranked: the best passages with their sources."""

    async def run() -> Any:
        req = await parse(request, SearchRequest)
        svc = service(request)
        collection = svc.collection()
        if not req.query.strip():
            raise ApiError(422, "query: must not be empty", param="query")
        limit = svc.options.max_inputs
        for name in ("k", "top_n"):
            value = getattr(req, name)
            if not 1 <= value <= limit:
                raise ApiError(422, f"{name}: must be 1 to {limit}, got {value}", name)
        emb = svc.embedder()
        query = await svc.embed(
            [req.query],
            request.is_disconnected,
            task=emb.instruction,
            dimensions=None,
            field="query",
        )
        count = await run_in_threadpool(collection.count)
        if count == 0:
            return {"query": req.query, "results": []}
        hits = await _query(collection, query.vectors[0].tolist(), min(req.k, count), req.where)
        documents = list(hits["documents"][0])
        if not documents:
            return {"query": req.query, "results": []}
        metadatas = [m or {} for m in hits["metadatas"][0]]
        distances = hits["distances"][0]
        scored = await svc.score(
            req.query,
            documents,
            request.is_disconnected,
            instruction=req.instruction,
            field="query",
        )
        return {
            "query": req.query,
            "results": [
                {
                    "rank": rank,
                    "score": r.score,
                    "id": hits["ids"][0][r.index],
                    "source": metadatas[r.index].get("source"),
                    "text": r.document,
                    "vector_distance": float(distances[r.index]),
                    "metadata": metadatas[r.index],
                }
                for rank, r in enumerate(ranked(scored.scores, documents, req.top_n), start=1)
            ],
        }

    return await answer(request, "/v1/search", "ours", run)


async def _query(collection: Any, vector: list[float], n: int, where: dict[str, Any] | None) -> Any:
    """Chroma's nearest chunks; a filter Chroma refuses is the caller's 422, in its words."""
    from chromadb.errors import InvalidArgumentError

    try:
        return await run_in_threadpool(
            collection.query,
            query_embeddings=[vector],
            n_results=n,
            where=where,
            include=["documents", "metadatas", "distances"],
        )
    except (ValueError, TypeError, InvalidArgumentError) as e:
        raise ApiError(422, f"where: {e}", param="where") from e


@router.get("/", include_in_schema=False)
async def page(request: Request) -> Response:
    """The search page (when a collection is served)."""
    models = service(request).models
    if models is not None and models.collection is None:
        return SafeJSONResponse(
            {"message": "no collection is served; the API is under /v1, /v2, /embed and /rerank"},
            status_code=404,
        )
    return HTMLResponse(_STATIC.joinpath("index.html").read_text(encoding="utf-8"))


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    """The page's script and style sheet."""
    if name not in _TYPES:
        return SafeJSONResponse({"message": "not found"}, status_code=404)
    return Response(_STATIC.joinpath(name).read_text(encoding="utf-8"), media_type=_TYPES[name])
