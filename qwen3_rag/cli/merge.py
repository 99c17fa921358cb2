"""``qwen3-rag merge``: slerp two or more fine-tuning checkpoints into one model folder."""

from __future__ import annotations

import argparse
from typing import Any

from qwen3_rag.cli.common import EXIT_OK, CliError, add_output_flags, out


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge the checkpoints; say what was written where."""
    from safetensors import safe_open

    from qwen3_rag.train.merge import MergeError, slerp_merge

    weights = args.weights
    if args.t is not None:
        if len(args.checkpoints) != 2:
            raise CliError(f"--t interpolates two checkpoints; got {len(args.checkpoints)}")
        if not 0 <= args.t <= 1:
            raise CliError(f"--t must be in [0, 1], got {args.t}")
        weights = [1 - args.t, args.t]
    try:
        target = slerp_merge(
            args.checkpoints,
            weights,
            out=args.output,
            show_progress=False if args.quiet else None,
        )
    except (MergeError, ValueError) as e:
        raise CliError(str(e)) from e
    shards = sorted(target.glob("*.safetensors"))
    tensors = 0
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            tensors += len(list(f.keys()))
    given = weights or [1.0] * len(args.checkpoints)
    shares = ", ".join(f"{w / sum(given):.3g}" for w in given)
    out(
        f"merged {len(args.checkpoints)} checkpoints (slerp, weights {shares}) into the model "
        f"folder {str(target)!r}: {tensors} tensors in {len(shards)} safetensors file(s), the "
        f"other files (config, tokenizer) copied from {args.checkpoints[0]!r}"
    )
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
    choice = merge.add_mutually_exclusive_group()
    choice.add_argument(
        "--weights",
        type=float,
        nargs="+",
        default=None,
        help="one weight >= 0 per checkpoint, not all 0 (default: equal)",
    )
    choice.add_argument(
        "--t",
        type=float,
        default=None,
        help="two checkpoints: slerp at t (0: the first, 1: the second, exactly)",
    )
    add_output_flags(merge)
    merge.set_defaults(func=cmd_merge)
