"""Packed forwards: a batch's inputs end to end in one row, so no token is padding.

A padded batch costs ``rows x longest`` tokens in every linear layer; packing costs the sum of
the real lengths (about 15% less on mixed-length prose, measured in ``benchmarks/``). Only
attention needs to know where one input ends: :func:`packed_sdpa` runs PyTorch's SDPA once per
input (causal, optionally after a shared cached prefix), and each input's positions restart at
its own offset, so RoPE sees exactly the positions it would see alone.

The function is registered with transformers (through :mod:`.compat`) under
:data:`PACKED_SDPA`; called without segments it is transformers' own SDPA attention, so a model
loaded with it behaves as an ``"sdpa"`` model everywhere else.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .compat import maskless_forward_kwargs, register_attention, sdpa_attention

#: Name of the attention implementation a packing model is loaded with.
PACKED_SDPA = "qwen3_rag_packed_sdpa"
#: Keyword that carries the :class:`Segments` through ``model(...)`` to the attention function.
SEGMENTS_KWARG = "qwen3_rag_segments"


@dataclass(frozen=True)
class Segments:
    """Where each input lies in a packed row.

    Attributes:
        bounds: ``(start, end)`` of each input in the packed row, end exclusive.
        prefix: Tokens of a cached prefix that every input continues (they come first in the
            keys and values the cache returns).
    """

    bounds: tuple[tuple[int, int], ...]
    prefix: int = 0

    @property
    def last_positions(self) -> list[int]:
        """Index of each input's final token in the packed row."""
        return [end - 1 for _, end in self.bounds]


def pack(
    rows: Sequence[Sequence[int]], device: torch.device, first_position: int = 0
) -> tuple[torch.Tensor, torch.Tensor, Segments]:
    """Concatenate id lists into ``input_ids``/``position_ids`` of shape ``[1, total]``.

    Args:
        rows: Token ids of each input (none empty).
        device: Where the tensors go.
        first_position: Position of each input's first token (the cached prefix's length when
            the inputs continue one).

    Returns:
        ``input_ids``, ``position_ids`` and the :class:`Segments` to pass to the model.

    Example:
        >>> ids, pos, seg = pack([[7, 8, 9], [5]], torch.device("cpu"))
        >>> ids.tolist(), pos.tolist(), seg.bounds
        ([[7, 8, 9, 5]], [[0, 1, 2, 0]], ((0, 3), (3, 4)))
    """
    flat: list[int] = []
    positions: list[int] = []
    bounds: list[tuple[int, int]] = []
    for row in rows:
        start = len(flat)
        flat.extend(row)
        positions.extend(range(first_position, first_position + len(row)))
        bounds.append((start, len(flat)))
    return (
        torch.tensor([flat], dtype=torch.long, device=device),
        torch.tensor([positions], dtype=torch.long, device=device),
        Segments(tuple(bounds), first_position),
    )


def packed_model_kwargs(segments: Segments) -> dict[str, Any]:
    """Extra ``model(...)`` arguments for a packed row: the segments, and no mask.

    transformers would otherwise build a ``total x total`` mask that the segments make
    unnecessary.
    """
    return maskless_forward_kwargs({SEGMENTS_KWARG: segments})


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention within each segment of a packed row; plain SDPA when no segments are given.

    Args:
        module: The attention module (transformers reads its GQA group count from it).
        query: ``[1, heads, total, head_dim]``.
        key: ``[1, kv_heads, prefix + total, head_dim]``.
        value: Same shape as ``key``.
        attention_mask: Must be None for a packed row.
        **kwargs: ``scaling`` and the :data:`SEGMENTS_KWARG` entry; others go to SDPA.

    Returns:
        ``[1, total, heads, head_dim]`` and None (no attention weights), as transformers'
        attention functions return.
    """
    segments: Segments | None = kwargs.pop(SEGMENTS_KWARG, None)
    if segments is None:
        return sdpa_attention(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError("a packed row takes no attention mask and has batch size 1")
    scaling = kwargs.get("scaling")
    p = segments.prefix
    out = query.new_empty(1, query.shape[2], query.shape[1], query.shape[3])
    for start, end in segments.bounds:
        q = query[:, :, start:end]
        if p:
            # The segment sees the whole prefix and itself causally: query i (at p + i) sees
            # keys 0..p+i. SDPA's is_causal aligns to the top left, so the mask is explicit.
            k = torch.cat([key[:, :, :p], key[:, :, p + start : p + end]], dim=2)
            v = torch.cat([value[:, :, :p], value[:, :, p + start : p + end]], dim=2)
            mask = torch.ones(end - start, p + end - start, dtype=torch.bool, device=q.device)
            o, _ = sdpa_attention(
                module, q, k, v, mask.tril(diagonal=p)[None, None], scaling=scaling
            )
        else:
            k, v = key[:, :, start:end], value[:, :, start:end]
            o, _ = sdpa_attention(module, q, k, v, None, scaling=scaling, is_causal=True)
        out[:, start:end] = o
    return out, None


@functools.cache
def register_packed_sdpa() -> str:
    """Register :func:`packed_sdpa` (and SDPA's mask builder) with transformers, once.

    Returns:
        The implementation name to load models with.
    """
    register_attention(PACKED_SDPA, packed_sdpa)
    return PACKED_SDPA
