"""Qwen3-Embedding: instruction-aware queries, raw documents, last-token pooling, MRL."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .loading import DeviceLike, DTypeLike, LoadedModel, from_pretrained_kwargs
from .packing import pack, packed_model_kwargs
from .pooling import last_token_pool, truncate_and_normalize
from .prompts import DEFAULT_EMBEDDING_MODEL, DEFAULT_TASK, EMBEDDING_EOS_TOKEN, format_query
from .runtime import Qwen3Runtime, check_instruction, check_texts
from .tokenization import SafeTokenizer


class Qwen3Embedder(Qwen3Runtime):
    r"""Qwen3-Embedding, producing exactly the model card's vectors.

    Queries become ``"Instruct: {task}\\nQuery:{query}"``; documents are embedded as they are.
    Every input ends in one ``<|endoftext|>`` whose last-layer hidden state, cut to
    ``dimensions`` values and L2-normalised in float32, is the embedding.

    Args:
        model: Hub id or local folder of a Qwen3-Embedding checkpoint (safetensors).
        device: "cpu", "cuda", "cuda:1", "mps", a ``torch.device``, or None for the best one.
        dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16", "float16", or a
            ``torch.dtype``.
        max_length: Tokens per input, the final ``<|endoftext|>`` included; longer inputs are
            cut (with a warning), keeping the EOS.
        dimensions: Output size (MRL), 32 up to the hidden size; None keeps all.
        instruction: Default task description for queries; ``""`` means no instruction.
        revision: Hub revision (pin a commit in production).
        cache_dir: Hugging Face cache folder.
        local_files_only: Never use the network.
        attn_implementation: "sdpa", "eager" or "flash_attention_2"; None picks FA2 on CUDA
            when installed, else SDPA.
        batch_tokens: Tokens per forward (CPU batches are packed, GPU batches padded, padding
            counted); None picks a device default.
        max_batch_size: Most inputs per forward.
        max_chars: Characters kept per input before tokenizing (None: ``64 * max_length``).
        show_progress: Show a progress bar; None shows one for long jobs only.
        compile: ``torch.compile`` the model (GPU throughput jobs: 1.7-1.8x at 512 tokens on an
            H100; the first calls take a minute to compile). Results match within dtype noise.
        trust_remote_code: Refused when True; present only to say so clearly.

    Raises:
        ModelLoadError: If the model cannot be found or is not a safe Qwen3 checkpoint.
        ValueError: For an invalid option (the message names it).

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
        device: DeviceLike = None,
        dtype: DTypeLike = "auto",
        max_length: int = 8192,
        dimensions: int | None = None,
        instruction: str = DEFAULT_TASK,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        attn_implementation: str | None = None,
        batch_tokens: int | None = None,
        max_batch_size: int = 64,
        max_chars: int | None = None,
        show_progress: bool | None = None,
        compile: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        self.instruction = check_instruction(instruction)
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int)
        ):
            raise ValueError(f"dimensions must be an int or None, got {dimensions!r}")
        if isinstance(max_length, int) and not isinstance(max_length, bool) and max_length < 2:
            raise ValueError(
                f"max_length must be at least 2 (text + <|endoftext|>), got {max_length}"
            )
        super().__init__(
            model,
            device=device,
            dtype=dtype,
            max_length=max_length,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            attn_implementation=attn_implementation,
            batch_tokens=batch_tokens,
            max_batch_size=max_batch_size,
            max_chars=max_chars,
            show_progress=show_progress,
            trust_remote_code=trust_remote_code,
            compile=compile,
        )
        if dimensions is not None and not 32 <= dimensions <= self.hidden_size:
            raise ValueError(
                f"dimensions={dimensions} is out of range: this model supports 32 to "
                f"{self.hidden_size}"
            )
        self.dimensions = dimensions

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
                # Padding never reaches the model's result (the mask hides it); the official
                # tokenizer pads with <|endoftext|>, so do we.
                "pad_id": eos_id,
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
        """
        texts = check_texts(texts, "texts")
        task = self.instruction if instruction is None else check_instruction(instruction)
        return self._embed([format_query(t, task) for t in texts])

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

    # -- internals -------------------------------------------------------------------------
    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.output_dimensions), dtype=np.float32)
        ids, truncated = self._tokenize(texts)
        self._warn_truncated(truncated, len(texts))
        rows = self._run_batched([len(r) for r in ids], lambda b: self._forward(ids, b), "embed")
        # One finite check and one device-to-host copy for the whole call: per-batch checks
        # would stall the GPU while the host prepares the next batch.
        out = torch.stack(rows)
        self._check_finite(out, "embeddings")  # NaN/inf survive the normalisation
        return out.cpu().numpy()

    def _tokenize(self, texts: list[str]) -> tuple[list[list[int]], int]:
        """Ids with exactly one trailing <|endoftext|>, and how many inputs were cut."""
        texts, capped = self._cap_chars(texts)
        # User text is encoded without added tokens (no post-processor either), so the EOS is
        # appended here by id, once, whether or not the checkpoint's tokenizer would add it.
        ids = self.tokenizer.encode_plain(texts)
        eos = self._loaded.extras["eos_id"]
        keep = self.max_length - 1
        truncated = sum(1 for i, row in enumerate(ids) if len(row) > keep or i in capped)
        return [[*row[:keep], eos] for row in ids], truncated

    def _forward(self, ids: list[list[int]], batch: list[int]) -> list[torch.Tensor]:
        rows = [ids[i] for i in batch]
        model = self._loaded.model
        if self._packed:
            input_ids, positions, segments = pack(rows, self.device)
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
            input_ids, mask = self._left_pad(rows)
            with self._lock, torch.inference_mode():
                # All rows the same length: no mask, so SDPA can take its unmasked causal kernel.
                attn = None if bool(mask.all()) else mask
                out = model(input_ids=input_ids, attention_mask=attn, use_cache=False)
                pooled = last_token_pool(out.last_hidden_state, mask).float()
        return list(truncate_and_normalize(pooled, self.dimensions).unbind(0))
