"""The two training tasks: the data tokenized as the runtime tokenizes it, the model, the loss.

:class:`_EmbeddingTask` tokenizes with :class:`~qwen3_rag.core.Qwen3Embedder` (queries in the
instruction template, documents bare) and trains with the contrastive loss through gradient
caching (:mod:`.forward`); :class:`_RerankerTask` tokenizes the reranker's exact pairs and trains
"yes"/"no" at the answer position. Both load the model (LoRA injected when asked) and export it
as a plain model folder (:mod:`.model_files`).
"""

from __future__ import annotations

import copy
import os
import random
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qwen3_rag.core.batching import plan_batches
from qwen3_rag.core.compat import causal_lm_backbone
from qwen3_rag.core.loading import from_pretrained_kwargs, load_tokenizer
from qwen3_rag.core.packing import register_packed_sdpa
from qwen3_rag.core.pooling import truncate_and_normalize
from qwen3_rag.core.spec import PAD_TOKEN, RERANK_NO, RERANK_YES

from .distributed import SINGLE, Group
from .forward import AnswerLoss, Lockstep, cached_backward, final_hidden
from .model_files import _copy_model_files, write_sentence_transformers_files
from .options import TrainingOptions

DEFAULT_CHUNK_TOKENS_CPU = 2048
DEFAULT_CHUNK_TOKENS_GPU = 16384


@dataclass
class _Instance:
    query: list[int]
    pos: list[int]  # indexes into the document table (embedder) or the pair table (reranker)
    neg: list[int]


