"""The LLMs that write the synthetic queries, and the on-disk cache of their replies.

Three backends share one small interface (:class:`ChatLLM`): a Python callable
(:class:`CallableLLM`, for tests and custom clients), any OpenAI-compatible chat endpoint
through the official ``openai`` client (:class:`OpenAIChatLLM`), and a local transformers
causal LM folder (:class:`LocalCausalLM`). :class:`ReplyCache` stores every reply, so a re-run
resumes instead of paying for the same calls again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class LLMError(RuntimeError):
    """The LLM cannot be used at all (unreachable, refused credentials, unknown model)."""


class LLMRequestError(RuntimeError):
    """The LLM refused one request (for example a prompt too long for it); the run goes on."""


class ChatLLM(Protocol):
    """A chat LLM: one user message in, the reply's text out.

    ``name`` identifies the model and its generation settings in the reply cache: two LLMs
    with the same name are assumed to give interchangeable replies.
    """

    name: str

    def complete(self, prompt: str, *, seed: int) -> str | None:
        """The reply to ``prompt`` as the single user message (None for an empty reply).

        Args:
            prompt: The user message.
            seed: A per-request seed, for backends that sample.

        Raises:
            LLMError: The LLM is unusable; the run stops.
            LLMRequestError: This request was refused; it counts as invalid.
        """
        ...


class CallableLLM:
    """A Python callable ``prompt -> reply`` as a :class:`ChatLLM`.

    Args:
        function: Called with the prompt; returns the reply text.
        name: The cache identity (default: the callable's qualified name).
    """

    def __init__(self, function: Callable[[str], str | None], name: str | None = None) -> None:
        self.function = function
        self.name = name or f"callable:{getattr(function, '__qualname__', type(function).__name__)}"

    def complete(self, prompt: str, *, seed: int) -> str | None:
        """Call the function (the seed is not passed on)."""
        return self.function(prompt)


def as_llm(llm: ChatLLM | Callable[[str], str | None]) -> ChatLLM:
    """``llm`` itself if it is a :class:`ChatLLM`, else the callable wrapped."""
    if hasattr(llm, "complete") and isinstance(getattr(llm, "name", None), str):
        return llm  # type: ignore[return-value]
    if callable(llm):
        return CallableLLM(llm)
    raise TypeError(f"llm must be a ChatLLM or a callable, got {type(llm).__name__}")


class OpenAIChatLLM:
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, Ollama...).

    The official ``openai`` client does the HTTP, and its retries: connection errors, 408,
    409, 429 and 5xx responses are retried ``max_retries`` times with exponential backoff
    (honouring ``Retry-After``).

    Args:
        base_url: The endpoint's base URL, e.g. ``http://localhost:8000/v1``.
        model: The model name the endpoint serves.
        api_key: The key (servers without authentication accept any).
        temperature: Sampling temperature.
        max_tokens: Longest reply, in tokens.
        max_retries: Retries per request after a transient failure.
        timeout: Seconds per request.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        temperature: float = 0.7,
        max_tokens: int = 512,
        max_retries: int = 5,
        timeout: float = 120.0,
    ) -> None:
        from openai import OpenAI

        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.name = f"openai:{base_url}:{model}:t={temperature}:max={max_tokens}"
        self.client = OpenAI(
            base_url=base_url,
            # The client refuses an empty key; servers without authentication ignore it.
            api_key=api_key or "no-key",
            max_retries=max_retries,
            timeout=timeout,
        )
        self.base_url = base_url

    def complete(self, prompt: str, *, seed: int) -> str | None:
        """One chat completion; transient failures are retried by the client."""
        import openai

        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                seed=seed,
            )
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            raise LLMRequestError(f"the LLM refused a request: {e}") from e
        except openai.AuthenticationError as e:
            raise LLMError(
                f"the LLM at {self.base_url} refused the API key (HTTP 401): set the key's "
                "environment variable (--llm-api-key-env)"
            ) from e
        except openai.NotFoundError as e:
            raise LLMError(
                f"the LLM at {self.base_url} has no model {self.model!r} or no chat-completions "
                f"endpoint (HTTP 404): {e}"
            ) from e
        except openai.APIStatusError as e:
            raise LLMError(
                f"the LLM at {self.base_url} failed (HTTP {e.status_code}) after retries: {e}"
            ) from e
        except openai.APIError as e:  # connection errors and timeouts, after the retries
            raise LLMError(f"cannot reach the LLM at {self.base_url}: {e}") from e
        if not response.choices:
            return None
        return response.choices[0].message.content


class LocalCausalLM:
    """A local transformers causal LM folder, run on this machine.

    The tokenizer's chat template is applied; the prompt itself is tokenized with special tokens
    as text, so a passage holding ``<|im_end|>`` cannot become a control token. Sampling is
    seeded per request, so the same prompt and seed give the same reply on the same machine.
    Weights load from safetensors only, never with remote code.

    Args:
        model: A local folder (or a hub id, downloaded once) holding the model.
        temperature: Sampling temperature; 0 decodes greedily.
        max_new_tokens: Longest reply, in tokens.
        device: ``"cpu"``, ``"cuda"``... (default: CUDA when present).
        enable_thinking: Passed to chat templates that know it (Qwen3): False asks for the
            answer without a reasoning block.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        temperature: float = 0.7,
        max_new_tokens: int = 512,
        device: str | None = None,
        enable_thinking: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from qwen3_rag.core.loading import (
            from_pretrained_kwargs,
            load_tokenizer,
            resolve_device,
            resolve_dtype,
            resolve_model_dir,
        )

        path = resolve_model_dir(model)
        self.device = resolve_device(device)
        dtype = resolve_dtype("auto", self.device)
        self.chat = AutoTokenizer.from_pretrained(
            path, trust_remote_code=False, local_files_only=True
        )
        if not getattr(self.chat, "chat_template", None):
            raise LLMError(f"the model folder {str(path)!r} has no chat template")
        self.tokenizer = load_tokenizer(path)
        try:
            model_: Any = AutoModelForCausalLM.from_pretrained(
                path, **from_pretrained_kwargs(dtype, "sdpa")
            )
            self.model = model_.to(self.device)
        except (OSError, ValueError) as e:
            raise LLMError(f"cannot load the causal LM in {str(path)!r}: {e}") from e
        self.model.eval()
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.enable_thinking = enable_thinking
        self.name = f"local:{path}:t={temperature}:max={max_new_tokens}"
        self._torch = torch
        self._lock = threading.Lock()
        self._prefix, self._suffix = self._template_parts()

    def _template_parts(self) -> tuple[list[int], list[int]]:
        """The chat template's token ids before and after the user message."""
        marker = "\ue000qwen3-rag-prompt\ue000"
        rendered = self.chat.apply_chat_template(
            [{"role": "user", "content": marker}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=self.enable_thinking,
        )
        if not isinstance(rendered, str) or rendered.count(marker) != 1:
            raise LLMError("the chat template does not place the user message once")
        before, after = rendered.split(marker)
        return self.tokenizer.encode_template(before), self.tokenizer.encode_template(after)

    def complete(self, prompt: str, *, seed: int) -> str | None:
        """Generate a reply (one request at a time: the model is shared)."""
        torch = self._torch
        ids = self._prefix + self.tokenizer.encode_plain([prompt])[0] + self._suffix
        with self._lock, torch.inference_mode():
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
            try:
                inputs = torch.tensor([ids], device=self.device)
                options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
                if self.temperature > 0:
                    options.update(do_sample=True, temperature=self.temperature, top_k=0)
                else:
                    options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                output = self.model.generate(
                    inputs,
                    attention_mask=torch.ones_like(inputs),
                    pad_token_id=self._pad_id(),
                    **options,
                )
            finally:
                torch.random.set_rng_state(generator_state)
        reply = output[0, len(ids) :].tolist()
        return str(self.chat.decode(reply, skip_special_tokens=True))

    def _pad_id(self) -> int:
        pad = self.chat.pad_token_id
        if pad is None:
            pad = self.chat.eos_token_id
        return int(pad if pad is not None else 0)


# -- the reply cache -------------------------------------------------------------------------
def cache_key(llm_name: str, prompt: str, sample: int) -> str:
    """The cache key of one request: the LLM's identity, the prompt and the sample number."""
    payload = json.dumps([llm_name, prompt, sample], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ReplyCache:
    """Replies by request, in a JSON-lines file that only ever grows by whole lines.

    Each reply is appended as one line with a single ``write`` on a file opened in append
    mode, so a kill loses at most the line being written. A torn last line
    (a kill during that write) is ignored when the file is read, and the next append starts on a
    new line.

    Args:
        path: The cache file (created with its folder when missing); None keeps replies in
            memory only.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        self._entries: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._needs_newline = False
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        torn = 0
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key, reply = entry["key"], entry["reply"]
            except (ValueError, KeyError, TypeError):
                torn += 1
                continue
            if isinstance(key, str) and (reply is None or isinstance(reply, str)):
                self._entries[key] = reply
        if torn:
            logger.warning("%s: %d damaged cache lines ignored (a killed run)", path, torn)
        self._needs_newline = bool(data) and not data.endswith(b"\n")

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> tuple[bool, str | None]:
        """(True, reply) for a cached request, else (False, None)."""
        with self._lock:
            if key in self._entries:
                return True, self._entries[key]
            return False, None

    def put(self, key: str, reply: str | None) -> None:
        """Store a reply (on disk first, when the cache has a file)."""
        line = json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n"
        with self._lock:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                data = ("\n" if self._needs_newline else "") + line
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    # Once written, the line survives a kill of this process (the kernel holds
                    # it); no fsync per reply, which would cost more than a fast LLM call.
                    os.write(fd, data.encode("utf-8"))
                finally:
                    os.close(fd)
                self._needs_newline = False
            self._entries[key] = reply
