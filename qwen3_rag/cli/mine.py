"""``qwen3-rag mine``: hard negatives for training data, from the current embedding model."""

from __future__ import annotations

import argparse
from typing import Any

from qwen3_rag.cli.common import (
    EXIT_OK,
    CliError,
    add_config_flags,
    add_output_flags,
    check_options,
    given_options,
    model_reference,
    out,
)
from qwen3_rag.core import DEFAULT_EMBEDDING_MODEL, EmbedderConfig


def cmd_mine(args: argparse.Namespace) -> int:
    """Mine, write the training file, print how many examples it holds."""
    from qwen3_rag.core import Qwen3Embedder
    from qwen3_rag.train.data import TrainingDataError, load_training_data, write_training_data
    from qwen3_rag.train.mine import load_corpus, mine_hard_negatives

    options = given_options(args, EmbedderConfig)
    check_options(EmbedderConfig, options)
    try:
        examples = load_training_data(args.data)
        corpus = load_corpus(args.corpus)
    except TrainingDataError as e:
        raise CliError(str(e)) from e
    embedder = Qwen3Embedder(model_reference(args.model), **options)
    mined = mine_hard_negatives(
        examples,
        corpus,
        embedder,
        negatives=args.negatives,
        margin=args.margin,
        show_progress=False if args.quiet else None,
    )
    count = write_training_data(args.output, mined)
    out(f"{count} examples with hard negatives from {len(corpus)} passages: {args.output}")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``mine`` to the ``qwen3-rag`` subcommands."""
    from qwen3_rag.train.loss import DEFAULT_MARGIN
    from qwen3_rag.train.mine import DEFAULT_NEGATIVES

    mine = sub.add_parser(
        "mine",
        help="add hard negatives to training data with the current embedding model",
        description="Rank the corpus for each training query; keep the best passages that are "
        "not positives and do not score above the lowest positive's score plus --margin "
        "(likely unlabelled positives). Existing negatives are replaced.",
    )
    mine.add_argument("data", help="training data: JSONL (query, pos, neg) or a BEIR folder")
    mine.add_argument(
        "--corpus",
        required=True,
        help="passages: a JSONL file (strings or {text}), a BEIR folder, or a folder of "
        ".txt/.md/.pdf files (chunked as by index)",
    )
    mine.add_argument("--output", required=True, help="JSONL file to write (atomically)")
    mine.add_argument(
        "--model",
        default=DEFAULT_EMBEDDING_MODEL,
        help=f"embedding model, hub id or folder (default: {DEFAULT_EMBEDDING_MODEL})",
    )
    mine.add_argument(
        "--negatives",
        type=int,
        default=DEFAULT_NEGATIVES,
        help=f"hard negatives per query (default: {DEFAULT_NEGATIVES})",
    )
    mine.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help=f"drop candidates scoring above the positive's score + MARGIN (default: "
        f"{DEFAULT_MARGIN})",
    )
    add_output_flags(mine)
    add_config_flags(mine.add_argument_group("embedding model options"), EmbedderConfig)
    mine.set_defaults(func=cmd_mine)
