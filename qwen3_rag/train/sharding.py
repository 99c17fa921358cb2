"""Sharded data parallel (``fsdp=True``): parameters, gradients and optimizer state split.

Plain data parallel (:mod:`.distributed`) keeps the whole model, its gradients and AdamW's two
moments in every process; for 4B and 8B full fine-tuning that is more than one device holds.
With ``fsdp`` each decoder layer and the module the step calls (the embedder's model, or the
reranker's :class:`~.forward.AnswerLoss`, whose forward also reads the answer head) become FSDP2
units (:func:`torch.distributed.fsdp.fully_shard`): every process keeps a 1/N slice of each weight,
gathers a layer's full weights for its forward and backward only, and receives its slice of the
gradient by reduce-scatter, so the optimizer steps on slices.

The arithmetic is the plain data-parallel one: FSDP would average the processes' gradients, but
this project's loss is the global batch's (every process computes the same loss and its
gradient reaches only its own embeddings), so the processes' gradients are *added*: the divide
factor is 1 and the reduction a plain sum (gloo has no pre-multiplied sum either).

Checkpoints and the output stay plain Hugging Face folders: :func:`full_state` gathers the full
weights and optimizer state into rank 0's CPU memory, and :func:`load_full_state` shards them
back on resume.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def shard_model(root: torch.nn.Module, layers: Any, device: torch.device, world: int) -> None:
    """Make each decoder layer and ``root`` FSDP2 units over ``world`` processes, in place.

    The root unit holds the rest (the token embeddings, the final norm and, for the reranker,
    the answer head, tied to the embeddings or not); its weights are whole only during the
    root's forward and backward, so whatever reads them must run inside ``root``'s forward.

    Args:
        root: The module whose forward the training step calls, already on ``device``: the
            embedder's ``Qwen3Model`` (LoRA injected or not), or the reranker's
            :class:`~.forward.AnswerLoss` around its ``Qwen3ForCausalLM``.
        layers: The decoder layers (a ``torch.nn.ModuleList`` inside ``root``).
        device: This process's device (its type picks the mesh: gloo for CPU, NCCL for CUDA).
        world: How many processes share the weights.

    Raises:
        ValueError: ``layers`` is not a non-empty list of modules.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"fsdp: {type(root).__name__} has no decoder layers to shard (got {layers!r})"
        )
    mesh = init_device_mesh(device.type, (world,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)  # the rest: embeddings, the final norm, the answer head
    for unit in root.modules():
        if isinstance(unit, FSDPModule):
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
    logger.info(
        "fsdp: %d decoder layers and the root sharded over %d processes", len(layers), world
    )


def full_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full weights and optimizer state of a sharded ``module``, in rank 0's CPU memory.

    Every process must call it (it gathers); the other processes get empty dictionaries.

    Returns:
        ``(weights, optimizer state)``: the weights by their unsharded names (those of
        ``module.named_parameters()``), the optimizer state keyed by the same names.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(module, options=options)
    optim = get_optimizer_state_dict(module, optimizer, options=options)
    # Full state dicts hold plain tensors (no DTensor, no nesting) under each parameter's name.
    return {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}, dict(optim)


def load_full_state(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optim: dict[str, Any],
) -> None:
    """Shard full ``weights`` (the trainable ones suffice) and optimizer state into place.

    Every process calls it with the same full dictionaries (read from the checkpoint).
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    result = set_model_state_dict(module, dict(weights), options=options)
    if result.unexpected_keys:
        raise ValueError(
            f"checkpoint weight {result.unexpected_keys[0]!r} is not a parameter of the model"
        )
    set_optimizer_state_dict(module, optimizer, optim, options=options)
