"""What every ``qwen3-rag`` command shares.

Errors and exit codes, option flags derived from the configs, signal handling, and the logging
setup the CLI owns while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import typing
from collections.abc import Collection, Iterator
from typing import Any

from qwen3_rag.core import ModelLoadError, RuntimeConfig
from qwen3_rag.core.config import fields as config_fields

# The library's own helpers, re-exported for the commands: one home each.
from qwen3_rag.indexing.errors import IndexingError, Interrupted
from qwen3_rag.indexing.options import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_COLLECTION,
    DEFAULT_DB,
    StoreOptions,
    model_reference,
)
from qwen3_rag.indexing.progress import StopRequest, deferred_stop, format_duration

__all__ = [
    "EXIT_DAMAGED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STORAGE",
    "EXIT_USAGE",
    "CliError",
    "Interrupted",
    "StopRequest",
    "add_chunk_flags",
    "add_config_flags",
    "add_output_flags",
    "add_store_flags",
    "check_options",
    "deferred_stop",
    "format_duration",
    "given_options",
    "model_hint",
    "model_reference",
    "out",
    "rebuild_hint",
    "require",
    "store_options",
]

logger = logging.getLogger("qwen3_rag.cli")

EXIT_OK = 0
EXIT_INTERRUPTED = 1
EXIT_USAGE = 2
EXIT_DAMAGED = 3
EXIT_STORAGE = 4

#: The extra that installs the indexing commands' dependencies (Chroma, the splitter, pypdf).
CLI_EXTRA = "cli"


class CliError(Exception):
    """An error reported to the user as one line, without a traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def out(text: str = "") -> None:
    """Print a result line on stdout (progress and errors go to stderr)."""
    sys.stdout.write(text + "\n")


def install_line(extra: str) -> str:
    """The pip line that installs an extra, e.g. ``pip install "qwen3-rag[train]"``."""
    return f'pip install "qwen3-rag[{extra}]"'


def require(*modules: str, extra: str = CLI_EXTRA, what: str = "the CLI") -> None:
    """Import optional dependencies, or fail (one line, exit 2) naming the extra that has them.

    Args:
        *modules: Module names to import.
        extra: The extra of ``pyproject.toml`` that installs them.
        what: What needs them, for the message ("fine-tuning", "--eval"...).
    """
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise CliError(f"{name} is not installed; {what} needs: {install_line(extra)}") from e


# -- model options, from the one declaration in core/config.py -----------------------------
#: Runtime options that apply to every model a command loads (query loads two).
SHARED_OPTIONS = tuple(
    f.name
    for f in config_fields(RuntimeConfig)
    if f.metadata["cli"] and not f.metadata["persist"] and f.name != "revision"
)


#: ``-v``'s help where a command loads models: what it lets through.
VERBOSE_HELP = "show library logs and progress bars (weight loading, PDF warnings)"


def add_output_flags(parser: Any, verbose_help: str = VERBOSE_HELP) -> None:
    """``-q/--quiet`` and ``-v/--verbose``: the same two flags on every command with progress."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)


def flag_name(name: str) -> str:
    """The flag for a config field: ``max_length`` -> ``--max-length``."""
    return "--" + name.replace("_", "-")


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type[RuntimeConfig],
    only: Collection[str] | None = None,
    *,
    prefix: str = "",
) -> None:
    """Add one flag per ``cli`` field of ``cls``: name, help and default come from the field.

    Every flag defaults to None ("not given"), so a stored collection's settings can fill in
    what the user did not type; ``--help`` shows the config's default. A ``prefix`` such as
    ``"reranker_"`` names the flags ``--reranker-max-length`` (``given_options`` takes the same
    prefix), for a command that configures two models. ``only`` restricts the flags to the
    fields it names (the options that apply to a command).
    """
    hints = typing.get_type_hints(cls)
    for f in config_fields(cls):
        if not f.metadata["cli"] or (only is not None and f.name not in only):
            continue
        name = prefix + f.name
        kind = next(
            (t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name]
        )
        # argparse %-formats help texts.
        text = f"{f.metadata['help']} (default: {f.default})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                flag_name(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        else:
            parser.add_argument(
                flag_name(name),
                dest=name,
                type=kind,
                default=None,
                metavar=f.name.upper(),
                help=text,
            )


def given_options(
    args: argparse.Namespace, cls: type[RuntimeConfig], prefix: str = ""
) -> dict[str, Any]:
    """The ``cls`` options the user typed (flags left out are not included)."""
    return {
        f.name: getattr(args, prefix + f.name)
        for f in config_fields(cls)
        if f.metadata["cli"] and getattr(args, prefix + f.name, None) is not None
    }


def check_options(cls: type[RuntimeConfig], options: dict[str, Any]) -> None:
    """Validate option values before any file, database or model is touched."""
    try:
        cls(**options)
    except (TypeError, ValueError) as e:
        raise CliError(f"bad option: {e}") from e


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, so redirections are honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


@contextlib.contextmanager
def log_to_stderr(verbose: bool) -> Iterator[None]:
    """Send the package's log records to stderr, one line each, while the CLI runs."""
    # The CLI owns its process while it runs: the library's warnings (skipped files,
    # truncation) and errors go to stderr as one line each, whatever logging setup exists.
    # pypdf's warnings go the same way (quiet_libraries decides whether they show).
    package = logging.getLogger("qwen3_rag")
    pypdf = logging.getLogger("pypdf")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    saved = [(lg, lg.level, lg.propagate) for lg in (package, pypdf)]
    for lg in (package, pypdf):
        lg.addHandler(handler)
        lg.propagate = False
    package.setLevel(logging.INFO if verbose else logging.WARNING)
    try:
        yield
    finally:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate


