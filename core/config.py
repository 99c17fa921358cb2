"""The options of the embedder and the reranker: the one place each option is declared.

Every layer derives from these two frozen dataclasses: the core constructors take their fields as
keyword arguments, the adapters turn them into framework fields, the Chroma function persists the
fields marked ``persist``, and the CLI builds its flags from the fields marked ``cli``. Adding an
option means adding one field here (plus the code that uses it).

Everything that can be checked without loading the model is checked here, at construction, so a
bad value fails before any download or weight load.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from .errors import InvalidInputError
from .spec import DEFAULT_TASK, MIN_DIMENSIONS

#: dtype names accepted everywhere; aliases are normalised to the first name of each row.
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def _option(
    default: Any,
    help: str,
    *,
    persist: bool = False,
    cli: bool = True,
) -> Any:
    """A config field with its help text.

    Args:
        default: The default value.
        help: One line for docs, CLI ``--help`` and adapter field descriptions.
        persist: The option changes the model's output (vectors or scores), so a stored index
            records it and a serialized adapter names it.
        cli: The command line offers it as a flag.
    """
    return field(default=default, metadata={"help": help, "persist": persist, "cli": cli})


@dataclass(frozen=True)
class RuntimeConfig:
    """Options shared by :class:`~qwen3_rag.core.Qwen3Embedder` and the reranker."""

    device: str | None = _option(
        None, '"cpu", "cuda", "cuda:1", "mps"; None picks CUDA, then MPS, then the CPU'
    )
    dtype: str = _option(
        "auto", '"auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16", "float16"'
    )
    max_length: int = _option(
        8192, "tokens per input, template and final token included", persist=True
    )
    revision: str | None = _option(
        None, "hub revision to pin (a commit hash in production); None: the latest"
    )
    cache_dir: str | None = _option(None, "Hugging Face cache folder; None: the default one")
    local_files_only: bool = _option(False, "never use the network")
    attn_implementation: str | None = _option(
        None, '"sdpa", "eager" or "flash_attention_2"; None: FA2 on CUDA when installed, else SDPA'
    )
    batch_tokens: int | None = _option(
        None, "tokens per forward (padding counted); None: 1024 on CPU, 16384 on GPU"
    )
    max_batch_size: int = _option(64, "most inputs per forward")
    max_chars: int | None = _option(
        None, "characters kept per input before tokenizing; None: 64 x max_length"
    )
    show_progress: bool | None = _option(
        None,
        "progress bars: True (the weight loading's too), False, or None: long jobs only, and "
        "only where logging is at INFO (as sentence-transformers does)",
        cli=False,
    )
    compile: bool = _option(False, "torch.compile the model (GPU throughput jobs)")

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, at construction
        if isinstance(self.device, torch.device):
            set_(self, "device", str(self.device))
        if self.device is not None:
            if not isinstance(self.device, str):
                raise TypeError(f"device must be a str or None, got {type(self.device).__name__}")
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise InvalidInputError(
                    f"device={self.device!r} is not a valid torch device"
                ) from e
        set_(self, "dtype", normalize_dtype(self.dtype))
        _check_int(self.max_length, "max_length", minimum=2)
        _check_optional_str(self.revision, "revision")
        if isinstance(self.cache_dir, os.PathLike):
            set_(self, "cache_dir", os.fspath(self.cache_dir))
        _check_optional_str(self.cache_dir, "cache_dir")
        _check_bool(self.local_files_only, "local_files_only")
        if (
            self.attn_implementation is not None
            and self.attn_implementation not in ATTN_IMPLEMENTATIONS
        ):
            raise InvalidInputError(
                f"attn_implementation={self.attn_implementation!r}; "
                f"use one of {', '.join(ATTN_IMPLEMENTATIONS)}"
            )
        if self.batch_tokens is not None:
            _check_int(self.batch_tokens, "batch_tokens")
        _check_int(self.max_batch_size, "max_batch_size")
        if self.max_chars is not None:
            _check_int(self.max_chars, "max_chars")
        if self.show_progress is not None:
            _check_bool(self.show_progress, "show_progress")
        _check_bool(self.compile, "compile")

    def persisted(self) -> dict[str, Any]:
        """The options that change the output (see ``persist``), by name."""
        return {f.name: getattr(self, f.name) for f in fields(type(self)) if f.metadata["persist"]}


@dataclass(frozen=True)
class EmbedderConfig(RuntimeConfig):
    """Options of :class:`~qwen3_rag.core.Qwen3Embedder`."""

    dimensions: int | None = _option(
        None,
        f"output size (MRL), {MIN_DIMENSIONS} up to the hidden size; None keeps all",
        persist=True,
    )
    # None, not DEFAULT_TASK: a fine-tuned folder names the task it was trained with, and a
    # default string could not tell "not given" from "given as the web-search task".
    instruction: str | None = _option(
        None,
        'task description for queries; "" means none; None: the model folder\'s own (its '
        "sentence-transformers query prompt: a fine-tuned folder's trained task), else the "
        "model card's web-search task",
        persist=True,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dimensions is not None:
            _check_int(self.dimensions, "dimensions", minimum=MIN_DIMENSIONS)
        _check_optional_str(self.instruction, "instruction")


@dataclass(frozen=True)
class RerankerConfig(RuntimeConfig):
    """Options of :class:`~qwen3_rag.core.Qwen3Reranker`."""

    instruction: str = _option(
        DEFAULT_TASK, 'instruction in the <Instruct>: line; "" leaves it empty', persist=True
    )
    share_prefix: bool = _option(
        True, "compute the system prompt + instruction + query once per call"
    )
    # 0.75: FlagEmbedding's rerankers give the query 3/4 of max_length too. Queries are short
    # (tens of tokens), so the cap only bites on pathological input, where it keeps at least a
    # quarter of the window (about 2,000 tokens at 8192, 100 at 512) for each document.
    max_query_share: float = _option(
        0.75,
        "largest share of the window (max_length minus the chat template) that the instruction "
        "and query may take from a pair that does not fit; past it the query is cut, not the "
        "document (pairs that fit are never changed)",
        persist=True,
        cli=False,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_str(self.instruction, "instruction")
        _check_bool(self.share_prefix, "share_prefix")
        share = self.max_query_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise InvalidInputError(
                f"max_query_share must be a number between 0 and 1 (exclusive), got {share!r}"
            )
        object.__setattr__(self, "max_query_share", float(share))


C = TypeVar("C", bound=RuntimeConfig)


def fields(config: type[RuntimeConfig] | RuntimeConfig) -> tuple[dataclasses.Field[Any], ...]:
    """The option fields of a config class, in declaration order."""
    return dataclasses.fields(config)


def build_config(cls: type[C], base: C | None, options: Mapping[str, Any]) -> C:
    """``base`` (or the defaults) with ``options`` applied, checked.

    Raises:
        TypeError: For an option ``cls`` does not have (the message lists the valid ones).
        ValueError: For an invalid value (the message names the option).
    """
    if base is not None and not isinstance(base, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(base).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
            f"valid options: {', '.join(sorted(names))}"
        )
    return dataclasses.replace(base, **options) if base is not None else cls(**options)


def normalize_dtype(dtype: object) -> str:
    """Return the canonical name of a dtype given as a name, an alias or a ``torch.dtype``.

    Example:
        >>> normalize_dtype("bf16"), normalize_dtype(torch.float32)
        ('bfloat16', 'float32')
    """
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        name = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
    else:
        raise TypeError(f"dtype must be a str or torch.dtype, got {type(dtype).__name__}")
    if name not in DTYPE_NAMES:
        raise InvalidInputError(
            f"dtype={dtype!r} is not supported; use one of {', '.join(DTYPE_NAMES)}"
        )
    return name


def check_dimensions(dimensions: object, hidden_size: int, model: object) -> int:
    """Require an output size (MRL) that ``model`` can give: an int from 32 to ``hidden_size``.

    The one range check for ``dimensions`` (the core, the CLI, the server and evaluation call
    it), so the refusal reads the same wherever a size is asked for.

    Raises:
        ValueError: Naming the value, the model and its range.

    Example:
        >>> check_dimensions(256, 1024, "Qwen/Qwen3-Embedding-0.6B")
        256
    """
    if (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not MIN_DIMENSIONS <= dimensions <= hidden_size
    ):
        raise InvalidInputError(
            f"dimensions={dimensions!r} is out of range: {model} supports "
            f"{MIN_DIMENSIONS} to {hidden_size}"
        )
    return dimensions


def _check_int(value: object, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be at least {minimum}, got {value}")


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _check_str(value: object, name: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def _check_optional_str(value: object, name: str) -> None:
    if value is not None:
        _check_str(value, name)
