"""Qwen3-Reranker: the official chat template, a float32 yes/no head, shared-prefix reuse."""

from __future__ import annotations

import logging
import math
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
from .errors import InvalidInputError, ModelLoadError, OutOfMemoryError
from .loading import LoadedModel, from_pretrained_kwargs
from .packing import pack, packed_model_kwargs
from .pooling import yes_no_logit, yes_probability
from .runtime import (
    CHARS_PER_TOKEN_CAP,
    Encoded,
    Qwen3Runtime,
    cap_chars,
    check_instruction,
    check_positive_int,
    check_texts,
    make_config,
    resolve_max_chars,
    warn_truncated,
)
from .spec import (
    DEFAULT_RERANKER_MODEL,
    PAD_TOKEN,
    RERANK_NO,
    RERANK_PREFIX,
    RERANK_SUFFIX,
    RERANK_YES,
)
from .tokenization import SafeTokenizer

logger = logging.getLogger(__name__)

# The pair body "<Instruct>: {i}\n<Query>: {q}\n<Document>: {d}" is tokenized in three
# pieces, cut where the Qwen2 pre-tokenizer always ends a piece, whatever the user's text:
# after "<Query>:" (a run of punctuation never takes the space that follows it) and after the
# newline before "<Document>" (a piece that holds a newline ends at the last newline of its
# run). NFC never joins across these points either (" " and "<" compose with nothing before
# them), and no added token spans them (none holds ":", " " or a newline). So the three id
# lists joined are exactly the ids of the whole body, and the query is tokenized once per call
# instead of once per document.
_INSTRUCTION_PIECE = "<Instruct>: {instruction}\n<Query>:"
_QUERY_PIECE = " {query}\n"
_DOCUMENT_PIECE = "<Document>: {document}"


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

    A pair that fits ``max_length`` gets exactly the card's ids. A longer one is cut at its end,
    as the card does, which cuts the document, but only while the instruction and query stay
    within ``max_query_share`` of the window (``max_length`` minus the template); past that the
    query is cut instead, so a long query never pushes the document out of the pair. One warning
    per call says so. The instruction is never cut.

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
        self.max_query_share = cfg.max_query_share
        self._prompt = RerankPrompt(self.tokenizer, cfg)

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
                "hidden_size": int(config.hidden_size),
            },
        )

    @property
    def _prefix_ids(self) -> list[int]:
        return self._prompt.prefix_ids

    @property
    def _suffix_ids(self) -> list[int]:
        return self._prompt.suffix_ids

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
            ValueError: If the instruction leaves no room for a document token within
                ``max_length`` (the message gives the sizes).
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        docs = check_texts(documents, "documents")
        task = self.instruction if instruction is None else check_instruction(instruction)
        if not docs:
            return []
        seqs, _ = self._tokenize(query, docs, task, warn=True)
        return self.score_encoded(Encoded(seqs, 0))[0]

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
        check_ranking(top_n, score_threshold)
        return ranked(self.score(query, documents, instruction), documents, top_n, score_threshold)

    def encode_ids(
        self, query: str, documents: list[str], instruction: str | None = None
    ) -> list[list[int]]:
        """The exact token ids the model sees for each (query, document) pair."""
        return self.encode_pairs(query, documents, instruction).ids

    def encode_pairs(
        self,
        query: str,
        documents: list[str],
        instruction: str | None = None,
        *,
        warn: bool = False,
    ) -> Encoded:
        """Every (query, document) pair as the model sees it, and how many pairs were cut.

        Args:
            query: The query.
            documents: The documents, one pair each.
            instruction: As in :meth:`score`.
            warn: Log the warning :meth:`score` logs when pairs are cut (the query's cut
                explained); by default nothing is logged and the caller reports
                :attr:`Encoded.truncated`.

        Raises:
            TypeError: As :meth:`score`.
            ValueError: If the instruction leaves no room for a document token.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        task = self.instruction if instruction is None else check_instruction(instruction)
        docs = check_texts(documents, "documents")
        if not docs:
            return Encoded([], 0)
        return Encoded(*self._tokenize(query, docs, task, warn=warn))

    def score_encoded(self, encoded: Encoded) -> tuple[list[float], list[float]]:
        """P(yes) and log-odds of already encoded pairs (:meth:`encode_pairs`), in input order.

        The pairs' common prefix (system prompt, instruction, query) runs once when
        ``share_prefix`` is on, as in :meth:`score`.
        """
        seqs = encoded.ids
        if not seqs:
            return [], []
        shared = common_prefix_len(seqs) if self.share_prefix else 0
        cache = self.prefix_cache(seqs[0][:shared]) if shared else None
        logits = self.run_batched(
            [len(s) - shared for s in seqs],
            lambda batch: self.forward_logits(seqs, shared, cache, batch),
            "rerank",
        )
        return self.scores(torch.stack(logits))

    def scores(self, logits: torch.Tensor) -> tuple[list[float], list[float]]:
        """P(yes) and the log-odds they come from, for :meth:`forward_logits`'s stacked outputs.

        One finite check and one device-to-host copy for the whole call. The server scores
        here too, so its P(yes) are these bits; its TEI ``raw_scores`` are the log-odds.

        Raises:
            NonFiniteOutputError: If a log-odds value is NaN or infinite.
        """
        self.check_finite(logits, "scores")
        both = torch.stack([yes_probability(logits), logits]).cpu().tolist()
        return [float(s) for s in both[0]], [float(z) for z in both[1]]

    def _tokenize(
        self, query: str, docs: list[str], task: str, *, warn: bool = False
    ) -> tuple[list[list[int]], int]:
        """The ids of every pair, and how many pairs were cut (see :meth:`RerankPrompt.encode`)."""
        return self._prompt.encode(query, docs, task, warn=warn)

    def prefix_cache(self, ids: list[int]) -> Any:
        """The key/value cache of ``ids``, read-only, for :meth:`forward_logits` to continue.

        Raises:
            OutOfMemoryError: If even this one row does not fit on the accelerator.
        """
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

    def forward_logits(
        self, seqs: list[list[int]], shared: int, cache: Any, batch: list[int]
    ) -> list[torch.Tensor]:
        """The log-odds of "yes" (float32 scalars) of the pairs ``batch`` indexes in ``seqs``.

        Args:
            seqs: Encoded pairs (:meth:`encode_pairs`).
            shared: Leading tokens every pair shares and ``cache`` holds (0: no cache).
            cache: :meth:`prefix_cache` of ``seqs[0][:shared]``, or None.
            batch: Indices of the pairs to run in this forward (:meth:`plan_batches`).
        """
        rows = [seqs[i][shared:] for i in batch]
        model = self._loaded.model
        if self.packed:
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
                logits = yes_no_logit(hidden, self._loaded.extras["head"])
            return list(logits.unbind(0))
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
            logits = yes_no_logit(hidden, self._loaded.extras["head"])
        return list(logits.unbind(0))


class RerankPrompt:
    r"""The reranker's input ids: the model card's chat template around each pair, cut to fit.

    Each pair is ``prefix + "<Instruct>: …\\n<Query>: …\\n<Document>: …" + suffix`` (see
    :class:`Qwen3Reranker` for how a pair longer than ``max_length`` is cut). It needs only the
    tokenizer, so fine-tuning builds exactly the ids inference will see without loading the
    inference model.

    Args:
        tokenizer: The checkpoint's tokenizer (:func:`~qwen3_rag.core.loading.load_tokenizer`).
        config: ``max_length``, ``max_chars``, ``max_query_share`` and ``instruction`` are read.

    Raises:
        ValueError: If ``max_length`` leaves no room for a document token after the chat
            template and the query's share, or the configured instruction leaves none.
    """

    def __init__(self, tokenizer: SafeTokenizer, config: RerankerConfig) -> None:
        self.tokenizer = tokenizer
        self.max_length = config.max_length
        self.max_chars = resolve_max_chars(config)
        self.max_query_share = config.max_query_share
        self.prefix_ids = tokenizer.encode_template(RERANK_PREFIX)
        self.suffix_ids = tokenizer.encode_template(RERANK_SUFFIX)
        self.newline_ids = tokenizer.encode_plain(["\n"])[0]
        self.document_label_ids = tokenizer.encode_plain([_DOCUMENT_PIECE.format(document="")])[0]
        fixed = len(self.prefix_ids) + len(self.suffix_ids)
        if self.max_length <= fixed:
            raise InvalidInputError(
                f"max_length={self.max_length} leaves no room for the query and document: the "
                f"reranker template alone takes {fixed} tokens"
            )
        window = self.max_length - fixed
        least = window - self.query_budget
        if least < self.document_floor:
            raise InvalidInputError(
                f"max_length={self.max_length} leaves no room for a document: the chat "
                f"template takes {fixed} of its tokens, a long query may take "
                f"{self.query_budget} of the other {window} (max_query_share="
                f"{self.max_query_share}), and the {least} left cannot hold "
                f"{_DOCUMENT_PIECE.format(document='')!r} and one document token"
            )
        if config.instruction:
            self.encode("", [""], config.instruction)  # a too long instruction fails now

    @property
    def window(self) -> int:
        """Body tokens per pair: ``max_length`` less the chat template's prefix and suffix."""
        return self.max_length - len(self.prefix_ids) - len(self.suffix_ids)

    @property
    def query_budget(self) -> int:
        """Most body tokens the instruction and query keep in a pair that does not fit."""
        return math.floor(self.max_query_share * self.window)

    @property
    def document_floor(self) -> int:
        """Body tokens a document needs: "<Document>: " (3 tokens) and one of its own."""
        return len(self.document_label_ids) + 1

    def encode(
        self, query: str, docs: list[str], task: str, *, warn: bool = False
    ) -> tuple[list[list[int]], int]:
        """The ids of every pair, and how many pairs were cut.

        Args:
            query: The query.
            docs: The documents, one pair each.
            task: The instruction (``""`` leaves the ``<Instruct>:`` line empty).
            warn: Log one warning when pairs were cut.

        Raises:
            ValueError: If the instruction leaves no room for a document token.
        """
        if len(task) > CHARS_PER_TOKEN_CAP * self.max_length:
            # Never cut, so never capped either: refused before it costs any work.
            raise InvalidInputError(
                f"the instruction has {len(task)} characters, more than {CHARS_PER_TOKEN_CAP} "
                f"per token of max_length={self.max_length}; shorten it"
            )
        # Characters are capped before tokenizing, so a huge query or document costs work in
        # proportion to max_length, not to its size.
        query_chars = len(query)
        (query,), query_capped = cap_chars([query], self.max_chars)
        docs, capped = cap_chars(docs, self.max_chars)
        # The body is user text: special tokens are encoded as text, so "<|im_end|>" in a
        # document stays text and cannot close the user turn. Only the template owns control tokens.
        rows = self.tokenizer.encode_plain(
            [
                _INSTRUCTION_PIECE.format(instruction=task),
                _QUERY_PIECE.format(query=query),
                *(_DOCUMENT_PIECE.format(document=d) for d in docs),
            ],
            lambda i: ("the instruction", "the query")[i] if i < 2 else f"documents[{i - 2}]",
        )
        window, budget = self.window, self.query_budget
        instruction_ids, query_ids, tails = rows[0], rows[1], rows[2:]
        fixed = len(instruction_ids) + len(self.newline_ids)  # and the query line's newline
        if fixed + self.document_floor > window:
            raise InvalidInputError(
                f"the instruction leaves no room for a document: with the <Instruct> and "
                f"<Query> labels it takes {fixed} of the {window} tokens that "
                f"max_length={self.max_length} leaves after the chat template, and each "
                f"document needs {self.document_floor}; shorten the instruction or raise "
                "max_length"
            )
        head_tokens = len(instruction_ids) + len(query_ids)
        # No pair keeps more than the window of the query or of a document: dropping the rest
        # now bounds the memory by max_length without changing any pair (a row longer than
        # the window is cut either way, and one extra token keeps it "too long").
        head = instruction_ids + query_ids[: window + 1]
        tails = [tail[: window + 1] for tail in tails]
        newline = self.newline_ids
        prefix, suffix = self.prefix_ids, self.suffix_ids
        seqs: list[list[int]] = []
        query_cut = 0
        for tail in tails:
            if len(head) + len(tail) <= window:
                body = head + tail
            else:
                # The card cuts the end, that is the document. The instruction and query keep
                # what the document leaves, or their budget if that is more, and never less
                # than the instruction; past that, the query's end is cut instead.
                keep = min(len(head), max(window - len(tail), budget, fixed))
                if keep < len(head):
                    body = head[: keep - len(newline)] + newline + tail[: window - keep]
                    query_cut += 1
                else:
                    body = head + tail[: window - len(head)]
            seqs.append(prefix + body + suffix)
        cut = sum(
            1
            for i, tail in enumerate(tails)
            if len(head) + len(tail) > window or i in capped or query_capped
        )
        if warn and (query_cut or query_capped):
            # One warning per call; the query is what the caller needs to hear about.
            reasons = []
            if query_capped:
                reasons.append(
                    f"it has {query_chars} characters and only max_chars={self.max_chars} are "
                    "tokenized"
                )
            if query_cut:
                reasons.append(
                    f"with the instruction it takes {head_tokens} tokens, more than "
                    f"max_query_share={self.max_query_share:g} of the {window} tokens left "
                    f"after the chat template, so it was cut in {query_cut} of {len(docs)} "
                    "pairs to keep room for the document"
                )
            logger.warning(
                "%d of %d pairs were longer than max_length=%d and were cut; the query was cut: %s",
                cut,
                len(docs),
                self.max_length,
                "; ".join(reasons),
            )
        elif warn:
            warn_truncated(cut, len(docs), self.max_length)
        return seqs, cut


