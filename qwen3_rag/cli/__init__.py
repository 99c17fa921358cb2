"""``qwen3-rag``: index a folder into Chroma, then ask questions and get reranked sources.

qwen3-rag index ./docs                      # embedded Chroma in ./qwen3_rag_db
qwen3-rag query "How do I rotate keys?"     # vector search, then Qwen3-Reranker
qwen3-rag query "..." --json                # machine-readable output
qwen3-rag prune                             # drop chunks whose source file is gone

Exit status: 0 done, 1 interrupted (run the same command again to resume), 2 a usage or input
error, 3 the embedded database is damaged (``index --rebuild`` recreates it), 4 the database
cannot be written (disk full, file not writable).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qwen3_rag.cli.common import (
    EXIT_DAMAGED,
    EXIT_INTERRUPTED,
    EXIT_STORAGE,
    EXIT_USAGE,
    CliError,
    Interrupted,
    log_to_stderr,
    logger,
    quiet_libraries,
)
from qwen3_rag.core import Qwen3RagError
from qwen3_rag.indexing.errors import StoreDamagedError, StoreNotWritableError

#: The modules that add subcommands, in ``--help`` order. Each has ``register(subparsers)``
#: and imports its heavy dependencies (FastAPI, Ray, peft...) only when its command runs, so
#: ``qwen3-rag index`` never pays for the server's imports.
COMMAND_MODULES = (
    "qwen3_rag.cli.index",
    "qwen3_rag.cli.serve",
    "qwen3_rag.cli.eval",
    "qwen3_rag.cli.synth",
    "qwen3_rag.cli.finetune",
    "qwen3_rag.cli.mine",
    "qwen3_rag.cli.merge",
)


#: Library errors with an exit status of their own; every other Qwen3RagError is "bad input".
_EXIT_CODES: dict[type[BaseException], int] = {
    StoreDamagedError: EXIT_DAMAGED,
    StoreNotWritableError: EXIT_STORAGE,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``qwen3-rag`` argument parser, with every command of :data:`COMMAND_MODULES`."""
    from qwen3_rag import __version__

    parser = argparse.ArgumentParser(
        prog="qwen3-rag",
        description="Qwen3-Embedding and Qwen3-Reranker for RAG: index files into Chroma, ask "
        "questions, serve, evaluate, fine-tune.",
        epilog="exit status: 0 done, 1 interrupted (run again to resume), 2 bad input, "
        "3 damaged database (index --rebuild), 4 database not writable (disk full, permissions)",
    )
    parser.add_argument("--version", action="version", version=f"qwen3-rag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    with log_to_stderr(verbose), quiet_libraries(verbose):
        try:
            return int(args.func(args))
        except CliError as e:
            logger.error("%s", e)
            return e.code
        except Interrupted as e:
            logger.error("%s; run the same command again to resume", e)
            return EXIT_INTERRUPTED
        # The library's own errors are the user's to fix (a bad option or input, a model that
        # cannot load, a store that cannot be used): one line. Anything else, a ValueError
        # included, is a bug and keeps its traceback.
        except Qwen3RagError as e:
            logger.error("%s", e)
            return _EXIT_CODES.get(type(e), EXIT_USAGE)
        except KeyboardInterrupt:
            logger.error("interrupted; run the same command again to resume")
            return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
