"""The fine-tuning options: declared once, read by the Python API and the ``finetune`` command."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .loss import DEFAULT_MARGIN, DEFAULT_TEMPERATURE

#: Modules LoRA adapts by default: every linear layer of a Qwen3 decoder block.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _option(default: Any, help: str, *, cli: bool = True, **kwargs: Any) -> Any:
    """A field with its help text (``cli``: offered as a ``qwen3-rag finetune`` flag)."""
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata={"help": help, "cli": cli}, **kwargs)
    return field(default=default, metadata={"help": help, "cli": cli}, **kwargs)


@dataclass(frozen=True)
class TrainingOptions:
    """Options of :func:`~qwen3_rag.train.finetune_embedder` and ``finetune_reranker``.

    Every field is also a ``qwen3-rag finetune`` flag (``learning_rate`` -> ``--learning-rate``).
    """

    epochs: int = _option(1, "passes over the training data (max_steps overrides it)")
    max_steps: int | None = _option(None, "optimizer steps in all; None: epochs x steps per epoch")
    batch_size: int = _option(
        32,
        "training instances per optimizer step, over all processes (global: under torchrun "
        "each of N processes embeds batch_size/N of them, and the result is one process's): "
        "in-batch negatives for the embedder (memory stays bounded by chunk_tokens), query "
        "groups for the reranker",
    )
    negatives: int = _option(
        7,
        "hard negatives per instance, sampled without repeats from its 'neg' list; an "
        "instance with fewer trains with the ones it has (the loss leaves the rest out)",
    )
    learning_rate: float = _option(1e-4, "peak learning rate (AdamW; 1e-5 suits full fine-tuning)")
    warmup_ratio: float = _option(
        0.1, "share of the steps with a linear warm-up, then linear decay"
    )
    weight_decay: float = _option(0.0, "AdamW weight decay")
    max_grad_norm: float = _option(1.0, "gradient norm clipping; 0 turns it off")
    temperature: float = _option(
        DEFAULT_TEMPERATURE,
        "contrastive-loss temperature (see qwen3_rag.train.loss for its source)",
    )
    margin: float = _option(
        DEFAULT_MARGIN,
        "false-negative mask: a negative scoring above the positive plus this is left out",
    )
    lora_rank: int = _option(16, "LoRA rank; 0 means full fine-tuning")
    lora_alpha: int = _option(32, "LoRA scaling numerator (the update is scaled alpha/rank)")
    lora_dropout: float = _option(0.0, "dropout on the LoRA input")
    lora_targets: tuple[str, ...] = _option(
        DEFAULT_LORA_TARGETS, "module names LoRA adapts (comma-separated on the command line)"
    )
    max_length: int = _option(
        512, "tokens per training input, instruction and final token included (cut at its end)"
    )
    chunk_tokens: int | None = _option(
        None,
        "tokens per forward (the GradCache chunk); None: 2048 on CPU, 16384 on GPU. Changes "
        "memory and speed, not the result",
    )
    gradient_checkpointing: bool = _option(
        False, "recompute activations in the backward pass: less memory, about 30%% more time"
    )
    fsdp: bool = _option(
        False,
        "shard the weights, gradients and optimizer state over the torchrun processes (FSDP2) "
        "instead of each holding the whole model: same result, less memory per device; at "
        "least 2 processes",
    )
    save_steps: int | None = _option(
        None, "checkpoint (and evaluate) every N steps; None: only at the end"
    )
    eval_max_length: int | None = _option(
        None,
        "max_length of the held-out evaluation; None: the runtime's default, as `qwen3-rag "
        "eval` runs (max_length only sets the training inputs)",
    )
    keep_best: str | None = _option(
        None,
        "make the output the checkpoint with the best held-out value of this metric (e.g. "
        "ndcg@10; needs eval data) instead of the last one",
    )
    merge_last: int = _option(
        0, "slerp-merge the last K checkpoints into the output (0 or 1: the last one as is)"
    )
    seed: int = _option(0, "seed for the data order, negative sampling and LoRA initialisation")
    instruction: str | None = _option(
        None,
        "instruction of instances that carry none; None: the model's default task (embedder) "
        "or the reranker's default instruction",
    )
    packing: bool = _option(
        True, "run inputs packed end to end (no padding tokens), as inference does on the CPU"
    )
    show_progress: bool = _option(True, "progress bar with loss and throughput", cli=False)

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "max_length", "seed")
        for name in positive:
            _check_int(getattr(self, name), name, minimum=0 if name == "seed" else 1)
        for name in ("max_steps", "save_steps", "chunk_tokens", "eval_max_length"):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), name, minimum=2 if name == "eval_max_length" else 1)
        if self.keep_best is not None:
            from qwen3_rag.eval.metrics import parse_metrics

            try:
                (metric,) = parse_metrics([self.keep_best])
            except ValueError as e:
                raise ValueError(f"keep_best: {e}") from e
            object.__setattr__(self, "keep_best", metric)
        for name in ("negatives", "lora_rank", "merge_last"):
            _check_int(getattr(self, name), name, minimum=0)
        _check_int(self.lora_alpha, "lora_alpha", minimum=1)
        for name in ("learning_rate", "temperature"):
            _check_float(getattr(self, name), name, positive=True)
        for name in ("weight_decay", "max_grad_norm", "lora_dropout", "margin"):
            _check_float(getattr(self, name), name, positive=False)
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        targets = self.lora_targets
        if isinstance(targets, str):
            targets = tuple(t.strip() for t in targets.split(",") if t.strip())
            object.__setattr__(self, "lora_targets", targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"lora_targets must name at least one module, got {targets!r}")
        object.__setattr__(self, "lora_targets", tuple(targets))
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise TypeError(f"instruction must be a str or None, got {type(self.instruction)}")

    def replace(self, **changes: Any) -> TrainingOptions:
        """A copy with ``changes`` applied (checked).

        Raises:
            TypeError: For an unknown option (the message lists the valid ones).
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(
                f"unknown training option(s) {', '.join(map(repr, unknown))}; valid options: "
                f"{', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON-ready values."""
        out = dataclasses.asdict(self)
        out["lora_targets"] = list(self.lora_targets)
        return out


#: Options whose change makes a checkpoint's run a different run (``--resume`` refuses them).
RESULT_OPTIONS = (
    "batch_size",
    "negatives",
    "learning_rate",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "temperature",
    "margin",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
    "max_length",
    "seed",
    "instruction",
    "epochs",
    "max_steps",
)


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int of at least {minimum}, got {value!r}")


def _check_float(value: object, name: str, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(
            f"{name} must be {'positive' if positive else 'non-negative'}, got {value}"
        )
