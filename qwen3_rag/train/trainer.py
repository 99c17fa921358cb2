"""Fine-tuning Qwen3-Embedding and Qwen3-Reranker on the inference inputs, with resumable runs.

Inputs are built by the runtime itself (:class:`~qwen3_rag.core.Qwen3Embedder` and
:class:`~qwen3_rag.core.Qwen3Reranker` tokenize the data), so a query is trained exactly as it
is later embedded: instruction template, truncation and final ``<|endoftext|>`` included;
documents carry no instruction. The embedder's loss is the paper's contrastive loss over the
whole batch through gradient caching (:mod:`.forward`); the reranker's is the log-probability of
"yes"/"no" at the answer position.

A run writes into its output folder::

    OUTPUT/                       the fine-tuned model (a plain Hugging Face folder)
    OUTPUT/train_log.jsonl        one JSON object per step and per evaluation
    OUTPUT/checkpoints/step-N/    a model folder per checkpoint, with trainer_state/ to resume

Checkpoints are written to a temporary folder and renamed, so a kill at any moment leaves the
last complete one; ``resume=True`` continues from it with the same data order and random state,
giving the result an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qwen3_rag.core.batching import plan_batches
from qwen3_rag.core.compat import causal_lm_backbone
from qwen3_rag.core.loading import (
    from_pretrained_kwargs,
    load_tokenizer,
    resolve_device,
)
from qwen3_rag.core.packing import register_packed_sdpa
from qwen3_rag.core.pooling import truncate_and_normalize
from qwen3_rag.core.spec import PAD_TOKEN, RERANK_NO, RERANK_YES, format_query

from .forward import cached_backward, final_hidden
from .options import RESULT_OPTIONS, TrainingOptions

logger = logging.getLogger(__name__)

#: Options of the model runtime the training run honours (the rest do not apply to training).
RUNTIME_OPTIONS = ("device", "dtype", "revision", "cache_dir", "local_files_only")
LOG_FILE = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
STATE_DIR = "trainer_state"
_STATE_VERSION = 1
DEFAULT_CHUNK_TOKENS_CPU = 2048
DEFAULT_CHUNK_TOKENS_GPU = 16384
#: Files of a model folder that the run writes itself; everything else is copied from the base.
_WRITTEN = {"config.json", "generation_config.json", "model.safetensors.index.json"}


class TrainingInterrupted(Exception):
    """The caller asked the run to stop; the state up to the last step is checkpointed."""


@dataclass
class TrainResult:
    """What a fine-tuning run produced.

    Attributes:
        output: The fine-tuned model folder.
        steps: Optimizer steps taken in all (resumed steps included).
        loss: Loss of the last step (None if no step ran in this call).
        evaluations: ``{"step": ..., "metrics": {...}}`` for each held-out evaluation, the
            untrained model's (step 0) first.
        checkpoints: Checkpoint folders, oldest first.
    """

    output: Path
    steps: int
    loss: float | None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)


def finetune_embedder(
    data: str | os.PathLike[str] | Sequence[Any],
    *,
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    eval_data: str | os.PathLike[str] | None = None,
    resume: bool = False,
    options: TrainingOptions | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Fine-tune a Qwen3-Embedding model with the paper's contrastive loss.

    Args:
        data: Training data: a JSONL file (``{"query", "pos": [...], "neg": [...],
            "instruction"?}`` per line), a BEIR folder with a train split, or a list of
            :class:`~qwen3_rag.train.data.TrainExample`.
        model: Hub id or local folder of the embedding model to start from.
        output: Folder for the fine-tuned model, its checkpoints and its training log.
        eval_data: A BEIR folder evaluated (nDCG@10 and more, by :mod:`qwen3_rag.eval`) before
            training and at every checkpoint.
        resume: Continue from the last complete checkpoint in ``output``.
        options: A :class:`TrainingOptions`; keyword arguments override its fields.
        should_stop: Polled after every step; when it returns True the run checkpoints and
            raises :class:`TrainingInterrupted`.
        **kwargs: Fields of :class:`TrainingOptions`, and the runtime options ``device``,
            ``dtype``, ``revision``, ``cache_dir`` and ``local_files_only``.

    Returns:
        A :class:`TrainResult`; ``result.output`` loads with ``Qwen3Embedder``, transformers and
        sentence-transformers.

    Raises:
        ValueError: For bad data (naming the file and line), a bad option, or an output folder
            holding another run's checkpoints without ``resume``.
        TrainingInterrupted: When ``should_stop`` asked the run to stop.
    """
    return _Run(
        _EmbeddingTask, data, model, output, eval_data, resume, options, should_stop, kwargs
    ).run()


