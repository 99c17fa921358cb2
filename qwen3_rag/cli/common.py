"""What every ``qwen3-rag`` command shares.

Errors and exit codes, option flags derived from the configs, signal handling, and the logging
setup the CLI owns while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import threading
import typing
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen3_rag.core import (
    RuntimeConfig,
)
from qwen3_rag.core.config import fields as config_fields

logger = logging.getLogger("qwen3_rag.cli")

EXIT_OK = 0
EXIT_INTERRUPTED = 1
EXIT_USAGE = 2
EXIT_DAMAGED = 3
EXIT_STORAGE = 4

CLI_INSTALL = 'pip install "qwen3-rag[cli]"'


class CliError(Exception):
    """An error reported to the user as one line, without a traceback."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; raised between writes, so every finished write is kept."""


def out(text: str = "") -> None:
    """Print a result line on stdout (progress and errors go to stderr)."""
    sys.stdout.write(text + "\n")


def require(*modules: str) -> None:
    """Import the CLI's optional dependencies, or fail with the install line to run."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise CliError(f"{name} is not installed; the CLI needs: {CLI_INSTALL}") from e


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


def model_reference(model: str) -> str:
    """A local folder as its absolute resolved path (stored so any cwd finds it); hub ids as is."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


# -- signals and progress ------------------------------------------------------------------
@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM; the index loop stops after the write in flight."""

    signal_name: str | None = None


@contextlib.contextmanager
def deferred_stop() -> Iterator[StopRequest]:
    """Handle SIGINT and SIGTERM by finishing the current write, then stopping.

    A second signal stops at once (``KeyboardInterrupt``). The previous handlers come back on
    exit. Outside the main thread signals cannot be handled, and the defaults stay.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.signal_name is not None:
            raise KeyboardInterrupt
        stop.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def format_duration(seconds: float) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour on."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


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
