"""Operations: ``/health`` (open) and ``/metrics`` (Prometheus, open)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from .base import service
from .errors import SafeJSONResponse
from .schemas import Health

router = APIRouter(tags=["Operations"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> Response:
    """200 once the models are loaded; 503 while loading or after a failed load."""
    svc = service(request)
    if svc.load_error is not None:
        return SafeJSONResponse({"status": "failed", "error": str(svc.load_error)}, status_code=503)
    if svc.models is None:
        return SafeJSONResponse({"status": "loading"}, status_code=503)
    kinds = svc.served_kinds()
    return SafeJSONResponse(
        {
            "status": "ok",
            "embedding_model": svc.model_name("embedding") if "embedding" in kinds else None,
            "reranker_model": svc.model_name("reranker") if "reranker" in kinds else None,
            "collection": svc.models.collection_name,
        }
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Requests, errors, tokens, batch sizes, queue depth and latency, Prometheus text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(
        generate_latest(service(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
