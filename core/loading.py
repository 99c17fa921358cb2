"""Safe model loading, device and dtype resolution, and the process-wide model cache."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import platform
import re
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import normalize_dtype
from .errors import InvalidInputError, ModelLoadError
from .spec import CONTROL_TOKENS, DEFAULT_TASK, format_query, query_prompt_task
from .tokenization import SafeTokenizer

logger = logging.getLogger(__name__)

DTypeLike = str | torch.dtype
DeviceLike = str | torch.device | None


# Only these files are fetched from a hub: configs, tokenizer files and safetensors weights. A
# pickled ``pytorch_model.bin`` is never downloaded, so it can never be loaded either.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


def resolve_device(device: DeviceLike) -> torch.device:
    """Turn ``None``/"cpu"/"cuda"/"cuda:1"/"mps"/``torch.device`` into a usable device.

    ``None`` picks CUDA, then MPS, then the CPU.

    Raises:
        ValueError: If the device string is malformed or the device is not available here.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InvalidInputError(f"device={device!r} is not a valid torch device") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(f"device={device!r}: CUDA is not available in this torch build")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device={device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise InvalidInputError(f"device={device!r}: supported devices are cpu, cuda[:N] and mps")
    return dev


#: torch's checks for the CPU features that decide low-precision matmul speed, by the names
#: ``/proc/cpuinfo`` gives them. AVX512_BF16 and AMX (whose CPUs all have AMX_BF16) compute
#: bfloat16 dot products natively; without them bfloat16 matmuls convert on the fly and run
#: several times slower than float32 (benchmarks/bench.py measures both).
_X86_CHECKS = {
    "avx2": "_is_avx2_supported",
    "avx512f": "_is_avx512_supported",
    "avx512_vnni": "_is_vnni_supported",
    "avx512_bf16": "_is_avx512_bf16_supported",
    "amx_tile": "_is_amx_tile_supported",
}
#: The features (x86 and ARM names) that make bfloat16 matmuls native.
_NATIVE_BF16 = ("avx512_bf16", "amx_tile", "bf16")


@functools.cache
def cpu_features() -> dict[str, bool | None]:
    """The low-precision features of this CPU that torch's kernels use, as torch detects them.

    On x86 the keys are those of ``_X86_CHECKS``; on 64-bit ARM, ``bf16`` (the BF16 extension,
    through oneDNN). A value is None where this torch build has no check for the feature.
    torch's own detection is read (the ``cpuinfo`` library its kernels dispatch on) because it
    works the same on every operating system.

    Example:
        >>> isinstance(cpu_features(), dict)
        True
    """
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        checks = {name: getattr(torch.cpu, fn, None) for name, fn in _X86_CHECKS.items()}
        return {name: None if check is None else bool(check()) for name, check in checks.items()}
    if machine in ("aarch64", "arm64"):
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        usable = torch.backends.mkldnn.is_available() and check is not None
        return {"bf16": bool(check()) if usable and check is not None else None}
    return {}


def cpu_native_bf16() -> bool | None:
    """Whether this CPU computes bfloat16 matmuls natively (None: torch cannot tell here).

    True with AVX512_BF16 or AMX on x86, or the BF16 extension on 64-bit ARM.
    """
    features = cpu_features()
    native = [features[name] for name in _NATIVE_BF16 if name in features]
    if any(native):
        return True
    if not native or None in native:
        return None
    return False


def _warn_slow_cpu_bf16() -> None:
    """Say once per load when ``dtype="bfloat16"`` on this CPU is slower than float32."""
    native = cpu_native_bf16()
    if native:
        return
    found = ", ".join(name for name, on in cpu_features().items() if on) or "none detected"
    reason = (
        "it has no native bfloat16 instructions"
        if native is False
        else "torch cannot tell whether it has native bfloat16 instructions"
    )
    logger.warning(
        "dtype='bfloat16' on this CPU: %s (AVX512_BF16 or AMX on x86, BF16 on ARM; found: %s), "
        "so bfloat16 matmuls run several times slower than float32; use dtype='float32' "
        "(or 'auto')",
        reason,
        found,
    )


def resolve_dtype(dtype: DTypeLike, device: torch.device) -> torch.dtype:
    """Resolve ``"auto"`` and dtype names for ``device``.

    Auto: bfloat16 on CUDA devices that support it, else float16 (outputs are checked for
    NaN/inf); float16 on MPS; float32 on the CPU, which is exact. ``bfloat16`` on the CPU is fast
    only with native bfloat16 instructions (:func:`cpu_native_bf16`); without them it still runs,
    after one warning.

    Raises:
        ValueError: For an unknown dtype, or float16 on the CPU.
    """
    name = normalize_dtype(dtype)  # the one table of dtype names (config.DTYPE_NAMES)
    if name == "auto":
        if device.type == "cuda":
            with torch.cuda.device(device):
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.float32
    resolved: torch.dtype = getattr(torch, name)
    if resolved == torch.float16 and device.type == "cpu":
        raise InvalidInputError(
            "dtype='float16' on the CPU is many times slower than float32 and prone to overflow; "
            "use dtype='float32' (or 'auto') on the CPU"
        )
    if resolved == torch.bfloat16 and device.type == "cpu":
        _warn_slow_cpu_bf16()
    return resolved


def resolve_attn_implementation(requested: str | None, device: torch.device) -> str:
    """Pick the attention kernel: ``flash_attention_2`` on CUDA when installed, else ``sdpa``."""
    if requested is not None:
        if requested not in ("sdpa", "eager", "flash_attention_2"):
            raise InvalidInputError(
                f"attn_implementation={requested!r}; use 'sdpa', 'eager' or 'flash_attention_2'"
            )
        if requested == "flash_attention_2" and device.type != "cuda":
            raise InvalidInputError("attn_implementation='flash_attention_2' needs a CUDA device")
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~", "\\"))
        or os.path.isabs(model)
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
    )


