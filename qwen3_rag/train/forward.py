"""Training forwards: the inference pooling with gradients, and gradient caching (GradCache).

The forward is the core's own: inputs packed end to end (:func:`qwen3_rag.core.packing.pack`,
no padding token computed) or left-padded with a mask, and the final token's last-layer hidden
state, read at the same position the embedder and the reranker read it.

Gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup") makes the batch of the loss independent of the batch a forward holds: every input
is first embedded without a graph, chunk by chunk; the loss and its gradient with respect to the
embeddings are computed on the whole batch; then each chunk is run again with a graph and its
cached embedding gradient is back-propagated. Memory is that of one chunk; the parameter
gradients are those of the whole batch (one extra forward is the price). A sharded model
(:class:`Lockstep`) makes every process run the same number of chunks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from qwen3_rag.core.batching import plan_batches
from qwen3_rag.core.compat import causal_lm_backbone
from qwen3_rag.core.packing import pack, packed_model_kwargs
from qwen3_rag.core.pooling import last_token_pool

from .distributed import Group
from .loss import reranker_loss

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


class AnswerLoss(torch.nn.Module):
    """The reranker's loss on a chunk of pairs, as one module forward: decoder, then answer head.

    The answer head's weight (``lm_head``, tied to the token embeddings in the 0.6B and 4B
    models) is read inside this forward, so a sharded model whose root FSDP unit is this module
    (:func:`.sharding.shard_model`) has it gathered there, and its gradient reduce-scattered
    after the backward; outside a forward it is only this process's slice. Unsharded, it is the
    backbone's :func:`final_hidden` then :func:`.loss.reranker_loss`, nothing more.

    Args:
        model: The ``Qwen3ForCausalLM`` (LoRA injected in place or not).
        packed: Pack each chunk into one row (see :func:`final_hidden`).
        pad_id: Padding id of a padded chunk.
        autocast: The forward's autocast dtype (bfloat16 on GPUs), or None.
        yes_id: Token id of the "yes" answer.
        no_id: Token id of the "no" answer.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        packed: bool,
        pad_id: int,
        autocast: torch.dtype | None,
        yes_id: int,
        no_id: int,
    ) -> None:
        super().__init__()
        self.model: Any = model  # transformers' model: get_output_embeddings() is untyped
        self.packed, self.pad_id, self.autocast = packed, pad_id, autocast
        self.yes_id, self.no_id = yes_id, no_id

    def forward(self, rows: list[list[int]], labels: list[bool]) -> torch.Tensor:
        """Mean ``-log p(label)`` over the pairs ``rows`` (True: "yes"), a float32 scalar."""
        hidden = final_hidden(
            causal_lm_backbone(self.model),
            rows,
            packed=self.packed,
            pad_id=self.pad_id,
            autocast=self.autocast,
        )
        head = self.model.get_output_embeddings().weight
        return reranker_loss(hidden, head, labels, yes_id=self.yes_id, no_id=self.no_id)


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


@dataclass(frozen=True)
class Lockstep:
    """Sharded models (FSDP) gather weights in every forward and backward, all processes at once.

    A process whose share of the batch needs fewer chunks than another's runs padding passes
    (``filler``, a one-token row, its gradient zero) so that every process runs the same number
    of forwards and backwards; the padding changes no gradient and draws no random number.

    Attributes:
        group: The run's processes.
        device: This process's device (for the count's all-reduce).
        filler: The token row of a padding pass.
    """

    group: Group
    device: torch.device
    filler: list[int]

    def passes(self, chunks: int) -> int:
        """How many chunks every process runs: the most any process has."""
        return self.group.max(chunks, self.device)

    def pad(self, encode: Encoder, *, backward: bool) -> torch.Tensor:
        """One padding pass (a forward, and a zero backward when ``backward``)."""
        with _replay_rng(_rng_state()), torch.set_grad_enabled(backward):
            out = encode([list(self.filler)])
            if backward:
                out.backward(torch.zeros_like(out))
        return out.detach()


def cached_backward(
    encode: Encoder,
    rows: Sequence[Sequence[int]],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    chunk_tokens: int,
    lockstep: Lockstep | None = None,
) -> torch.Tensor:
    """Back-propagate ``loss_fn(encode(rows))`` into the parameters, one chunk in memory at once.

    When every row fits one chunk this is a plain forward and backward; otherwise the rows are
    embedded without a graph, the loss's gradient with respect to the embeddings is computed,
    and each chunk is re-run with a graph and given its share of that gradient.

    Args:
        encode: Token rows to embeddings ``[rows, dim]`` (differentiable).
        rows: Every input of the batch (this process's; none for a process without a share).
        loss_fn: Embeddings of all rows, in order, to a scalar loss.
        chunk_tokens: Most tokens per forward (a longer row gets a chunk of its own).
        lockstep: For a sharded model: run as many chunks as the process with the most.

    Returns:
        The loss (detached).
    """
    lengths = [len(r) for r in rows]
    chunks = plan_batches(lengths, chunk_tokens, max_rows=len(rows), packed=True) if rows else []
    passes = len(chunks) if lockstep is None else lockstep.passes(len(chunks))
    if not chunks:
        if lockstep is None or passes == 0:
            raise ValueError("cached_backward: no rows to embed (and no other process's to pad)")
        return _padded_share(encode, loss_fn, lockstep, passes)
    if passes == 1:
        loss = loss_fn(encode([list(r) for r in rows]))
        loss.backward()
        return loss.detach()
    states = []
    parts: list[torch.Tensor] = []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state())
            parts.append(encode([list(rows[i]) for i in chunk]))
    for _ in range(passes - len(chunks)):
        assert lockstep is not None
        lockstep.pad(encode, backward=False)
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
    for _ in range(passes - len(chunks)):
        assert lockstep is not None
        lockstep.pad(encode, backward=True)
    # The replayed draws leave the generator where one pass would have left it.
    torch.set_rng_state(after[0])
    if after[1] is not None:
        torch.cuda.set_rng_state(after[1])
    return loss.detach()


def _padded_share(
    encode: Encoder,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    lockstep: Lockstep,
    passes: int,
) -> torch.Tensor:
    """A process without rows in lockstep: the others' collectives in their order, no gradient.

    The others run one chunk as forward, the loss (its gather), backward; or ``passes`` forwards
    without a graph, the loss, then ``passes`` forwards with a backward each.
    """
    if passes == 1:
        with _replay_rng(_rng_state()):
            out = encode([list(lockstep.filler)])
        loss = loss_fn(out.detach()[:0])
        out.backward(torch.zeros_like(out))
        return loss.detach()
    pads = [lockstep.pad(encode, backward=False) for _ in range(passes)]
    loss = loss_fn(pads[0][:0])
    for _ in range(passes):
        lockstep.pad(encode, backward=True)
    return loss.detach()
