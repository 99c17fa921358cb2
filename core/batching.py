"""Length-sorted, token-budget batching with out-of-memory back-off (pure Python, no model code)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from .errors import OutOfMemoryError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def batch_cost(lengths: Sequence[int], packed: bool) -> int:
    """Tokens a forward over inputs of these lengths computes: padded or packed.

    Example:
        >>> batch_cost([5, 3, 2], packed=False), batch_cost([5, 3, 2], packed=True)
        (15, 10)
    """
    return sum(lengths) if packed else len(lengths) * max(lengths, default=0)


def plan_batches(
    lengths: Sequence[int], token_budget: int, max_rows: int, packed: bool = False
) -> list[list[int]]:
    """Group indices into batches whose computed size stays within ``token_budget`` tokens.

    Indices are taken longest first, so each batch holds inputs of similar length and padding
    stays small. A single input longer than the budget gets a batch of its own.

    Args:
        lengths: Token count of each input.
        token_budget: Maximum :func:`batch_cost` per batch.
        max_rows: Maximum rows per batch, whatever the budget.
        packed: Whether the batch runs packed (cost: the sum of lengths) or padded
            (cost: ``rows × longest row``).

    Returns:
        Lists of indices into ``lengths``; every index appears exactly once.

    Example:
        >>> plan_batches([5, 100, 7, 98], token_budget=200, max_rows=8)
        [[1, 3], [2, 0]]
        >>> plan_batches([5, 100, 7, 98], token_budget=200, max_rows=8, packed=True)
        [[1, 3], [2, 0]]
        >>> plan_batches([5, 90, 7, 98], token_budget=195, max_rows=8, packed=True)
        [[3, 1, 2], [0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        # Sorted descending, so the first row of a batch is its longest.
        longest = lengths[current[0]] if current else lengths[i]
        cost = total + lengths[i] if packed else (len(current) + 1) * longest
        if current and (cost > token_budget or len(current) >= max_rows):
            batches.append(current)
            current, total = [], 0
        current.append(i)
        total += lengths[i]
    if current:
        batches.append(current)
    return batches


def run_with_oom_backoff(
    batch: list[int],
    run: Callable[[list[int]], list[T]],
    on_reduce: Callable[[int], None],
    advice: str,
) -> list[T]:
    """Run ``run(batch)``; on accelerator OOM split the batch in halves and retry each half.

    Args:
        batch: Indices to process, in order.
        run: Processes a list of indices and returns one result per index, in order.
        on_reduce: Called with the row count that is being retried, so callers can remember a
            smaller batch size for later calls.
        advice: Appended to the error raised when even one input does not fit.

    Returns:
        ``run``'s results for every index of ``batch``, in order; identical to one big call.

    Raises:
        OutOfMemoryError: If a single input runs out of memory.
    """
    try:
        return run(batch)
    except torch.cuda.OutOfMemoryError as e:  # only OOM: other errors may poison the device
        error_text = str(e).splitlines()[0] if str(e) else type(e).__name__
    # Outside the except block, so the traceback no longer pins the failed batch's tensors.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if len(batch) == 1:
        raise OutOfMemoryError(
            f"out of accelerator memory on a single input ({error_text}). {advice}"
        )
    half = (len(batch) + 1) // 2
    on_reduce(half)
    logger.warning("out of memory on a batch of %d inputs; retrying in halves", len(batch))
    return run_with_oom_backoff(batch[:half], run, on_reduce, advice) + run_with_oom_backoff(
        batch[half:], run, on_reduce, advice
    )
