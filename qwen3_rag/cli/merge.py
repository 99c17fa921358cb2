"""``qwen3-rag merge``: slerp two or more fine-tuning checkpoints into one model folder."""

from __future__ import annotations

import argparse
from typing import Any

from qwen3_rag.cli.common import EXIT_OK, CliError, add_output_flags, out


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge the checkpoints; print the output folder."""
    from qwen3_rag.train.merge import MergeError, slerp_merge

    try:
        target = slerp_merge(
            args.checkpoints,
            args.weights,
            out=args.output,
            show_progress=False if args.quiet else None,
        )
    except (MergeError, ValueError) as e:
        raise CliError(str(e)) from e
    out(str(target))
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``merge`` to the ``qwen3-rag`` subcommands."""
    merge = sub.add_parser(
        "merge",
        help="slerp checkpoints into one model folder (the paper's model merging)",
        description="Spherical interpolation, tensor by tensor, of two or more checkpoint "
        "folders saved during fine-tuning (safetensors, full weights). More than two are "
        "merged pairwise in the given order with cumulative weights. The output is a normal "
        "model folder (config and tokenizer from the first checkpoint).",
    )
    merge.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint folders")
    merge.add_argument("--output", required=True, help="folder to create (must not exist)")
    merge.add_argument(
        "--weights",
        type=float,
        nargs="+",
        default=None,
        help="one positive weight per checkpoint (default: equal)",
    )
    add_output_flags(merge)
    merge.set_defaults(func=cmd_merge)
