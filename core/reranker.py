"""Qwen3-Reranker: the official chat template, a float32 yes/no head, shared-prefix reuse."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .compat import (
    cache_forward_kwargs,
    causal_lm_backbone,
    freeze_prefix_cache,
    new_prefix_cache,
)
from .config import RerankerConfig
from .errors import ModelLoadError, OutOfMemoryError
from .loading import LoadedModel, from_pretrained_kwargs
from .packing import pack, packed_model_kwargs
from .pooling import yes_no_score
from .runtime import (
    Qwen3Runtime,
    check_instruction,
    check_positive_int,
    check_texts,
    make_config,
)
from .spec import (
    DEFAULT_RERANKER_MODEL,
    PAD_TOKEN,
    RERANK_NO,
    RERANK_PREFIX,
    RERANK_SUFFIX,
    RERANK_YES,
    format_rerank_body,
)
from .tokenization import SafeTokenizer


@dataclass(frozen=True)
class RerankResult:
    """One reranked document.

    Attributes:
        index: Position of the document in the input list.
        score: P("yes"), in [0, 1].
        document: The document text.
    """

    index: int
    score: float
    document: str


class Qwen3Reranker(Qwen3Runtime):
    r"""Qwen3-Reranker, scoring exactly as the model card, without its vocabulary-sized logits.

    Each pair is ``prefix + "<Instruct>: …\\n<Query>: …\\n<Document>: …" + suffix``; the score is
    ``sigmoid(h · (W_yes − W_no))`` in float32 with ``h`` the final hidden state of the last
    token, which equals the card's softmax over the "yes"/"no" logits. Only the body is cut to
    fit ``max_length``; prefix and suffix always stay whole.

    The system prompt, instruction and query are the same for every document of a call, so their
    key/value cache is computed once and only each document and the suffix run per pair
    (``share_prefix=False`` runs whole pairs). The ids fed to the model are the official ones
    either way.

    Args:
        model: Hub id or local folder of a Qwen3-Reranker checkpoint (safetensors).
        config: A :class:`~qwen3_rag.core.RerankerConfig`; keyword ``options`` override its fields.
        **options: Any field of :class:`~qwen3_rag.core.RerankerConfig` (``device``, ``dtype``,
            ``max_length``, ``instruction``, ...), where each option is documented once.
            ``trust_remote_code=True`` is refused.

    Raises:
        ModelLoadError: If the model cannot be found, is not a safe Qwen3 checkpoint, or its
            tokenizer has no single "yes"/"no" tokens.
        ValueError: For an invalid option (the message names it).
        TypeError: For an unknown option.

    Example:
        >>> rr = Qwen3Reranker("Qwen/Qwen3-Reranker-0.6B")  # doctest: +SKIP
        >>> rr.rerank("capital of China?", ["Beijing is the capital.", "Gravity."])[0].index
        0
    """

    _kind = "reranker"

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_RERANKER_MODEL,
        *,
        config: RerankerConfig | None = None,
        **options: Any,
    ) -> None:
        cfg = make_config(RerankerConfig, config, options)
        self.instruction = cfg.instruction
        self.share_prefix = cfg.share_prefix
        super().__init__(model, cfg)
        self.config: RerankerConfig = cfg
        fixed = len(self._prefix_ids) + len(self._suffix_ids)
        if self.max_length <= fixed:
            raise ValueError(
                f"max_length={self.max_length} leaves no room for the query and document: the "
                f"reranker template alone takes {fixed} tokens"
            )

    def _build(self, key: tuple[Any, ...], config: Any, tokenizer: SafeTokenizer) -> LoadedModel:
        from transformers import AutoModelForCausalLM

        yes_id, no_id = tokenizer.token_id(RERANK_YES), tokenizer.token_id(RERANK_NO)
        for word, token_id in ((RERANK_YES, yes_id), (RERANK_NO, no_id)):
            if tokenizer.encode_plain([word])[0] != [token_id]:
                raise ModelLoadError(
                    f"{str(self.model_dir)!r}: {word!r} is not a single token in this tokenizer, "
                    "so the yes/no score is undefined; is this a Qwen3-Reranker checkpoint?"
                )
        causal = AutoModelForCausalLM.from_pretrained(
            self.model_dir, **from_pretrained_kwargs(self.dtype, self._load_attn_implementation)
        )
        weight = causal.get_output_embeddings().weight
        # One float32 row replaces the 151,669-row LM head; built from the checkpoint's own
        # precision so the difference is not rounded a second time.
        head = (weight[yes_id].float() - weight[no_id].float()).detach().to(self.device)
        backbone = causal_lm_backbone(causal)
        del causal, weight  # an untied LM head (8B) is freed here
        backbone.to(self.device).eval()
        backbone.requires_grad_(False)
        return LoadedModel(
            key=key,
            model=backbone,
            extras={
                "tokenizer": tokenizer,
                "head": head,
                "pad_id": tokenizer.token_id(PAD_TOKEN),
                "prefix_ids": tokenizer.encode_template(RERANK_PREFIX),
                "suffix_ids": tokenizer.encode_template(RERANK_SUFFIX),
                "hidden_size": int(config.hidden_size),
            },
        )

    @property
    def _prefix_ids(self) -> list[int]:
        ids: list[int] = self._loaded.extras["prefix_ids"]
        return ids

    @property
    def _suffix_ids(self) -> list[int]:
        ids: list[int] = self._loaded.extras["suffix_ids"]
        return ids

    # -- public API ------------------------------------------------------------------------
    def score(
        self, query: str, documents: list[str], instruction: str | None = None
    ) -> list[float]:
        """Relevance of each document to ``query``, in input order.

        Args:
            query: The query.
            documents: Texts to score.
            instruction: Instruction for this call; None uses the reranker's default.

        Returns:
            P("yes") for each document, floats in [0, 1].

        Raises:
            TypeError: If ``query`` or ``instruction`` is not a string, or ``documents`` is not
                a list of strings.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        docs = check_texts(documents, "documents")
        task = self.instruction if instruction is None else check_instruction(instruction)
        if not docs:
            return []
        seqs, truncated = self._tokenize(query, docs, task)
        self._warn_truncated(truncated, len(docs))
        shared = _common_prefix_len(seqs) if self.share_prefix else 0
        cache = self._prefix_cache(seqs[0][:shared]) if shared else None
        scores = self._run_batched(
            [len(s) - shared for s in seqs],
            lambda batch: self._forward(seqs, shared, cache, batch),
            "rerank",
        )
        # One finite check and one device-to-host copy for the whole call.
        stacked = torch.stack(scores)
        self._check_finite(stacked, "scores")
        return [float(s) for s in stacked.cpu().tolist()]

    def rerank(
        self,
        query: str,
        documents: list[str],
        top_n: int | None = None,
        instruction: str | None = None,
        score_threshold: float | None = None,
    ) -> list[RerankResult]:
        """Documents sorted by relevance, best first; ties keep input order.

        Args:
            query: The query.
            documents: Texts to rank.
            top_n: Keep this many results; None keeps all.
            instruction: Instruction for this call; None uses the reranker's default.
            score_threshold: Drop results scoring below this (before ``top_n`` applies).

        Returns:
            :class:`RerankResult` items with ``index``, ``score`` and ``document``.

        Raises:
            ValueError: If ``top_n`` is not a positive int or None, or ``score_threshold`` is
                not a finite number in [0, 1] or None.
            TypeError: As :meth:`score`.
        """
        if top_n is not None:
            check_positive_int(top_n, "top_n")
        if score_threshold is not None:
            check_score_threshold(score_threshold)
        scores = self.score(query, documents, instruction)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        if score_threshold is not None:
            order = [i for i in order if scores[i] >= score_threshold]
        return [RerankResult(i, scores[i], documents[i]) for i in order[:top_n]]

    def encode_ids(
        self, query: str, documents: list[str], instruction: str | None = None
    ) -> list[list[int]]:
        """The exact token ids the model sees for each (query, document) pair."""
        task = self.instruction if instruction is None else check_instruction(instruction)
        return self._tokenize(query, check_texts(documents, "documents"), task)[0]

    # -- internals -------------------------------------------------------------------------
    def _tokenize(self, query: str, docs: list[str], task: str) -> tuple[list[list[int]], int]:
        bodies, capped = self._cap_chars([format_rerank_body(query, d, task) for d in docs])
        # The body is user text: encoded with no added tokens, so "<|im_end|>" in a document
        # stays text and cannot close the user turn. Only the template owns control tokens.
        ids = self.tokenizer.encode_plain(bodies)
        prefix, suffix = self._prefix_ids, self._suffix_ids
        room = self.max_length - len(prefix) - len(suffix)
        truncated = sum(1 for i, row in enumerate(ids) if len(row) > room or i in capped)
        return [prefix + row[:room] + suffix for row in ids], truncated

    def _prefix_cache(self, ids: list[int]) -> Any:
        tensor = torch.tensor([ids], dtype=torch.long, device=self.device)
        cache = new_prefix_cache()
        try:
            with self._lock, torch.inference_mode():
                self._loaded.model(input_ids=tensor, **cache_forward_kwargs(cache))
        except torch.cuda.OutOfMemoryError as e:  # one row: nothing left to split
            raise OutOfMemoryError(
                f"out of accelerator memory on the shared prefix ({len(ids)} tokens). "
                f"{self._oom_advice()}"
            ) from e
        # Read-only from here: one prefix serves every batch, storing none of their states.
        freeze_prefix_cache(cache)
        return cache

    def _forward(
        self, seqs: list[list[int]], shared: int, cache: Any, batch: list[int]
    ) -> list[torch.Tensor]:
        rows = [seqs[i][shared:] for i in batch]
        model = self._loaded.model
        if self._packed:
            # Each row continues the cached prefix (if any): positions start after it.
            input_ids, positions, segments = pack(rows, self.device, first_position=shared)
            with self._lock, torch.inference_mode():
                out = model(
                    input_ids=input_ids,
                    position_ids=positions,
                    **cache_forward_kwargs(cache),
                    **packed_model_kwargs(segments),
                )
                hidden = out.last_hidden_state[0, segments.last_positions].float()
                scores = yes_no_score(hidden, self._loaded.extras["head"])
            return list(scores.unbind(0))
        input_ids, mask = self._left_pad(rows)
        with self._lock, torch.inference_mode():
            if cache is None:
                attn = None if bool(mask.all()) else mask
                out = model(input_ids=input_ids, attention_mask=attn, **cache_forward_kwargs(None))
            else:
                # Rows continue the cached prefix: positions count on from it, and the prefix
                # is visible to every row (ones in the mask), the row's own padding is not.
                positions = (shared + mask.cumsum(dim=1) - 1).clamp(min=shared)
                full_mask = torch.cat([mask.new_ones((len(rows), shared)), mask], dim=1)
                out = model(
                    input_ids=input_ids,
                    attention_mask=full_mask,
                    position_ids=positions,
                    **cache_forward_kwargs(cache),
                )
            # Left padding: the last position is each row's final real token.
            hidden = out.last_hidden_state[:, -1].float()
            scores = yes_no_score(hidden, self._loaded.extras["head"])
        return list(scores.unbind(0))


def check_score_threshold(value: object) -> float:
    """Require a real number in [0, 1] (the range of P("yes")); ``bool`` is refused.

    Example:
        >>> check_score_threshold(0.5)
        0.5
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 <= float(value) <= 1.0
    ):
        raise ValueError(f"score_threshold must be a number in [0, 1] or None, got {value!r}")
    return float(value)


def _common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest shared token prefix, leaving every sequence at least one token."""
    first = seqs[0]
    limit = min(len(s) for s in seqs) - 1
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n
