"""Training forwards: the inference pooling with gradients, and gradient caching (GradCache).

The forward is the core's own: inputs packed end to end (:func:`qwen3_rag.core.packing.pack`,
no padding token computed) or left-padded with a mask, and the final token's last-layer hidden
state, read at the same position the embedder and the reranker read it.

Gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup") makes the batch of the loss independent of the batch a forward holds: every input
is first embedded without a graph, chunk by chunk; the loss and its gradient with respect to the
embeddings are computed on the whole batch; then each chunk is run again with a graph and its
cached embedding gradient is back-propagated. Memory is that of one chunk; the parameter
gradients are those of the whole batch (one extra forward is the price).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from qwen3_rag.core.batching import plan_batches
from qwen3_rag.core.packing import pack, packed_model_kwargs
from qwen3_rag.core.pooling import last_token_pool

Encoder = Callable[[list[list[int]]], torch.Tensor]


def final_hidden(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    *,
    packed: bool,
    pad_id: int,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """Last-layer hidden state at each input's final token, ``[len(rows), hidden]``, float32.

    Args:
        model: A ``Qwen3Model`` (the embedder, or a reranker's backbone), loaded with the
            packing attention (:func:`qwen3_rag.core.packing.register_packed_sdpa`) when
            ``packed``.
        rows: Token ids of each input, exactly as inference builds them.
        packed: One row holding every input (no padding), or a left-padded batch with a mask.
        pad_id: Padding id of the padded batch (masked out; it never reaches the result).
        autocast: Run the forward under ``torch.autocast`` in this dtype (bfloat16 on GPUs).
    """
    device = next(model.parameters()).device
    ctx = (
        torch.autocast(device_type=device.type, dtype=autocast)
        if autocast is not None
        else contextlib.nullcontext()
    )
    with ctx:
        if packed:
            input_ids, positions, segments = pack(rows, device)
            hidden = model(
                input_ids=input_ids,
                position_ids=positions,
                use_cache=False,
                **packed_model_kwargs(segments),
            ).last_hidden_state[0]
            return _at_least_float32(hidden[segments.last_positions])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        out = model(input_ids=ids, attention_mask=mask, use_cache=False)
        return _at_least_float32(last_token_pool(out.last_hidden_state, mask))


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """float32, as the embedder pools (float64 stays float64, for exactness tests)."""
    return x if x.dtype == torch.float64 else x.float()


@contextlib.contextmanager
def _replay_rng(state: tuple[torch.Tensor, torch.Tensor | None]) -> Iterator[None]:
    """Run a block with the RNG state a chunk's first forward had (dropout draws the same)."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)
        yield


def _rng_state() -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def cached_backward(
    encode: Encoder,
    rows: Sequence[Sequence[int]],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    chunk_tokens: int,
) -> torch.Tensor:
    """Back-propagate ``loss_fn(encode(rows))`` into the parameters, one chunk in memory at once.

    When every row fits one chunk this is a plain forward and backward; otherwise the rows are
    embedded without a graph, the loss's gradient with respect to the embeddings is computed,
    and each chunk is re-run with a graph and given its share of that gradient.

    Args:
        encode: Token rows to embeddings ``[rows, dim]`` (differentiable).
        rows: Every input of the batch.
        loss_fn: Embeddings of all rows, in order, to a scalar loss.
        chunk_tokens: Most tokens per forward (a longer row gets a chunk of its own).

    Returns:
        The loss (detached).
    """
    lengths = [len(r) for r in rows]
    chunks = plan_batches(lengths, chunk_tokens, max_rows=len(rows), packed=True)
    if len(chunks) == 1:
        loss = loss_fn(encode([list(r) for r in rows]))
        loss.backward()
        return loss.detach()
    states = []
    parts: list[torch.Tensor] = []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state())
            parts.append(encode([list(rows[i]) for i in chunk]))
    order = torch.tensor([i for chunk in chunks for i in chunk], device=parts[0].device)
    cached = torch.empty(
        (len(rows), parts[0].shape[1]), dtype=parts[0].dtype, device=parts[0].device
    )
    cached[order] = torch.cat(parts)
    cached.requires_grad_(True)
    loss = loss_fn(cached)
    (grad,) = torch.autograd.grad(loss, cached)
    after = _rng_state()
    for chunk, state in zip(chunks, states, strict=True):
        with _replay_rng(state):
            out = encode([list(rows[i]) for i in chunk])
        out.backward(grad[torch.tensor(chunk, device=grad.device)])
    # The replayed draws leave the generator where one pass would have left it.
    torch.set_rng_state(after[0])
    if after[1] is not None:
        torch.cuda.set_rng_state(after[1])
    return loss.detach()