def check_ranking(top_n: object, score_threshold: object) -> None:
    """Check :meth:`Qwen3Reranker.rerank`'s ``top_n`` and ``score_threshold`` (None allowed)."""
    if top_n is not None:
        check_positive_int(top_n, "top_n")
    if score_threshold is not None:
        check_score_threshold(score_threshold)


def ranked(
    scores: list[float],
    documents: list[str],
    top_n: int | None = None,
    score_threshold: float | None = None,
) -> list[RerankResult]:
    """Results best first, ties in input order; below ``score_threshold`` dropped, then ``top_n``.

    ``scores[i]`` belongs to ``documents[i]``.

    Example:
        >>> [r.index for r in ranked([0.2, 0.9, 0.2], ["a", "b", "c"], top_n=2)]
        [1, 0]
    """
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if score_threshold is not None:
        order = [i for i in order if scores[i] >= score_threshold]
    return [RerankResult(i, scores[i], documents[i]) for i in order[:top_n]]


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
        raise InvalidInputError(
            f"score_threshold must be a number in [0, 1] or None, got {value!r}"
        )
    return float(value)


def common_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the longest shared token prefix, leaving every sequence at least one token.

    Example:
        >>> common_prefix_len([[1, 2, 3], [1, 2, 4]])
        2
    """
    first = seqs[0]
    limit = min(len(s) for s in seqs) - 1
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n
