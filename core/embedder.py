"""Qwen3-Embedding: instruction-aware queries, raw documents, last-token pooling, MRL."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .config import EmbedderConfig, check_dimensions
from .errors import InvalidInputError
from .loading import LoadedModel, default_query_task, from_pretrained_kwargs
from .packing import pack, packed_model_kwargs
from .pooling import last_token_pool, truncate_and_normalize
from .runtime import (
    CHARS_PER_TOKEN_CAP,
    Encoded,
    Qwen3Runtime,
    check_instruction,
    check_texts,
    make_config,
)
from .spec import (
    DEFAULT_EMBEDDING_MODEL,
    EMBEDDING_EOS_TOKEN,
    PAD_TOKEN,
    describe_model,
    format_query,
)
from .tokenization import SafeTokenizer


class Qwen3Embedder(Qwen3Runtime):
    r"""Qwen3-Embedding, producing exactly the model card's vectors.

    Queries become ``"Instruct: {task}\\nQuery:{query}"``; documents are embedded as they are.
    Every input ends in one ``<|endoftext|>`` whose last-layer hidden state, cut to
    ``dimensions`` values and L2-normalised in float32, is the embedding. An input longer than
    ``max_length`` is cut at its end, so a long query loses its end, never the instruction; an
    instruction that leaves no room for a query token raises ``ValueError``. Without an
    ``instruction``, queries take the task the model folder names (the query prompt of its
    ``config_sentence_transformers.json``: a fine-tuned folder's trained task), else the model
    card's web-search task; :attr:`instruction` says which.

    Args:
        model: Hub id or local folder of a Qwen3-Embedding checkpoint (safetensors).
        config: A :class:`~qwen3_rag.core.EmbedderConfig`; keyword ``options`` override its fields.
        **options: Any field of :class:`~qwen3_rag.core.EmbedderConfig` (``device``, ``dtype``,
            ``max_length``, ``instruction``, ...), where each option is documented once.
            ``trust_remote_code=True`` is refused.

    Raises:
        ModelLoadError: If the model cannot be found or is not a safe Qwen3 checkpoint.
        ValueError: For an invalid option (the message names it).
        TypeError: For an unknown option.

    Example:
        >>> emb = Qwen3Embedder("Qwen/Qwen3-Embedding-0.6B")  # doctest: +SKIP
        >>> q = emb.embed_queries(["What is the capital of China?"])  # doctest: +SKIP
        >>> d = emb.embed_documents(["The capital of China is Beijing."])  # doctest: +SKIP
        >>> float(q @ d.T)  # doctest: +SKIP
        0.76...
    """

    _kind = "embedding"

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_EMBEDDING_MODEL,
        *,
        config: EmbedderConfig | None = None,
        **options: Any,
    ) -> None:
        cfg = make_config(EmbedderConfig, config, options)
        described = describe_model(model)
        # An official model's width is known: a bad value fails before any download.
        if described is not None and described.kind == "embedding" and cfg.dimensions is not None:
            check_dimensions(cfg.dimensions, described.hidden_size, described.model)
        super().__init__(model, cfg)
        if cfg.instruction is None:  # the folder's own task (a fine-tuned model's), else the card's
            cfg = replace(cfg, instruction=default_query_task(self.model_dir))
        #: The options in effect, the instruction resolved (what stores persist).
        self.config: EmbedderConfig = cfg
        self.instruction: str = cfg.instruction or ""
        self.dimensions = cfg.dimensions
        if self.instruction:
            self._instruction_ids(self.instruction)  # fail now, not at the first query

    def _check_model_config(self, model_config: Any) -> None:
        if self.config.dimensions is not None:
            check_dimensions(self.config.dimensions, int(model_config.hidden_size), self.model_name)

    @property
    def output_dimensions(self) -> int:
        """Length of the vectors this embedder returns."""
        return self.dimensions or self.hidden_size

    def _build(self, key: tuple[Any, ...], config: Any, tokenizer: SafeTokenizer) -> LoadedModel:
        from transformers import AutoModel

        eos_id = tokenizer.token_id(EMBEDDING_EOS_TOKEN)
        model = AutoModel.from_pretrained(
            self.model_dir, **from_pretrained_kwargs(self.dtype, self._load_attn_implementation)
        )
        model.to(self.device).eval()
        model.requires_grad_(False)
        return LoadedModel(
            key=key,
            model=model,
            extras={
                "tokenizer": tokenizer,
                "eos_id": eos_id,
                # Padding never reaches the model's result (the mask hides it); we pad with the
                # official tokenizer's pad token all the same.
                "pad_id": tokenizer.token_id(PAD_TOKEN),
                "hidden_size": int(config.hidden_size),
            },
        )

    # -- public API ------------------------------------------------------------------------
    def embed_queries(self, texts: list[str], instruction: str | None = None) -> np.ndarray:
        """Embed search queries, each prefixed with the task instruction.

        Args:
            texts: The queries.
            instruction: Task description for this call; None uses the embedder's default,
                ``""`` embeds the queries without an instruction.

        Returns:
            float32 array ``[len(texts), output_dimensions]`` of unit vectors, in input order.

        Raises:
            TypeError: If ``texts`` is not a list of strings or ``instruction`` not a string.
            ValueError: If the instruction leaves no room for a query token within
                ``max_length`` (the message gives the sizes).
        """
        texts = check_texts(texts, "texts")
        task = self.instruction if instruction is None else check_instruction(instruction)
        return self._embed(texts, task)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Embed documents as they are (no instruction).

        Returns:
            float32 array ``[len(texts), output_dimensions]`` of unit vectors, in input order.

        Raises:
            TypeError: If ``texts`` is not a list of strings.
        """
        return self._embed(check_texts(texts, "texts"))

    def encode_ids(self, texts: list[str]) -> list[list[int]]:
        """The exact token ids the model sees for ``texts`` (already formatted), EOS included."""
        return self._tokenize(check_texts(texts, "texts"))[0]

    def encode_queries(self, texts: list[str], instruction: str | None = None) -> Encoded:
        """Queries as the model sees them: the instruction template, the query, the EOS.

        Nothing is logged: the caller reports :attr:`Encoded.truncated` (see
        :meth:`warn_truncated`). :meth:`embed_encoded` turns the result into vectors.

        Args:
            texts: The queries.
            instruction: As in :meth:`embed_queries`.

        Returns:
            The ids of each query and how many were cut to ``max_length``.

        Raises:
            TypeError: If ``texts`` is not a list of strings or ``instruction`` not a string.
            ValueError: If the instruction leaves no room for a query token.
        """
        texts = check_texts(texts, "texts")
        task = self.instruction if instruction is None else check_instruction(instruction)
        return Encoded(*self._tokenize(texts, task)) if texts else Encoded([], 0)

    def encode_documents(self, texts: list[str]) -> Encoded:
        """Documents as the model sees them (no instruction, the EOS appended); logs nothing.

        Raises:
            TypeError: If ``texts`` is not a list of strings.
        """
        texts = check_texts(texts, "texts")
        return Encoded(*self._tokenize(texts)) if texts else Encoded([], 0)

    def embed_encoded(self, encoded: Encoded, *, dimensions: int | None = None) -> np.ndarray:
        """Vectors of already encoded inputs (:meth:`encode_queries`, :meth:`encode_documents`).

        The same forward, pooling and normalisation as :meth:`embed_documents`; no truncation
        warning (the caller has :attr:`Encoded.truncated`).

        Args:
            encoded: The ids to embed.
            dimensions: Output length for this call; None uses the embedder's own.

        Returns:
            float32 array ``[len(encoded.ids), dimensions]`` of unit vectors, in input order.
        """
        size = self._output_size(dimensions)
        ids = encoded.ids
        if not ids:
            return np.zeros((0, size), dtype=np.float32)
        rows = self.run_batched([len(r) for r in ids], lambda b: list(self.pool(ids, b)), "embed")
        return self.finish(torch.stack(rows), dimensions)

    def finish(self, pooled: torch.Tensor, dimensions: int | None = None) -> np.ndarray:
        """Pooled states (:meth:`pool`) to embeddings: cut to ``dimensions``, normalised, checked.

        Each row is cut and normalised on its own, so rows pooled in any batches give the bits
        of one :meth:`embed_documents` call. One finite check and one device-to-host copy.

        Args:
            pooled: float32 ``[n, hidden_size]`` last-token states.
            dimensions: Output length; None uses the embedder's own.

        Raises:
            ValueError: If ``dimensions`` is out of this model's range.
            NonFiniteOutputError: If a vector holds NaN or inf.
        """
        size = self._output_size(dimensions)
        out = truncate_and_normalize(pooled, size)
        self.check_finite(out, "embeddings")  # NaN/inf survive the normalisation
        return out.cpu().numpy()

    def _output_size(self, dimensions: int | None) -> int:
        if dimensions is None:
            return self.output_dimensions
        check_dimensions(dimensions, self.hidden_size, self.model_name)
        return dimensions

    # -- internals -------------------------------------------------------------------------
    def _embed(self, texts: list[str], task: str = "") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.output_dimensions), dtype=np.float32)
        encoded = Encoded(*self._tokenize(texts, task))
        self.warn_truncated(encoded.truncated, len(texts))
        return self.embed_encoded(encoded)

    def _tokenize(self, texts: list[str], task: str = "") -> tuple[list[list[int]], int]:
        r"""Ids with exactly one trailing <|endoftext|>, and how many inputs were cut.

        With a ``task``, each text is a query formatted as ``"Instruct: {task}\nQuery:{text}"``.
        The character cap applies to the user's text only, so it never cuts the instruction.
        """
        texts, capped = self._cap_chars(texts)
        # User text is encoded with special tokens as text and no post-processor, so the EOS is
        # appended here by id, once, whether or not the checkpoint's tokenizer would add it.
        if task:
            # "...\nQuery" is tokenized once per call and each query as ":{text}": the
            # pre-tokenizer always ends a piece between the letters of "Query" and the colon
            # (a colon may merge with the letters after it, so it goes with the query), and NFC
            # never joins across a colon, so the ids are those of the whole formatted string.
            head, rows = self._instruction_ids(task, texts)
            ids = [head + row for row in rows]
        else:
            ids = self.tokenizer.encode_plain(texts)
        eos = self._loaded.extras["eos_id"]
        keep = self.max_length - 1
        truncated = sum(1 for i, row in enumerate(ids) if len(row) > keep or i in capped)
        return [[*row[:keep], eos] for row in ids], truncated

    def _instruction_ids(
        self, task: str, queries: list[str] | None = None
    ) -> tuple[list[int], list[list[int]]]:
        r"""Ids of ``"Instruct: {task}\nQuery"``, and of ``":{query}"`` for each query.

        One tokenizer call, so a text with surrogates is reported once.

        Raises:
            ValueError: If the instruction leaves no room for a query token.
        """
        template = format_query("", task)  # "Instruct: {task}\nQuery:"
        if len(task) > CHARS_PER_TOKEN_CAP * self.max_length:
            # Never cut, so never capped either: refused before it costs any work.
            raise InvalidInputError(
                f"the instruction has {len(task)} characters, more than {CHARS_PER_TOKEN_CAP} "
                f"per token of max_length={self.max_length}; shorten it"
            )
        head, colon = template[:-1], template[-1:]
        rows = self.tokenizer.encode_plain(
            [head, *(colon + q for q in queries or [])],
            lambda i: "the instruction" if i == 0 else f"texts[{i - 1}]",
        )
        # The template with its colon, one query token and the EOS must fit.
        used = len(rows[0]) + 1
        if used + 2 > self.max_length:
            raise InvalidInputError(
                f"the instruction leaves no room for the query: with its template it takes "
                f"{used} tokens, and max_length={self.max_length} must also hold one query "
                f"token and the end-of-text token; shorten the instruction or raise max_length"
            )
        return rows[0], rows[1:]

    def pool(self, ids: list[list[int]], rows: list[int]) -> torch.Tensor:
        """Float32 last-token states ``[len(rows), hidden_size]`` of ``ids[rows]``, not normalised.

        One forward of the rows given (plan them with :meth:`plan_batches`); :meth:`finish`
        turns the states into embeddings. A caller serving several output sizes (the server's
        per-request ``dimensions``) runs one forward and cuts each row its own way.
        """
        inputs = [ids[i] for i in rows]
        model = self._loaded.model
        if self.packed:
            input_ids, positions, segments = pack(inputs, self.device)
            # inference_mode is thread-local, so it is entered here, in the thread that runs.
            with self._lock, torch.inference_mode():
                hidden = model(
                    input_ids=input_ids,
                    position_ids=positions,
                    use_cache=False,
                    **packed_model_kwargs(segments),
                ).last_hidden_state[0]
                pooled = hidden[segments.last_positions].float()
        else:
            input_ids, mask = self._left_pad(inputs)
            with self._lock, torch.inference_mode():
                # All rows the same length: no mask, so SDPA can take its unmasked causal kernel.
                attn = None if bool(mask.all()) else mask
                out = model(input_ids=input_ids, attention_mask=attn, use_cache=False)
                pooled = last_token_pool(out.last_hidden_state, mask).float()
        return pooled