def resolve_model_dir(
    model: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Path:
    """Return a local folder holding the model, downloading only safe files from a hub id.

    Args:
        model: A local folder, or a Hugging Face hub id such as ``"Qwen/Qwen3-Embedding-0.6B"``.
        revision: Branch, tag or commit of a hub model (pin a commit in production).
        cache_dir: Hugging Face cache folder.
        local_files_only: Never touch the network; use the local cache only.

    Raises:
        ModelLoadError: If the folder does not exist, holds no config or no safetensors weights,
            or the hub id cannot be resolved. The message names the path or id.
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a hub id or a folder path, got {type(model).__name__}")
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        _check_model_dir(path)
        return path.resolve()
    if path.exists():
        raise ModelLoadError(f"model path {text!r} is a file; pass the folder that holds it")
    if _looks_like_path(text) or not text.strip():
        raise ModelLoadError(f"model folder {text!r} does not exist")
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id=text,
            revision=revision,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            local_files_only=offline,
            allow_patterns=_HUB_PATTERNS,
        )
    except Exception as e:  # huggingface_hub raises many types; all mean "cannot get this model"
        raise ModelLoadError(_hub_failure(text, revision, offline, e)) from e
    _check_model_dir(Path(local))
    return Path(local)


def _hub_failure(model: str, revision: str | None, offline: bool, error: Exception) -> str:
    """Why a hub id could not be used, told apart: offline, unreachable, or no such model."""
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = f"model {model!r} (revision {revision or 'main'})"
    folder = "or pass the local folder that holds the model instead of the hub id"
    if offline:
        return (
            f"{name} is not in the local cache, and downloads are off (HF_HUB_OFFLINE=1 or "
            f"local_files_only=True): download it once where the hub is reachable, {folder}"
        )
    if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError)):
        return f"{name} does not exist on the hub (or is private or gated): {error}"
    if isinstance(error, LocalEntryNotFoundError):  # raised for a failed connection
        cause = error.__cause__ or error.__context__ or error
        return (
            f"cannot reach the Hugging Face hub to fetch {name}, and it is not in the local "
            f"cache ({type(cause).__name__}: {cause}): check the network, {folder}; with "
            "HF_HUB_OFFLINE=1 only the cache is used"
        )
    return f"{name} could not be fetched from the hub: {type(error).__name__}: {error}"


#: Where a sentence-transformers folder (the fine-tuner writes one) keeps its query prompt.
SENTENCE_TRANSFORMERS_CONFIG = "config_sentence_transformers.json"


def folder_query_task(model_dir: Path) -> str | None:
    """The query task a model folder was trained with: its sentence-transformers query prompt.

    Official checkpoints and folders written by ``qwen3-rag finetune`` carry
    ``config_sentence_transformers.json`` with ``prompts["query"]`` in the model card's
    template; its task is the embedder's default instruction.

    Returns:
        The task (``""``: queries without instruction), or None when the folder names none.
        A prompt in another format is not used, with a warning (it is not this model's
        template, so no task can be read from it).
    """
    file = model_dir / SENTENCE_TRANSFORMERS_CONFIG
    if not file.is_file():
        return None
    try:
        prompt = json.loads(file.read_text(encoding="utf-8")).get("prompts", {}).get("query")
    except (OSError, ValueError, AttributeError) as e:
        logger.warning("%s is not readable (%s): its query prompt is not used", file, e)
        return None
    if prompt is None:
        return None
    task = query_prompt_task(prompt) if isinstance(prompt, str) else None
    if task is None:
        logger.warning(
            "%s: the query prompt %r is not the Qwen3 template %r: it is not used",
            file,
            prompt,
            format_query("", "{task}"),
        )
    return task


def default_query_task(model_dir: Path) -> str:
    """The embedder's instruction when none is given: the folder's own task, else the card's."""
    task = folder_query_task(model_dir)
    return DEFAULT_TASK if task is None else task


def _check_model_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {str(path)!r} has no config.json")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.glob("*.bin"))
        hint = (
            f" It holds only pickle weights ({', '.join(pickles)}), which can run arbitrary code "
            "when loaded; convert them to safetensors first."
            if pickles
            else ""
        )
        raise ModelLoadError(f"model folder {str(path)!r} has no .safetensors weights.{hint}")
    if not (path / "tokenizer.json").is_file():
        raise ModelLoadError(
            f"model folder {str(path)!r} has no tokenizer.json (a fast tokenizer is required)"
        )


@dataclass(eq=False)
class LoadedModel:
    """Weights, tokenizer and the lock that serialises forwards, shared by every user of a model.

    Only what is the same for every user lives here; per-instance state (options, the token
    budget after an out-of-memory retry) stays on the embedder or reranker.
    """

    key: tuple[Any, ...]
    model: torch.nn.Module
    extras: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    __weakref__: Any = field(default=None, init=False, repr=False, compare=False)


class _KeyLock:
    """The lock one key's load holds, and how many callers hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class ModelCache:
    """Loaded models by key: each loaded once, shared while anyone uses it.

    Lifetime: models are held weakly. An entry lives exactly as long as something else refers
    to its :class:`LoadedModel` -- in practice the embedders and rerankers built on it. When
    the last of them is gone, the weights are freed (at once in CPython, or at the next garbage
    collection if a reference cycle holds them) and the entry disappears; the next constructor
    with that key loads again. Nothing is ever evicted while in use, and nothing outlives its
    users, so the cache needs no size limit and no ``clear()``.

    Concurrent callers with the same key wait for one load; different keys do not wait for each
    other here (the core's loaders then run transformers one at a time: :func:`transformers_load`).
    The per-key lock exists only while a load of that key is in progress or awaited.

    Example:
        >>> cache = ModelCache()
        >>> model = cache.get_or_load(("k",), lambda: LoadedModel(("k",), torch.nn.Identity()))
        >>> ("k",) in cache, len(cache)
        (True, 1)
        >>> del model
        >>> ("k",) in cache, len(cache)
        (False, 0)
    """

    def __init__(self) -> None:
        self._models: weakref.WeakValueDictionary[tuple[Any, ...], LoadedModel] = (
            weakref.WeakValueDictionary()
        )
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[Any, ...], _KeyLock] = {}

    def get_or_load(self, key: tuple[Any, ...], loader: Callable[[], LoadedModel]) -> LoadedModel:
        """Return the live model registered under ``key``, calling ``loader`` once if there is none.

        Args:
            key: Everything that makes two loads different (path, revision, device, dtype, ...).
            loader: Builds the model; called at most once at a time per key. If it raises, the
                error reaches this caller and the next caller tries again.
        """
        with self._lock:
            found = self._models.get(key)
            if found is not None:
                return found
            entry = self._key_locks.get(key)
            if entry is None:
                entry = self._key_locks[key] = _KeyLock()
            entry.users += 1
        try:
            with entry.lock:
                with self._lock:
                    found = self._models.get(key)
                if found is not None:
                    return found
                loaded = loader()
                with self._lock:
                    self._models[key] = loaded
                return loaded
        finally:
            with self._lock:
                entry.users -= 1
                if entry.users == 0:  # nobody holds or awaits it: the next load makes a new one
                    del self._key_locks[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._models

    def __len__(self) -> int:
        """Number of models alive now."""
        with self._lock:
            return len(self._models)


#: The cache every :class:`~qwen3_rag.core.Qwen3Embedder` and reranker loads through.
MODEL_CACHE = ModelCache()


#: Oldest transformers this library runs on, and the one CI tests besides the newest: it has
#: the ``dtype`` argument, cache layers, attention/mask registries and precomputed mask mappings.
MIN_TRANSFORMERS = (4, 56)


def check_transformers_version(version: str) -> None:
    """Require transformers >= :data:`MIN_TRANSFORMERS`, naming the installed version.

    Example:
        >>> check_transformers_version("5.0.0rc1")
        >>> check_transformers_version("4.55.4")
        Traceback (most recent call last):
        ...
        ImportError: qwen3-rag needs transformers>=4.56, found 4.55.4: ...
    """
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ImportError(f"cannot read the transformers version {version!r}")
    if (int(match[1]), int(match[2])) < MIN_TRANSFORMERS:
        need = ".".join(map(str, MIN_TRANSFORMERS))
        raise ImportError(
            f"qwen3-rag needs transformers>={need}, found {version}: "
            f"pip install -U 'transformers>={need}'"
        )


def from_pretrained_kwargs(dtype: torch.dtype, attn_implementation: str) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` that keep loading safe and offline."""
    return {
        "dtype": dtype,
        "attn_implementation": attn_implementation,
        "trust_remote_code": False,
        "use_safetensors": True,
        "local_files_only": True,
    }


#: Held while the core loads weights with transformers. ``from_pretrained`` swaps process-wide
#: state while it runs (it patches ``PreTrainedModel.tie_weights`` and torch's init functions,
#: then puts back what it found), so two loads in threads can put back each other's patch for
#: good: seen with transformers 5, after which every tied-head load (the reranker) fails with
#: "Cannot copy out of meta tensor". The progress-bar switch below is process-wide too.
_TRANSFORMERS_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def transformers_load(show_progress: bool) -> Iterator[None]:
    """Run one ``from_pretrained`` at a time, without its progress bars unless ``show_progress``.

    The library is quiet unless asked: transformers' ``Loading weights`` bar appears only with
    ``show_progress=True`` (and then only if transformers' own setting allows bars). The bars
    are turned off for the load alone: transformers' switch and huggingface_hub's per-group
    ones (which transformers' switch overwrites) come back as the caller had them.
    """
    with _TRANSFORMERS_LOAD_LOCK:
        if show_progress:
            yield
            return
        from transformers.utils import logging as hf_logging

        # The module, not the ``tqdm`` class that ``huggingface_hub.utils`` exports by its name.
        hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
        bars_on = hf_logging.is_progress_bar_enabled()
        hub_states = dict(hub_tqdm.progress_bar_states)
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if bars_on:
                hf_logging.enable_progress_bar()
            hub_tqdm.progress_bar_states.clear()
            hub_tqdm.progress_bar_states.update(hub_states)


def check_qwen3_config(path: Path) -> Any:
    """Load the config and require a Qwen3 architecture (and a recent enough transformers)."""
    import transformers

    check_transformers_version(transformers.__version__)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"cannot read the config of {str(path)!r}: {e}") from e
    if getattr(config, "model_type", None) != "qwen3":
        raise ModelLoadError(
            f"{str(path)!r} is a {getattr(config, 'model_type', 'unknown')!r} model; "
            "this library runs Qwen3-Embedding and Qwen3-Reranker (model_type 'qwen3')"
        )
    return config


@functools.lru_cache(maxsize=8)
def _load_tokenizer(path: str, mtime_ns: int, size: int) -> SafeTokenizer:
    return SafeTokenizer.from_file(path, CONTROL_TOKENS)


def load_tokenizer(model_dir: Path) -> SafeTokenizer:
    """The model's :class:`SafeTokenizer`, cached per file version (tokenizers are read-only)."""
    file = model_dir / "tokenizer.json"
    stat = file.stat()
    return _load_tokenizer(str(file), stat.st_mtime_ns, stat.st_size)
