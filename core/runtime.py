"""What the embedder and the reranker share: options, loading, input checks, the batch loop."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import batch_cost, plan_batches, run_with_oom_backoff
from .config import C, RuntimeConfig, build_config
from .errors import InvalidInputError, ModelLoadError, NonFiniteOutputError
from .loading import (
    MODEL_CACHE,
    LoadedModel,
    check_qwen3_config,
    load_tokenizer,
    resolve_attn_implementation,
    resolve_device,
    resolve_dtype,
    resolve_model_dir,
    transformers_load,
)
from .packing import register_packed_sdpa
from .spec import describe_model
from .tokenization import SafeTokenizer

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Characters kept per allowed token before tokenizing. A token covers a few characters on
#: average and rarely more than a few dozen, so this cap never changes what ``max_length``
#: tokens would keep, yet bounds the work a multi-megabyte string can cause.
CHARS_PER_TOKEN_CAP = 64
DEFAULT_BATCH_TOKENS_CPU = 1024
DEFAULT_BATCH_TOKENS_GPU = 16384
#: With ``show_progress=None``, bars appear from this many batches on, and only where the
#: library's logger is enabled for INFO (quiet by default, as sentence-transformers).
AUTO_PROGRESS_MIN_BATCHES = 8


def check_texts(texts: object, name: str) -> list[str]:
    """Require a list (or tuple) of strings; name the first bad item's index and type.

    Raises:
        TypeError: For a bare string, ``None``, a non-sequence, or a non-string item.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"{name} must be a list of strings, got a single {type(texts).__name__}; "
            f"wrap it in a list: [{name[:-1] if name.endswith('s') else name}]"
        )
    if not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__}")
    return list(texts)


def check_instruction(instruction: object, name: str = "instruction") -> str:
    """Require a string instruction (``""`` is allowed and means none)."""
    if not isinstance(instruction, str):
        raise TypeError(f"{name} must be a str, got {type(instruction).__name__}")
    return instruction


def make_config(cls: type[C], config: C | None, options: dict[str, Any]) -> C:
    """The constructor's config: ``config`` (or defaults) with keyword ``options`` applied.

    Raises:
        ValueError: For ``trust_remote_code=True``, which is refused, or an invalid value.
        TypeError: For an unknown option.
    """
    if options.pop("trust_remote_code", False):
        raise InvalidInputError(
            "trust_remote_code=True is refused: Qwen3 is native in transformers, and remote "
            "code would run arbitrary Python from the model repository"
        )
    return build_config(cls, config, options)