def finetune_reranker(
    data: str | os.PathLike[str] | Sequence[Any],
    *,
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    eval_data: str | os.PathLike[str] | None = None,
    resume: bool = False,
    options: TrainingOptions | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Fine-tune a Qwen3-Reranker: "yes" for each positive, "no" for each hard negative.

    The pair is the exact inference chat template; the loss is ``-log p(label)`` with ``p``
    the model's full-vocabulary probability at the answer position only. Arguments and result
    are those of :func:`finetune_embedder` (``negatives`` sets the "no" pairs per query).
    """
    return _Run(
        _RerankerTask, data, model, output, eval_data, resume, options, should_stop, kwargs
    ).run()


# -- the two tasks --------------------------------------------------------------------------
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
        self.model: Any  # the Hugging Face model (LoRA injected in place)
        self.trainable: Any  # what the optimizer and the checkpoints see

    def tokenize(self, model_ref: str | os.PathLike[str], examples: Sequence[Any]) -> None:
        raise NotImplementedError

    def load(self) -> None:
        raise NotImplementedError

    def step(self, batch: list[_Instance], rng: random.Random, negatives: int) -> tuple[float, int]:
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
        load_dtype = _weights_dtype(
            self.runtime.get("dtype", "auto"), self.device, lora=self.options.lora_rank > 0
        )
        attn = register_packed_sdpa() if self.options.packing else "sdpa"
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
            from peft import LoraConfig, get_peft_model

            missing = [
                t
                for t in opts.lora_targets
                if not any(n.split(".")[-1] == t for n, _ in model.named_modules())
            ]
            if missing:
                raise ValueError(f"lora_targets: the model has no module named {missing[0]!r}")
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
                self.trainable = get_peft_model(model, config)  # injects the adapters in place
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

    def export(self, dest: Path) -> None:
        """Write the current weights (adapters merged) as a plain model folder."""
        if self.options.lora_rank > 0:
            merged = copy.deepcopy(self.trainable).merge_and_unload()
        elif _param_dtype(self.model) != self.save_dtype:
            merged = copy.deepcopy(self.model)
        else:
            merged = self.model
        if _param_dtype(merged) != self.save_dtype:
            merged.to(self.save_dtype)
        # The packing attention is this library's runtime choice, not the checkpoint's.
        merged.config._attn_implementation = "sdpa"
        try:
            merged.save_pretrained(dest, safe_serialization=True)
        finally:
            if merged is self.model:
                self.model.config._attn_implementation = (
                    register_packed_sdpa() if self.options.packing else "sdpa"
                )
        _copy_model_files(self.model_dir, dest)
        self._write_extra_files(dest)

    def _write_extra_files(self, dest: Path) -> None:
        """Kind-specific files (sentence-transformers' configuration for the embedder)."""

    def _encoder(self) -> Callable[[list[list[int]]], torch.Tensor]:
        model = self.model
        backbone = model if self.kind == "embedding" else causal_lm_backbone(model)

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
        self.instruction = default
        docs: dict[str, int] = {}
        for ex in examples:
            for text in (*ex.pos, *ex.neg):
                docs.setdefault(text, len(docs))
        by_task: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            task = default if ex.instruction is None else ex.instruction
            by_task.setdefault(task, []).append(i)
        queries: list[list[int]] = [[] for _ in examples]
        cut = 0
        # The embedder's own tokenization: the ids embed_queries/embed_documents feed the model.
        for task, idx in by_task.items():
            ids, truncated = runtime._tokenize([examples[i].query for i in idx], task)
            cut += truncated
            for i, row in zip(idx, ids, strict=True):
                queries[i] = row
        self.table, truncated = runtime._tokenize(list(docs)) if docs else ([], 0)
        cut += truncated
        if cut:
            logger.warning(
                "%d training inputs were longer than max_length=%d and were cut",
                cut,
                self.options.max_length,
            )
        self.instances = [
            _Instance(queries[i], [docs[t] for t in ex.pos], [docs[t] for t in ex.neg])
            for i, ex in enumerate(examples)
        ]
        self.hidden_size = runtime.hidden_size
        del runtime

    def load(self) -> None:
        from transformers import AutoModel

        self._prepare_trainable(self._load(AutoModel))

    def step(self, batch: list[_Instance], rng: random.Random, negatives: int) -> tuple[float, int]:
        from .loss import contrastive_loss

        pos = [rng.choice(inst.pos) for inst in batch]
        neg = [_sample(inst.neg, negatives, rng) for inst in batch]
        rows = [inst.query for inst in batch] + [self.table[p] for p in pos]
        rows += [self.table[d] for group in neg for d in group]
        n, k = len(batch), negatives
        opts = self.options

        def loss_fn(emb: torch.Tensor) -> torch.Tensor:
            q, p = emb[:n], emb[n : 2 * n]
            hard = emb[2 * n :].reshape(n, k, -1) if k else None
            return contrastive_loss(
                q, p, hard, temperature=opts.temperature, margin=opts.margin, pos_ids=pos
            )

        encode = self._encoder()
        loss = cached_backward(
            lambda r: truncate_and_normalize(encode(r), None),
            rows,
            loss_fn,
            chunk_tokens=self.chunk_tokens,
        )
        return float(loss), sum(len(r) for r in rows)

    def _write_extra_files(self, dest: Path) -> None:
        write_sentence_transformers_files(dest, self.hidden_size)


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
            seqs, truncated = runtime._tokenize(ex.query, [*ex.pos, *ex.neg], task)
            cut += truncated
            start = len(self.table)
            self.table.extend(seqs)
            ids = list(range(start, start + len(seqs)))
            self.instances.append(_Instance([], ids[: len(ex.pos)], ids[len(ex.pos) :]))
        if cut:
            logger.warning(
                "%d training pairs were longer than max_length=%d and were cut",
                cut,
                self.options.max_length,
            )
        tok = runtime.tokenizer
        self.yes_id, self.no_id = tok.token_id(RERANK_YES), tok.token_id(RERANK_NO)
        del runtime

    def load(self) -> None:
        from transformers import AutoModelForCausalLM

        self._prepare_trainable(self._load(AutoModelForCausalLM))

    def step(self, batch: list[_Instance], rng: random.Random, negatives: int) -> tuple[float, int]:
        from .loss import reranker_loss

        pairs: list[int] = []
        labels: list[int] = []
        for inst in batch:
            pairs.append(rng.choice(inst.pos))
            labels.append(1)
            for d in _sample(inst.neg, negatives, rng):
                pairs.append(d)
                labels.append(0)
        rows = [self.table[p] for p in pairs]
        encode = self._encoder()
        head = self.model.get_output_embeddings().weight
        total = 0.0
        # Pointwise: each chunk's share of the batch mean is back-propagated on its own.
        for chunk in plan_batches([len(r) for r in rows], self.chunk_tokens, len(rows), True):
            hidden = encode([rows[i] for i in chunk])
            loss = reranker_loss(
                hidden, head, [labels[i] == 1 for i in chunk], yes_id=self.yes_id, no_id=self.no_id
            )
            (loss * len(chunk) / len(rows)).backward()
            total += float(loss.detach()) * len(chunk) / len(rows)
        return total, sum(len(r) for r in rows)


# -- the run --------------------------------------------------------------------------------
class _Schedule:
    """Linear warm-up, then linear decay to zero (a picklable-free LambdaLR factor)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


class _Run:
    def __init__(
        self,
        task_cls: type[_Task],
        data: Any,
        model: str | os.PathLike[str],
        output: str | os.PathLike[str],
        eval_data: Any,
        resume: bool,
        options: TrainingOptions | None,
        should_stop: Callable[[], bool] | None,
        kwargs: dict[str, Any],
    ) -> None:
        runtime = {k: kwargs.pop(k) for k in list(kwargs) if k in RUNTIME_OPTIONS}
        self.options = (options or TrainingOptions()).replace(**kwargs)
        self.runtime = runtime
        self.device = resolve_device(runtime.get("device"))
        self.task = task_cls(model, runtime, self.options, self.device)
        self.model_ref = model
        self.data = data
        self.output = Path(output)
        self.eval_data = eval_data
        self.resume = resume
        self.should_stop = should_stop or (lambda: False)
        self.checkpoints = self.output / CHECKPOINTS
        self.log_path = self.output / LOG_FILE

    # -- set-up ----------------------------------------------------------------------------
    def _examples(self) -> list[Any]:
        if isinstance(self.data, (str, os.PathLike)):
            from .data import load_training_data

            return list(load_training_data(self.data))
        return list(self.data)

    def _eval_dataset(self) -> Any:
        if self.eval_data is None:
            return None
        if self.task.kind != "embedding":
            raise ValueError("eval_data: held-out evaluation is available for the embedder only")
        from qwen3_rag.eval import load_beir

        return load_beir(self.eval_data)

    def _check_output(self) -> list[Path]:
        existing = _complete_checkpoints(self.checkpoints)
        if existing and not self.resume:
            raise ValueError(
                f"output {str(self.output)!r} holds checkpoints of an earlier run; pass "
                "resume=True (--resume) to continue it, or choose another output folder"
            )
        if self.output.exists() and not self.output.is_dir():
            raise ValueError(f"output {str(self.output)!r} is a file; name a folder")
        return existing

    def run(self) -> TrainResult:
        opts = self.options
        existing = self._check_output()
        examples = self._examples()
        if not examples:
            raise ValueError("the training data holds no instances")
        dataset = self._eval_dataset()
        self.task.tokenize(self.model_ref, examples)
        task = self.task
        negatives = min([opts.negatives, *(len(i.neg) for i in task.instances)])
        if negatives < opts.negatives and any(i.neg for i in task.instances):
            logger.warning(
                "negatives=%d lowered to %d: the smallest 'neg' list of the data has %d",
                opts.negatives,
                negatives,
                negatives,
            )
        if task.kind == "reranker" and negatives == 0:
            raise ValueError(
                "the reranker needs hard negatives: give every instance a 'neg' list (its "
                'documents become the "no" pairs) and negatives >= 1'
            )
        fingerprint = _fingerprint(task.table, task.instances)
        per_epoch = math.ceil(len(task.instances) / opts.batch_size)
        total = opts.max_steps or opts.epochs * per_epoch
        gc.collect()  # the tokenizing runtime's weights go before the trainable ones load
        torch.manual_seed(opts.seed)
        task.load()
        params = [p for p in task.trainable.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=opts.learning_rate, weight_decay=opts.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _Schedule(round(opts.warmup_ratio * total), total)
        )
        identity = {
            "kind": task.kind,
            "data": fingerprint,
            "options": {k: opts.to_dict()[k] for k in RESULT_OPTIONS},
        }
        start, evaluations = 0, list[dict[str, Any]]()
        if existing:
            start, evaluations = self._restore(existing[-1], identity, optimizer, scheduler)
        else:
            if self.resume:
                logger.warning("no checkpoint in %s: starting from the beginning", self.output)
            self.output.mkdir(parents=True, exist_ok=True)
            _rewrite_log(self.log_path, 0)
        if dataset is not None and not any(e["step"] == 0 for e in evaluations):
            evaluations.append(self._evaluate(None, dataset, 0))
        loss: float | None = None
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=start,
            desc=f"finetune {task.kind}",
            unit="step",
            disable=not opts.show_progress,
        )
        started = time.perf_counter()
        tokens_done = 0
        saved = [p for p in existing]
        try:
            for step in range(start, total):
                epoch, index = divmod(step, per_epoch)
                order = list(range(len(task.instances)))
                random.Random(f"{opts.seed}:epoch:{epoch}").shuffle(order)
                batch = [
                    task.instances[i]
                    for i in order[index * opts.batch_size : (index + 1) * opts.batch_size]
                ]
                t0 = time.perf_counter()
                lr = scheduler.get_last_lr()[0]
                loss, tokens = task.step(
                    batch, random.Random(f"{opts.seed}:step:{step}"), negatives
                )
                if opts.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                seconds = time.perf_counter() - t0
                tokens_done += tokens
                record = {
                    "step": step + 1,
                    "epoch": round(step / per_epoch, 4),
                    "loss": loss,
                    "learning_rate": lr,
                    "tokens": tokens,
                    "tokens_per_second": round(tokens / seconds, 1),
                    "seconds": round(seconds, 3),
                }
                _append_log(self.log_path, record)
                bar.set_postfix(
                    loss=f"{loss:.4f}", tok_s=f"{tokens_done / (time.perf_counter() - started):.0f}"
                )
                bar.update(1)
                stop = self.should_stop()
                due = opts.save_steps is not None and (step + 1) % opts.save_steps == 0
                if due or stop or step + 1 == total:
                    path = self._save(step + 1, identity, optimizer, scheduler, evaluations)
                    saved.append(path)
                    if dataset is not None:
                        evaluations.append(self._evaluate(path, dataset, step + 1))
                        _write_json(path / STATE_DIR / "evaluations.json", evaluations)
                if stop and step + 1 < total:
                    raise TrainingInterrupted(
                        f"stopped after step {step + 1} of {total}; checkpoint {path}"
                    )
        finally:
            bar.close()
        if not saved:  # resumed a run that had already finished
            saved = _complete_checkpoints(self.checkpoints)
        self._write_output(saved)
        if opts.merge_last >= 2 and dataset is not None:
            evaluations.append(self._evaluate(self.output, dataset, total, merged=True))
        return TrainResult(self.output, total, loss, evaluations, saved)

    # -- checkpoints -----------------------------------------------------------------------
    def _save(
        self,
        step: int,
        identity: dict[str, Any],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        evaluations: list[dict[str, Any]],
    ) -> Path:
        from safetensors.torch import save_file

        self.checkpoints.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints / f"step-{step:07d}"
        tmp = self.checkpoints / f".step-{step:07d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.task.export(tmp)
        state = tmp / STATE_DIR
        state.mkdir()
        weights = {
            n: p.detach().contiguous().cpu()
            for n, p in self.task.trainable.named_parameters()
            if p.requires_grad
        }
        save_file(weights, str(state / "trainable.safetensors"))
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": cuda,
            },
            state / "optimizer.pt",
        )
        _write_json(state / "state.json", {"version": _STATE_VERSION, "step": step, **identity})
        _write_json(state / "evaluations.json", evaluations)
        _fsync_tree(tmp)
        if final.exists():  # a resumed run that redoes a step after a crash mid-rename
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("checkpoint %s", final)
        return final

    def _restore(
        self, path: Path, identity: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> tuple[int, list[dict[str, Any]]]:
        from safetensors.torch import load_file

        state = json.loads((path / STATE_DIR / "state.json").read_text(encoding="utf-8"))
        for key in ("kind", "data"):
            if state.get(key) != identity[key]:
                what = "model kind" if key == "kind" else "training data (or its tokenization)"
                raise ValueError(f"cannot resume from {path}: the {what} differs from that run's")
        before = state["options"]
        changed = [k for k, v in identity["options"].items() if before.get(k) != v]
        if changed:
            was = ", ".join(f"{k}={before.get(k)!r}" for k in changed)
            raise ValueError(
                f"cannot resume from {path}: option(s) {', '.join(changed)} differ from that "
                f"run's ({was})"
            )
        weights = load_file(str(path / STATE_DIR / "trainable.safetensors"))
        params = dict(self.task.trainable.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        saved = torch.load(path / STATE_DIR / "optimizer.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        if saved["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        step = int(state["step"])
        _rewrite_log(self.log_path, step)
        evaluations = json.loads((path / STATE_DIR / "evaluations.json").read_text("utf-8"))
        logger.info("resuming from %s (step %d)", path, step)
        return step, [e for e in evaluations if e["step"] <= step]

    def _evaluate(
        self, folder: Path | None, dataset: Any, step: int, merged: bool = False
    ) -> dict[str, Any]:
        from qwen3_rag.core import Qwen3Embedder
        from qwen3_rag.eval import evaluate_embedder

        embedder = Qwen3Embedder(
            self.model_ref if folder is None else folder,
            device=str(self.device),
            max_length=self.options.max_length,
            show_progress=False,
            **{k: v for k, v in self.runtime.items() if k != "device"},
        )
        metrics = evaluate_embedder(
            embedder, dataset, instruction=getattr(self.task, "instruction", None)
        )
        del embedder
        record = {"step": step, "metrics": metrics, **({"merged": True} if merged else {})}
        _append_log(
            self.log_path, {"step": step, "eval": metrics, **({"merged": True} if merged else {})}
        )
        logger.info(
            "evaluation at step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        )
        return record

    def _write_output(self, saved: list[Path]) -> None:
        """The final model: the last checkpoint, or a slerp merge of the last ones."""
        tmp = self.output / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        k = self.options.merge_last
        if k >= 2:
            if len(saved) < k:
                raise ValueError(
                    f"merge_last={k} needs {k} checkpoints; the run saved "
                    f"{len(saved)} (lower save_steps)"
                )
            from .merge import slerp_merge

            slerp_merge([str(p) for p in saved[-k:]], out=tmp)
        else:
            shutil.copytree(saved[-1], tmp, ignore=shutil.ignore_patterns(STATE_DIR))
        for item in tmp.iterdir():
            target = self.output / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        tmp.rmdir()


# -- helpers --------------------------------------------------------------------------------
def _sample(pool: list[int], k: int, rng: random.Random) -> list[int]:
    """``k`` items of ``pool``: without repeats when it has enough, else all and then repeats."""
    if k == 0:
        return []
    if len(pool) >= k:
        return rng.sample(pool, k)
    return pool + [rng.choice(pool) for _ in range(k - len(pool))]


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


def _copy_model_files(source: Path, dest: Path) -> None:
    """Tokenizer and other side files of the base model (weights and config are written)."""
    for item in source.iterdir():
        if item.name in _WRITTEN or item.suffix == ".safetensors" or item.name.startswith("."):
            continue
        if item.name.lower().startswith("readme") or (dest / item.name).exists():
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        elif item.is_file():
            shutil.copy2(item, dest / item.name)


def write_sentence_transformers_files(dest: Path, hidden_size: int) -> None:
    """sentence-transformers' layout for last-token pooling, unless the base model had one.

    The query prompt is the embedder's template with an empty query (the model card's
    ``prompt_name="query"``); documents get none.
    """
    from qwen3_rag.core.spec import DEFAULT_TASK

    if (dest / "modules.json").exists():
        return
    _write_json(
        dest / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
        ],
    )
    (dest / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        dest / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
    )
    (dest / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        dest / "config_sentence_transformers.json",
        {
            "prompts": {"query": format_query("", DEFAULT_TASK), "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def _complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints (renamed from their temporary name), oldest first."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and (p / STATE_DIR / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _fingerprint(table: list[list[int]], instances: list[_Instance]) -> str:
    digest = hashlib.sha256()
    for row in table:
        digest.update(json.dumps(row).encode())
    for inst in instances:
        digest.update(json.dumps([inst.query, inst.pos, inst.neg]).encode())
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _rewrite_log(path: Path, step: int) -> None:
    """Keep the log's records up to ``step`` (those after it are redone on resume)."""
    kept: list[str] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError):
                continue  # a line cut by the kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    """Flush a checkpoint's files before its rename makes it count as complete."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