class _Task:
    """Tokenization, model loading and the loss of one model kind."""

    kind = "base"

    def __init__(
        self,
        model_ref: str | os.PathLike[str],
        runtime: dict[str, Any],
        options: TrainingOptions,
        device: torch.device,
    ) -> None:
        self.options = options
        self.device = device
        self.runtime = runtime
        self.table: list[list[int]] = []  # token rows the instances point into
        self.instances: list[_Instance] = []
        self.model_dir = Path()
        self.pad_id = 0
        self.instruction = ""  # the task the queries train with (the most common one)
        self.hidden_size = 0
        self.model: Any  # the Hugging Face model (LoRA injected in place)
        self.trainable: Any  # what the optimizer and the checkpoints see
        self.sharded = False  # the model's weights are split over the processes (fsdp)
        self._auto_class: Any = None  # the transformers class the model loads with

    def tokenize(self, model_ref: str | os.PathLike[str], examples: Sequence[Any]) -> None:
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def step(
        self, batch: list[_Instance], rng: random.Random, group: Group = SINGLE
    ) -> tuple[float, int]:
        """Sample, forward and back-propagate one global batch; this process's share only.

        Every process draws the same sample of the whole batch from ``rng`` (so the batch is
        one process's batch, whatever the number of processes). The parameter gradients are
        this process's part: :meth:`Group.sum_gradients` adds them up.

        Returns:
            The batch's loss (the same on every process) and its token count.
        """
        raise NotImplementedError

    def inference_options(self) -> dict[str, Any]:
        """Options that build the runtime (tokenizer) the training inputs come from."""
        hub = {
            k: v
            for k, v in self.runtime.items()
            if k in ("revision", "cache_dir", "local_files_only")
        }
        return dict(
            device="cpu",
            dtype="float32",
            max_length=self.options.max_length,
            show_progress=False,
            **hub,
        )

    @property
    def autocast(self) -> torch.dtype | None:
        return _autocast_dtype(self.runtime.get("dtype", "auto"), self.device)

    @property
    def chunk_tokens(self) -> int:
        if self.options.chunk_tokens is not None:
            return self.options.chunk_tokens
        return DEFAULT_CHUNK_TOKENS_CPU if self.device.type == "cpu" else DEFAULT_CHUNK_TOKENS_GPU

    def _load(self, auto_class: Any) -> torch.nn.Module:
        # FSDP shards one dtype per unit: a bfloat16 base next to float32 adapters cannot be
        # one, so a sharded LoRA base stays float32 (autocast still computes in bfloat16).
        load_dtype = _weights_dtype(
            self.runtime.get("dtype", "auto"),
            self.device,
            lora=self.options.lora_rank > 0 and not self.options.fsdp,
        )
        attn = register_packed_sdpa() if self.options.packing else "sdpa"
        self._auto_class = auto_class
        model = auto_class.from_pretrained(
            self.model_dir, **from_pretrained_kwargs(load_dtype, attn)
        )
        self.save_dtype = _config_dtype(model.config) or load_dtype
        model.to(self.device)
        self.pad_id = load_tokenizer(self.model_dir).token_id(PAD_TOKEN)
        return model

    def _prepare_trainable(self, model: Any) -> None:
        opts = self.options
        if opts.lora_rank > 0:
            missing = [
                t
                for t in opts.lora_targets
                if not any(n.split(".")[-1] == t for n, _ in model.named_modules())
            ]
            if missing:
                raise ValueError(f"lora_targets: the model has no module named {missing[0]!r}")
            self.trainable = self._inject_lora(model)  # the adapters go in place
        else:
            model.requires_grad_(True)
            self.trainable = model
        if opts.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            if opts.lora_rank > 0:
                # The frozen embeddings give no input gradient, which checkpointing needs.
                model.enable_input_require_grads()
        model.train()
        self.model = model

    def _inject_lora(self, model: Any) -> Any:
        """``model`` with the options' LoRA adapters injected in place, as a peft model."""
        from peft import LoraConfig, get_peft_model

        opts = self.options
        config = LoraConfig(
            r=opts.lora_rank,
            lora_alpha=opts.lora_alpha,
            lora_dropout=opts.lora_dropout,
            target_modules=list(opts.lora_targets),
            bias="none",
        )
        with warnings.catch_warnings():
            # peft reads transformers' deprecated `is_gradient_checkpointing`; the warning
            # is about peft's code, not the user's, and says nothing they can act on.
            warnings.filterwarnings(
                "ignore",
                message="`is_gradient_checkpointing` is deprecated",
                category=FutureWarning,
            )
            return get_peft_model(model, config)

    def shard(self, group: Group) -> None:
        """Split the model's weights over ``group``'s processes (FSDP2, see :mod:`.sharding`)."""
        from .sharding import shard_model

        shard_model(
            self._root(), getattr(self._backbone(), "layers", None), self.device, group.world
        )
        self.sharded = True

    def _root(self) -> torch.nn.Module:
        """The module whose forward the step calls (the root FSDP unit when sharded)."""
        root: torch.nn.Module = self.model
        return root

    def _backbone(self) -> torch.nn.Module:
        """The decoder (``Qwen3Model``) that holds the layers."""
        backbone: torch.nn.Module = self.model
        return backbone

    def _unsharded(self, state: dict[str, torch.Tensor]) -> Any:
        """A CPU copy of the trainable model holding ``state``, the full weights of a sharded one.

        The base weights are read again from the model folder and then replaced: the sharded
        model has no whole copy to start from.
        """
        from qwen3_rag.core.loading import transformers_load

        with transformers_load(show_progress=False):
            model = self._auto_class.from_pretrained(
                self.model_dir, **from_pretrained_kwargs(torch.float32, "sdpa")
            )
        trainable = self._inject_lora(model) if self.options.lora_rank > 0 else model
        trainable.load_state_dict(state, strict=True)
        return trainable

    def export(self, dest: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the current weights (adapters merged) as a plain model folder.

        Args:
            dest: The folder to write.
            state: For a sharded model, its full weights (:func:`.sharding.full_state`) by the
                names of ``trainable``'s parameters.
        """
        if state is not None:
            unsharded = self._unsharded(state)
            merged = unsharded.merge_and_unload() if self.options.lora_rank > 0 else unsharded
        elif self.options.lora_rank > 0:
            merged = copy.deepcopy(self.trainable).merge_and_unload()
        elif _param_dtype(self.model) != self.save_dtype:
            merged = copy.deepcopy(self.model)
        else:
            merged = self.model
        if _param_dtype(merged) != self.save_dtype:
            merged.to(self.save_dtype)
        # transformers writes no attention implementation into config.json (a test checks
        # it), so the packing attention, a runtime choice, does not leak into the checkpoint.
        merged.save_pretrained(dest, safe_serialization=True)
        _copy_model_files(self.model_dir, dest)
        self._write_extra_files(dest)

    def _write_extra_files(self, dest: Path) -> None:
        """Kind-specific files (sentence-transformers' configuration for the embedder)."""

    def _encoder(self) -> Callable[[list[list[int]]], torch.Tensor]:
        backbone = self._backbone()

        def encode(rows: list[list[int]]) -> torch.Tensor:
            return final_hidden(
                backbone,
                rows,
                packed=self.options.packing,
                pad_id=self.pad_id,
                autocast=self.autocast,
            )

        return encode


class _EmbeddingTask(_Task):
    kind = "embedding"

    def tokenize(self, model_ref: str | os.PathLike[str], examples: Sequence[Any]) -> None:
        from qwen3_rag.core import Qwen3Embedder

        runtime = Qwen3Embedder(model_ref, **self.inference_options())
        self.model_dir = runtime.model_dir
        default = (
            runtime.instruction if self.options.instruction is None else self.options.instruction
        )
        docs: dict[str, int] = {}
        for ex in examples:
            for text in (*ex.pos, *ex.neg):
                docs.setdefault(text, len(docs))
        by_task: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            task = default if ex.instruction is None else ex.instruction
            by_task.setdefault(task, []).append(i)
        self.instruction = _most_common(
            [default if ex.instruction is None else ex.instruction for ex in examples]
        )
        queries: list[list[int]] = [[] for _ in examples]
        cut = 0
        # The embedder's own tokenization: the ids embed_queries/embed_documents feed the model.
        for task, idx in by_task.items():
            encoded = runtime.encode_queries([examples[i].query for i in idx], task)
            cut += encoded.truncated
            for i, row in zip(idx, encoded.ids, strict=True):
                queries[i] = row
        table = runtime.encode_documents(list(docs))
        self.table = table.ids
        runtime.warn_truncated(cut + table.truncated, len(examples) + len(docs))
        self.instances = [
            _Instance(queries[i], [docs[t] for t in ex.pos], [docs[t] for t in ex.neg])
            for i, ex in enumerate(examples)
        ]
        self.hidden_size = runtime.hidden_size
        del runtime

    def load(self) -> None:
        from transformers import AutoModel

        self._prepare_trainable(self._load(AutoModel))

    def step(
        self, batch: list[_Instance], rng: random.Random, group: Group = SINGLE
    ) -> tuple[float, int]:
        from .loss import contrastive_loss

        pos = [rng.choice(inst.pos) for inst in batch]
        neg = [_sample(inst.neg, self.options.negatives, rng) for inst in batch]
        shares = group.split(len(batch))
        # Each process embeds its share's queries, positives and negatives, in that order; the
        # gathered rows are the processes' rows one after another. Where each instance's rows
        # sit in them:
        q_at: list[int] = []
        p_at: list[int] = []
        n_at: list[list[int]] = []
        counts: list[int] = []
        for share in shares:
            start = sum(counts)
            q_at += [start + j for j in range(len(share))]
            p_at += [start + len(share) + j for j in range(len(share))]
            at = start + 2 * len(share)
            for i in share:
                n_at.append(list(range(at, at + len(neg[i]))))
                at += len(neg[i])
            counts.append(at - start)
        mine = shares[group.rank]
        rows = [batch[i].query for i in mine] + [self.table[pos[i]] for i in mine]
        rows += [self.table[d] for i in mine for d in neg[i]]
        k = max(len(g) for g in neg)
        # An instance with fewer than k negatives fills its other slots with its own query
        # (finite, unit norm), and the mask leaves them out of the loss.
        slots = torch.tensor([[j < len(g) for j in range(k)] for g in neg], dtype=torch.bool)
        index = torch.tensor(
            [g + [q_at[i]] * (k - len(g)) for i, g in enumerate(n_at)], dtype=torch.long
        ).reshape(len(batch), k)
        opts = self.options

        def loss_fn(emb: torch.Tensor) -> torch.Tensor:
            every = group.gather(emb, counts)
            return contrastive_loss(
                every[q_at],
                every[p_at],
                every[index.to(every.device)] if k else None,
                temperature=opts.temperature,
                margin=opts.margin,
                pos_ids=pos,
                neg_mask=None if bool(slots.all()) else slots,
            )

        encode = self._encoder()
        if rows or self.sharded:
            loss = cached_backward(
                lambda r: truncate_and_normalize(encode(r), None),
                rows,
                loss_fn,
                chunk_tokens=self.chunk_tokens,
                # Sharded weights are gathered in every forward and backward, by all processes
                # together: they run the same number of chunks (padded with one-token rows).
                lockstep=Lockstep(group, self.device, [self.pad_id]) if self.sharded else None,
            )
        else:  # a last batch smaller than the number of processes: nothing to embed here
            loss = loss_fn(torch.zeros((0, self.hidden_size), device=self.device)).detach()
        tokens = sum(len(inst.query) for inst in batch) + sum(len(self.table[p]) for p in pos)
        tokens += sum(len(self.table[d]) for g in neg for d in g)
        return float(loss), tokens

    def _write_extra_files(self, dest: Path) -> None:
        write_sentence_transformers_files(dest, self.hidden_size, self.instruction)


class _RerankerTask(_Task):
    kind = "reranker"

    def tokenize(self, model_ref: str | os.PathLike[str], examples: Sequence[Any]) -> None:
        from qwen3_rag.core import Qwen3Reranker

        runtime = Qwen3Reranker(model_ref, **self.inference_options())
        self.model_dir = runtime.model_dir
        default = (
            runtime.instruction if self.options.instruction is None else self.options.instruction
        )
        cut = 0
        for ex in examples:
            task = default if ex.instruction is None else ex.instruction
            # The reranker's own pair tokenization: prefix, body, suffix, as score() builds them.
            pairs = runtime.encode_pairs(ex.query, [*ex.pos, *ex.neg], task)
            cut += pairs.truncated
            start = len(self.table)
            self.table.extend(pairs.ids)
            ids = list(range(start, start + len(pairs.ids)))
            self.instances.append(_Instance([], ids[: len(ex.pos)], ids[len(ex.pos) :]))
        runtime.warn_truncated(cut, len(self.table))
        self.instruction = _most_common(
            [default if ex.instruction is None else ex.instruction for ex in examples]
        )
        tok = runtime.tokenizer
        self.yes_id, self.no_id = tok.token_id(RERANK_YES), tok.token_id(RERANK_NO)
        del runtime

    def load(self) -> None:
        from transformers import AutoModelForCausalLM

        self._prepare_trainable(self._load(AutoModelForCausalLM))
        # The head is read inside this module's forward: sharded, it is the root FSDP unit,
        # so the head (tied to the sharded embedding table or not) is whole where it is used.
        self.scorer = AnswerLoss(
            self.model,
            packed=self.options.packing,
            pad_id=self.pad_id,
            autocast=self.autocast,
            yes_id=self.yes_id,
            no_id=self.no_id,
        )

    def _root(self) -> torch.nn.Module:
        return self.scorer

    def _backbone(self) -> torch.nn.Module:
        return causal_lm_backbone(self.model)

    def step(
        self, batch: list[_Instance], rng: random.Random, group: Group = SINGLE
    ) -> tuple[float, int]:
        pairs: list[tuple[int, int, bool]] = []  # (instance, table row, relevant)
        for i, inst in enumerate(batch):
            pairs.append((i, rng.choice(inst.pos), True))
            pairs.extend((i, d, False) for d in _sample(inst.neg, self.options.negatives, rng))
        mine = set(group.split(len(batch))[group.rank])
        rows = [self.table[row] for i, row, _ in pairs if i in mine]
        labels = [relevant for i, _, relevant in pairs if i in mine]
        chunks = plan_batches([len(r) for r in rows], self.chunk_tokens, len(rows), True)
        # Sharded weights are gathered in every forward and backward, by all processes
        # together: a process with fewer chunks (or none) pads with one-token passes, after
        # its own (the count is agreed on first: the others' gathers must not interleave it).
        lockstep = Lockstep(group, self.device, [self.pad_id]) if self.sharded else None
        passes = len(chunks) if lockstep is None else lockstep.passes(len(chunks))
        total = 0.0
        # Pointwise: each chunk's share of the global batch mean is back-propagated on its own.
        for chunk in chunks:
            loss = self.scorer([rows[i] for i in chunk], [labels[i] for i in chunk])
            (loss * len(chunk) / len(pairs)).backward()
            total += float(loss.detach()) * len(chunk) / len(pairs)
        if lockstep is not None:
            for _ in range(passes - len(chunks)):
                lockstep.pad(lambda r: self.scorer(r, [False] * len(r)), backward=True)
        return group.sum(total, self.device), sum(len(self.table[row]) for _, row, _ in pairs)


# -- helpers --------------------------------------------------------------------------------
def _sample(pool: list[int], k: int, rng: random.Random) -> list[int]:
    """``k`` items of ``pool`` without repeats; all of them (in order) when it has no more."""
    if len(pool) <= k:
        return list(pool)
    return rng.sample(pool, k)


def _most_common(tasks: list[str]) -> str:
    """The instruction most instances train with (the first seen among equals).

    It becomes the saved model's query prompt and the held-out evaluation's instruction.
    """
    return Counter(tasks).most_common(1)[0][0]


def _autocast_dtype(dtype: str | None, device: torch.device) -> torch.dtype | None:
    """bfloat16 autocast on GPUs ("auto" or "bfloat16"); the CPU trains in float32."""
    name = (dtype or "auto").lower()
    if device.type == "cpu":
        if name not in ("auto", "float32", "fp32"):
            raise ValueError(f"dtype={dtype!r}: training on the CPU runs in float32")
        return None
    if name in ("float32", "fp32"):
        return None
    if name in ("auto", "bfloat16", "bf16"):
        return torch.bfloat16
    raise ValueError(f"dtype={dtype!r}: training runs in 'float32' or 'bfloat16' (GPU)")


def _weights_dtype(dtype: str | None, device: torch.device, *, lora: bool) -> torch.dtype:
    """Frozen LoRA bases sit in bfloat16 on GPUs; trained weights stay float32 (AdamW)."""
    if _autocast_dtype(dtype, device) is not None and lora:
        return torch.bfloat16
    return torch.float32


def _config_dtype(config: Any) -> torch.dtype | None:
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) else None


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