def check_positive_int(value: object, name: str) -> int:
    """Require a positive ``int`` (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
    return value


def resolve_max_chars(config: RuntimeConfig) -> int:
    """Characters kept per input before tokenizing: ``max_chars``, else 64 per token allowed."""
    if config.max_chars is not None:
        return config.max_chars
    return CHARS_PER_TOKEN_CAP * config.max_length


def cap_chars(texts: list[str], max_chars: int) -> tuple[list[str], set[int]]:
    """``texts`` cut to ``max_chars`` characters each, and the indices of those that were cut."""
    capped = {i for i, t in enumerate(texts) if len(t) > max_chars}
    if not capped:
        return texts, capped
    return [t[:max_chars] if i in capped else t for i, t in enumerate(texts)], capped


def warn_truncated(
    count: int,
    total: int,
    max_length: int,
    *,
    unit: str = "inputs",
    remedy: str = "split longer texts or raise max_length",
) -> None:
    """One warning for the ``count`` of ``total`` inputs cut to ``max_length`` tokens (if any).

    The one wording of this warning: the indexer passes its ``unit`` ("chunks") and ``remedy``.
    """
    if count:
        logger.warning(
            "%d of %d %s were longer than max_length=%d tokens and were truncated; %s to keep "
            "all text",
            count,
            total,
            unit,
            max_length,
            remedy,
        )


@dataclass(frozen=True)
class Encoded:
    """Inputs as the model sees them, and how many were cut to fit ``max_length``.

    What the encode methods of :class:`~qwen3_rag.core.Qwen3Embedder` and
    :class:`~qwen3_rag.core.Qwen3Reranker` return: the exact ids of the official recipe, ready
    for a forward, and the truncation count the caller reports (they log nothing themselves).

    Attributes:
        ids: One list of token ids per input, in input order.
        truncated: How many inputs were cut (to ``max_length`` tokens or ``max_chars``).
    """

    ids: list[list[int]]
    truncated: int


def _check_official_kind(model: str | os.PathLike[str], kind: str) -> None:
    """Refuse an official checkpoint of the other kind by its hub id, before any download.

    Loaded as the wrong kind, either checkpoint runs without error and gives meaningless
    numbers, so this is the one chance to say so.
    """
    described = describe_model(model)
    if described is not None and described.kind != kind:
        right = "Qwen3Embedder" if described.kind == "embedding" else "Qwen3Reranker"
        raise ModelLoadError(
            f"model={described.model!r} is a {described.kind} model, and this class runs "
            f"{kind} models; load it with {right}"
        )


class Qwen3Runtime:
    """Base class: loads a Qwen3 checkpoint once per process and runs token-budget batches.

    Subclasses set ``_kind`` and implement ``_build``, which turns the loaded config, weights and
    tokenizer into a :class:`LoadedModel`.

    Instances with the same weights, device, dtype and kernel share one :class:`LoadedModel`
    through :data:`~qwen3_rag.core.loading.MODEL_CACHE` (freed with the last of them); all other
    state, the token budget after an out-of-memory retry included, is per instance.
    """

    _kind = "base"

    def __init__(self, model: str | os.PathLike[str], config: RuntimeConfig) -> None:
        #: The options in effect (frozen); adapters and stores read them from here.
        self.config = config
        self.max_length = config.max_length
        self.max_batch_size = config.max_batch_size
        self.max_chars = resolve_max_chars(config)
        self.show_progress = config.show_progress
        device, dtype, batch_tokens = config.device, config.dtype, config.batch_tokens
        revision, compile = config.revision, config.compile
        _check_official_kind(model, self._kind)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.attn_implementation = resolve_attn_implementation(
            config.attn_implementation, self.device
        )
        self.revision = revision
        self.model_dir: Path = resolve_model_dir(
            model,
            revision=revision,
            cache_dir=config.cache_dir,
            local_files_only=config.local_files_only,
        )
        self.model_name = os.fspath(model)
        # The checkpoint's config.json is read before any weight is: options that conflict
        # with it fail here, not after a multi-GB load.
        self._model_config = check_qwen3_config(self.model_dir)
        self._check_model_config(self._model_config)
        # Measured on 2 CPU cores with packed batches (0.6B, benchmarks/ inputs): embedding
        # is flat from 512 to 4k tokens per forward, reranking peaks at 1k (2.5 pairs/s, 2.0 at
        # 4k, as the prefix-joined keys leave the caches); GPUs need large batches to fill their
        # tensor cores.
        self._batch_tokens = batch_tokens or (
            DEFAULT_BATCH_TOKENS_CPU if self.device.type == "cpu" else DEFAULT_BATCH_TOKENS_GPU
        )
        #: Token budget that last worked after an out-of-memory retry (None: never reduced).
        #: Per instance: an out-of-memory error tells what fitted at that moment under this
        #: instance's options; other users of the same weights keep their own budget, and a
        #: new instance starts from the configured one.
        self._reduced_budget: int | None = None
        key = (
            self._kind,
            str(self.model_dir),
            revision,
            str(self.device),
            str(self.dtype),
            self.attn_implementation,
            bool(compile),
        )
        self.compile = bool(compile)
        # Packed batches (no padding, see packing.py) are measured on CPUs: 15-20% faster on
        # mixed-length prose. GPUs keep padded batches until the per-input attention loop is
        # measured there; compiled models keep them too, as each new packing would recompile.
        # The choice follows from the registry key, so every sharer agrees on it.
        self.packed = (
            self.device.type == "cpu" and self.attn_implementation == "sdpa" and not self.compile
        )
        self._loaded: LoadedModel = MODEL_CACHE.get_or_load(key, lambda: self._load(key))

    # -- loading ---------------------------------------------------------------------------
    def _load(self, key: tuple[Any, ...]) -> LoadedModel:
        config = self._model_config
        tokenizer = load_tokenizer(self.model_dir)
        logger.info(
            "loading %s from %s on %s (%s, %s)",
            self._kind,
            self.model_dir,
            self.device,
            self.dtype,
            self.attn_implementation,
        )
        # One load at a time; transformers' "Loading weights" bar only when asked for.
        with transformers_load(self.show_progress is True):
            loaded = self._build(key, config, tokenizer)
        if self.compile:
            # Fuses the norms, RoPE and activations that dominate a GPU forward (measured
            # 1.7-1.8x on an H100 at 512 tokens); dynamic shapes avoid one compile per shape.
            # torch.compile of a Module returns an OptimizedModule, itself a Module.
            loaded.model = cast(torch.nn.Module, torch.compile(loaded.model, dynamic=True))
        return loaded

    def _build(self, key: tuple[Any, ...], config: Any, tokenizer: SafeTokenizer) -> LoadedModel:
        raise NotImplementedError

    def _check_model_config(self, model_config: Any) -> None:
        """Check the options against the checkpoint's config before loading (subclass hook)."""

    @property
    def _load_attn_implementation(self) -> str:
        """What ``from_pretrained`` gets: SDPA with packing support, or the resolved kernel."""
        return register_packed_sdpa() if self.packed else self.attn_implementation

    @property
    def tokenizer(self) -> SafeTokenizer:
        """The tokenizer pair this model uses (shared, read-only)."""
        tok: SafeTokenizer = self._loaded.extras["tokenizer"]
        return tok

    @property
    def hidden_size(self) -> int:
        """Width of the model's hidden state (see :data:`~qwen3_rag.core.spec.OFFICIAL_MODELS`)."""
        return int(self._loaded.extras["hidden_size"])

    @property
    def batch_tokens(self) -> int:
        """Tokens computed per forward (padding included); lowered after an out-of-memory retry."""
        reduced = self._reduced_budget
        return min(self._batch_tokens, reduced) if reduced else self._batch_tokens

    # -- the batch loop --------------------------------------------------------------------
    def _cap_chars(self, texts: list[str]) -> tuple[list[str], set[int]]:
        return cap_chars(texts, self.max_chars)

    def warn_truncated(self, count: int, total: int) -> None:
        """Log the one truncation warning for ``count`` of ``total`` inputs (none if 0)."""
        warn_truncated(count, total, self.max_length)

    def plan_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Token-budget batches of input indices, with this instance's budget and packing.

        Args:
            lengths: Token count of each input (after any shared prefix).

        Returns:
            Lists of indices into ``lengths``; every index appears once.
        """
        return plan_batches(lengths, self.batch_tokens, self.max_batch_size, self.packed)

    def run_batched(
        self,
        lengths: Sequence[int],
        run: Callable[[list[int]], list[T]],
        desc: str,
    ) -> list[T]:
        """Run ``run`` over token-budget batches and return results in input order.

        An out-of-memory error on an accelerator splits the batch and lowers this instance's
        budget (see :func:`~qwen3_rag.core.batching.run_with_oom_backoff`).

        Args:
            lengths: Token count of each input.
            run: Called with a batch's indices; returns one result per index, in order.
            desc: The progress bar's label.

        Returns:
            One result per input, in input order.
        """
        batches = self.plan_batches(lengths)
        show = (
            self.show_progress
            if self.show_progress is not None
            else len(batches) >= AUTO_PROGRESS_MIN_BATCHES and logger.isEnabledFor(logging.INFO)
        )
        results: list[T | None] = [None] * len(lengths)

        def remember(rows: int) -> None:
            # The ``rows`` longest inputs of the batch bound the half that is retried next;
            # what they cost becomes the budget.
            longest = sorted((lengths[i] for i in batch), reverse=True)[:rows]
            budget = max(1, batch_cost(longest, self.packed))
            self._reduced_budget = min(self._reduced_budget or budget, budget)

        advice = self._oom_advice()
        with tqdm(total=len(lengths), desc=desc, unit="text", disable=not show) as bar:
            for batch in batches:
                for i, out in zip(
                    batch, run_with_oom_backoff(batch, run, remember, advice), strict=False
                ):
                    results[i] = out
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    def _oom_advice(self) -> str:
        return (
            f"Lower max_length (now {self.max_length}), use dtype='bfloat16', "
            "or free accelerator memory."
        )

    def check_finite(self, values: torch.Tensor, what: str) -> None:
        """Raise :class:`NonFiniteOutputError` if ``values`` holds NaN or inf (named ``what``)."""
        if not bool(torch.isfinite(values).all()):
            hint = (
                " float16 overflows on some inputs for Qwen3 models; use dtype='bfloat16' or "
                "'float32'."
                if self.dtype == torch.float16
                else " Check the checkpoint's weights."
            )
            raise NonFiniteOutputError(
                f"the model produced NaN or infinite {what} (dtype {str(self.dtype)[6:]}).{hint}"
            )

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad id lists into ``input_ids`` and ``attention_mask`` on the model's device."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self._loaded.extras["pad_id"], dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, row in enumerate(rows):
            if row:
                ids[r, width - len(row) :] = row
                mask[r, width - len(row) :] = 1
        return (
            torch.from_numpy(ids).to(self.device, non_blocking=True),
            torch.from_numpy(mask).to(self.device, non_blocking=True),
        )

    @property
    def _lock(self) -> threading.Lock:
        return self._loaded.lock

    def __reduce__(self) -> tuple[Any, ...]:
        # Weights and locks cannot be pickled: the other side rebuilds from the name and the
        # config, loading the model (or sharing it, in the same process).
        return (_rebuild, (type(self), self.model_name, self.config))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model_name!r}, device={str(self.device)!r}, "
            f"dtype={str(self.dtype)[6:]!r}, max_length={self.max_length})"
        )


def _rebuild(cls: type[Qwen3Runtime], model: str, config: RuntimeConfig) -> Qwen3Runtime:
    """Unpickle a runtime: build it again from its model name and config."""
    return cls(model, config=config)