@contextlib.contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Hide transformers' progress bars and info logs and pypdf's warnings, then restore them.

    The CLI draws its own progress; a ``Loading weights`` bar or ``EOF marker not found``
    between its lines is noise. ``-v`` keeps them. Whatever the caller had set comes back on
    exit, so embedding ``main`` in another program changes nothing for it.
    """
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    pypdf = logging.getLogger("pypdf")
    pypdf_level = pypdf.level
    if not verbose:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        pypdf.setLevel(logging.ERROR)
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        else:
            hf_logging.disable_progress_bar()
        hf_logging.set_verbosity(verbosity)
        pypdf.setLevel(pypdf_level)


@contextlib.contextmanager
def model_hint(flag: str, make_variable: str) -> Iterator[None]:
    """Add the CLI's ways to a model-loading error: a local folder, offline use, ``make demo``."""
    try:
        yield
    except ModelLoadError as e:
        raise CliError(
            f"{e} [CLI: {flag} /path/to/folder uses a local copy; --local-files-only or "
            f"HF_HUB_OFFLINE=1 uses only the cache; make demo: {make_variable}=/path/to/folder]"
        ) from e


# -- the store and chunk flags: one declaration for every command that takes them ----------
def add_store_flags(
    parser: Any,
    *,
    db_help: str = f"embedded Chroma folder (default: {DEFAULT_DB})",
    url_help: str = "Chroma server, e.g. http://localhost:8000",
    collection_default: str | None = DEFAULT_COLLECTION,
) -> None:
    """``--db`` or ``--chroma-url``, and ``--collection`` (its default from the library)."""
    store = parser.add_mutually_exclusive_group()
    store.add_argument("--db", default=None, help=db_help)
    store.add_argument("--chroma-url", default=None, help=url_help)
    shown = f" (default: {collection_default})" if collection_default else ""
    parser.add_argument("--collection", default=collection_default, help=f"collection name{shown}")


def store_options(args: argparse.Namespace) -> StoreOptions:
    """The :class:`~qwen3_rag.indexing.StoreOptions` of the store flags; bad ones exit 2."""
    try:
        return StoreOptions(
            db=args.db, chroma_url=args.chroma_url, collection=args.collection or DEFAULT_COLLECTION
        )
    except IndexingError as e:
        raise CliError(str(e).replace("chroma_url", "--chroma-url", 1)) from e


def add_chunk_flags(parser: Any) -> None:
    """``--chunk-size`` and ``--chunk-overlap``, with the library's defaults."""
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"characters per chunk (default: {DEFAULT_CHUNK_SIZE})",
    )
    parser.add_argument(
        "--chunk-overlap",
        type=int,
        default=DEFAULT_CHUNK_OVERLAP,
        help=f"characters shared by neighbouring chunks (default: {DEFAULT_CHUNK_OVERLAP})",
    )


def rebuild_hint(paths: list[str] | None, store: StoreOptions) -> str:
    """The command that recreates a damaged store, as its error says it."""
    return f"qwen3-rag index {' '.join(paths or ['PATH'])} {store.where} --rebuild"
