"""What every adapter shares: building (or reusing) the core objects from adapter options."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from qwen3_rag.core import Qwen3Embedder, Qwen3Reranker

try:  # pydantic comes with every supported framework (LangChain, LlamaIndex, Chroma)
    from pydantic import BaseModel, ConfigDict
except ImportError as e:  # pragma: no cover
    raise ImportError('pydantic is missing; install an extra: pip install "qwen3-rag[all]"') from e

#: Core options an adapter forwards when it builds the model. The instruction is not among them:
#: adapters pass it with every call, so it also works with a model built elsewhere.
EMBEDDER_OPTIONS = (
    "device",
    "dtype",
    "max_length",
    "dimensions",
    "revision",
    "cache_dir",
    "local_files_only",
    "attn_implementation",
    "batch_tokens",
    "max_batch_size",
    "max_chars",
    "show_progress",
    "compile",
)
RERANKER_OPTIONS = (*(o for o in EMBEDDER_OPTIONS if o != "dimensions"), "share_prefix")


def missing_extra(framework: str, extra: str) -> ImportError:
    """The ImportError raised when an adapter's framework is not installed."""
    return ImportError(
        f'{framework} is not installed; install it with: pip install "qwen3-rag[{extra}]"'
    )


def _pick(options: Mapping[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k in allowed and v is not None}


def build_embedder(
    model: str | os.PathLike[str] | Qwen3Embedder, options: Mapping[str, Any]
) -> Qwen3Embedder:
    """Return ``model`` itself if it is a built embedder, else build one from ``options``.

    ``options`` holds only the options the caller set explicitly; setting any together with a
    built embedder is an error, since they could not take effect.
    """
    if isinstance(model, Qwen3Embedder):
        _refuse_options(options, "Qwen3Embedder")
        return model
    if isinstance(model, Qwen3Reranker):
        raise TypeError("model is a Qwen3Reranker; an embedding adapter needs a Qwen3Embedder")
    return Qwen3Embedder(model, **_pick(options, EMBEDDER_OPTIONS))


def build_reranker(
    model: str | os.PathLike[str] | Qwen3Reranker, options: Mapping[str, Any]
) -> Qwen3Reranker:
    """Return ``model`` itself if it is a built reranker, else build one from ``options``."""
    if isinstance(model, Qwen3Reranker):
        _refuse_options(options, "Qwen3Reranker")
        return model
    if isinstance(model, Qwen3Embedder):
        raise TypeError("model is a Qwen3Embedder; a reranking adapter needs a Qwen3Reranker")
    return Qwen3Reranker(model, **_pick(options, RERANKER_OPTIONS))


def _refuse_options(options: Mapping[str, Any], kind: str) -> None:
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise ValueError(
            f"model is an already-built {kind}, so {', '.join(given)} cannot apply; "
            f"pass them to the {kind} instead"
        )


def filter_by_threshold(
    ranked: list[tuple[int, float]], top_n: int | None, score_threshold: float | None
) -> list[tuple[int, float]]:
    """Keep results at or above ``score_threshold``, then the first ``top_n``."""
    if score_threshold is not None:
        ranked = [(i, s) for i, s in ranked if s >= score_threshold]
    return ranked[:top_n] if top_n is not None else ranked


class CoreOptions(BaseModel):
    """Options forwarded to the core runtime when the adapter builds it (None: core default)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    device: str | None = None
    """"cpu", "cuda", "cuda:1", "mps"; None picks the best available."""
    dtype: str | None = None
    """"auto", "float32", "bfloat16" or "float16"."""
    max_length: int | None = None
    """Tokens per input (default 8192)."""
    revision: str | None = None
    """Hub revision to pin."""
    cache_dir: str | None = None
    """Hugging Face cache folder."""
    local_files_only: bool | None = None
    """Never use the network."""
    attn_implementation: str | None = None
    """"sdpa", "eager" or "flash_attention_2"."""
    batch_tokens: int | None = None
    """Tokens per forward, padding counted (CPU batches are packed)."""
    max_batch_size: int | None = None
    """Most inputs per forward."""
    max_chars: int | None = None
    """Characters kept per input before tokenizing."""
    show_progress: bool | None = None
    """Progress bar: True, False, or None for long jobs only."""
    compile: bool | None = None
    """``torch.compile`` the model (GPU throughput jobs)."""

    def core_options(self, allowed: tuple[str, ...]) -> dict[str, Any]:
        """The options in ``allowed`` that this adapter has as fields."""
        return {k: getattr(self, k) for k in allowed if k in type(self).model_fields}
