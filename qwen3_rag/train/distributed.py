"""Data-parallel fine-tuning on ``torch.distributed``: one process per device, one global batch.

A launch with ``torchrun`` (or ``accelerate launch``, which starts the same processes) sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; :func:`process_group`
joins them (NCCL on GPUs, gloo on CPUs). Every process holds the whole model, sees the same
global batch order and samples the same negatives, and embeds only its own slice of the batch.

The contrastive loss then needs every embedding of the global batch. :meth:`Group.gather`
collects them without a graph and puts this process's own tensor back in its place, so the
loss's gradient reaches this process's embeddings only; every process computes the same global
loss, and the sum of the processes' parameter gradients (:meth:`Group.sum_gradients`) is the
gradient one process would get on the whole batch: no term is counted twice, none is missed.
With ``fsdp`` the model is sharded instead (:mod:`.sharding`): FSDP's reduce-scatter adds the
gradients up in place of :meth:`Group.sum_gradients`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """This process's place among the data-parallel processes of one run.

    Attributes:
        rank: This process's index, 0 to ``world - 1`` (0 writes the output and evaluates).
        world: How many processes train together (1: no ``torch.distributed`` calls at all).
        created: :func:`process_group` set the process group up (and :meth:`close` ends it).
    """

    rank: int = 0
    world: int = 1
    created: bool = field(default=False, compare=False)

    @property
    def main(self) -> bool:
        """True in the process that writes files and evaluates (rank 0)."""
        return self.rank == 0

    def split(self, n: int) -> list[range]:
        """The contiguous share of ``n`` batch items of every process (sizes differ by <= 1)."""
        size, extra = divmod(n, self.world)
        out, start = [], 0
        for r in range(self.world):
            stop = start + size + (1 if r < extra else 0)
            out.append(range(start, stop))
            start = stop
        return out

    def gather(self, local: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Every process's rows, in rank order; only this process's rows carry a gradient.

        Args:
            local: This process's ``[counts[rank], ...]`` rows (with their graph, if any).
            counts: The row count of every process (all processes know them all).

        Returns:
            ``[sum(counts), ...]``: the other processes' rows detached, this one's as given.
        """
        if self.world == 1:
            return local
        import torch.distributed as dist

        width = max(counts)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: local.shape[0]] = local.detach()
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)  # equal shapes: gloo gathers no ragged tensors
        rows = [part[:count] for part, count in zip(parts, counts, strict=True)]
        rows[self.rank] = local
        return torch.cat(rows)

    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Add up the processes' gradients of ``params`` in place (one flat buffer per dtype)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            if p.grad is None:  # a process whose slice never reached this weight
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])  # type: ignore[union-attr]
            dist.all_reduce(flat)
            offset = 0
            for p in group:
                grad = p.grad
                assert grad is not None
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()

    def sum(self, value: float, device: torch.device) -> float:
        """``value`` added up over the processes."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t)

    def max(self, value: int, device: torch.device) -> int:
        """The largest of the processes' ``value``."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when ``flag`` is True on at least one."""
        return self.sum(float(flag), device) > 0

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` (a picklable object) on every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """End the process group if :func:`process_group` started it (a caller's stays)."""
        if self.created:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


#: The group of a run in one process.
SINGLE = Group()


def launched_world() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from the launcher's environment; ``(0, 1, 0)`` alone."""
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(name)
        try:
            values.append(default if raw is None else int(raw))
        except ValueError as e:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from e
    rank, world, local = values
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not name a process of the run")
    return rank, world, local


def process_group(device: torch.device) -> tuple[Group, torch.device]:
    """Join the launch's processes (if any) and pick this process's device.

    Under a launcher with ``WORLD_SIZE > 1`` a CUDA device becomes ``cuda:LOCAL_RANK`` (NCCL);
    a CPU run uses gloo. A process group already set up by the caller is used as it is.

    Args:
        device: The device the run asked for (``cuda`` means this process's GPU).

    Returns:
        The :class:`Group` and the device this process trains on.
    """
    rank, world, local = launched_world()
    if world == 1:
        return Group(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world
        )
    if dist.get_world_size() != world:
        raise ValueError(
            f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} processes"
        )
    logger.info("data-parallel process %d of %d on %s", rank, world, device)
    return Group(rank=dist.get_rank(), world=world, created=created), device
