"""``qwen3-rag finetune embedder|reranker DATA --model M --output DIR``: fine-tune on your data.

Data parallel on N devices or processes, launched the standard way::

    torchrun --nproc_per_node N -m qwen3_rag finetune embedder DATA --model M --output DIR

``--batch-size`` is the global batch; only the first process prints and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from qwen3_rag.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    add_config_flags,
    add_output_flags,
    deferred_stop,
    flag_name,
    given_options,
    out,
    require,
)
from qwen3_rag.core import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL, RuntimeConfig
from qwen3_rag.train.options import TrainingOptions

#: The runtime options that apply to training (batching and kernel options do not).
_RUNTIME_FLAGS = ("device", "dtype", "revision", "cache_dir", "local_files_only")
_KINDS = {
    "embedder": (
        DEFAULT_EMBEDDING_MODEL,
        "the paper's contrastive loss over in-batch and hard "
        "negatives (with false-negative masking)",
    ),
    "reranker": (
        DEFAULT_RERANKER_MODEL,
        '"yes" for positives, "no" for hard negatives at the answer position',
    ),
}


def _training_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainingOptions` field, its help and default from the field."""
    hints = typing.get_type_hints(TrainingOptions)
    for f in dataclasses.fields(TrainingOptions):
        if not f.metadata["cli"]:
            continue
        kind = next(
            (t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name]
        )
        default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        text = f"{f.metadata['help']} (default: {default})".replace("%", "%%")
        if kind is bool:
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                help=text,
                action=argparse.BooleanOptionalAction,
            )
        else:
            parser.add_argument(
                flag_name(f.name),
                dest=f.name,
                default=None,
                help=text,
                metavar=f.name.upper(),
                type=str if typing.get_origin(kind) is tuple else kind,
            )


def register(sub: Any) -> None:
    """Add ``finetune embedder`` and ``finetune reranker`` to the ``qwen3-rag`` subcommands."""
    finetune = sub.add_parser("finetune", help="fine-tune the embedder or the reranker")
    kinds = finetune.add_subparsers(dest="kind", required=True)
    for kind, (model, loss) in _KINDS.items():
        p = kinds.add_parser(
            kind,
            help=f"fine-tune a Qwen3 {kind}: {loss}",
            description=f"Fine-tune a Qwen3 {kind} ({loss}); the output folder "
            "gets the model (LoRA merged), checkpoints/ and train_log.jsonl. Data parallel: "
            "'torchrun --nproc_per_node N -m qwen3_rag finetune ...' (NCCL on GPUs, gloo on "
            "CPUs); --batch-size is then the global batch, split across the N processes, and "
            "the run equals one process's with that batch; --fsdp also shards the model's "
            "weights, gradients and optimizer state across them.",
        )
        p.add_argument(
            "data",
            help='JSONL ({"query", "pos": [...], "neg": [...], '
            '"instruction"?} per line) or a BEIR folder with a train split',
        )
        p.add_argument("--model", default=model, help=f"hub id or local folder (default: {model})")
        p.add_argument(
            "--output",
            required=True,
            type=Path,
            help="folder for the fine-tuned model, its checkpoints and its log",
        )
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue from the last checkpoint in --output (after a kill or stop)",
        )
        p.add_argument(
            "--eval",
            dest="eval_data",
            metavar="DATA",
            type=Path,
            default=None,
            help="BEIR folder evaluated before training and at each checkpoint"
            + (
                "" if kind == "embedder" else " (the reranker reorders BM25's top 30 of each query)"
            ),
        )
        add_output_flags(p, "log checkpoints and evaluations, and show library logs")
        _training_flags(p.add_argument_group("training options"))
        add_config_flags(p.add_argument_group("model options"), RuntimeConfig, _RUNTIME_FLAGS)
        p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    """Run ``qwen3-rag finetune``."""
    options: dict[str, Any] = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainingOptions)
        if f.metadata["cli"] and getattr(args, f.name, None) is not None
    }
    if args.quiet:
        options["show_progress"] = False
    try:
        TrainingOptions(**options)
    except (TypeError, ValueError) as e:
        raise CliError(f"bad option: {e}") from e
    runtime = {k: v for k, v in given_options(args, RuntimeConfig).items() if k in _RUNTIME_FLAGS}
    if options.get("lora_rank", TrainingOptions.lora_rank) > 0:
        require("peft", extra="train", what="LoRA fine-tuning")
    data = Path(args.data)
    if not data.exists():
        raise CliError(f"training data {args.data!r} does not exist")
    eval_data = getattr(args, "eval_data", None)
    if eval_data is not None and not eval_data.is_dir():
        raise CliError(f"--eval {str(eval_data)!r} is not a BEIR folder")
    if eval_data is not None:  # before any model loads: the metrics come from the eval extra
        require("pytrec_eval", "bm25s", extra="eval", what="--eval")
    from qwen3_rag.train.distributed import launched_world
    from qwen3_rag.train.trainer import TrainingInterrupted, finetune_embedder, finetune_reranker

    run = finetune_embedder if args.kind == "embedder" else finetune_reranker
    with deferred_stop() as stop:
        try:
            result = run(
                data,
                model=args.model,
                output=args.output,
                eval_data=eval_data,
                resume=args.resume,
                should_stop=lambda: stop.signal_name is not None,
                **options,
                **runtime,
            )
        except TrainingInterrupted as e:
            raise CliError(
                f"{stop.signal_name or 'stop'}: {e}; run the same command with "
                "--resume to continue",
                EXIT_INTERRUPTED,
            ) from e
    if launched_world()[0] != 0:
        return EXIT_OK  # under torchrun, the first process reports for all of them
    out(
        f"fine-tuned {args.kind}: {result.output} ({result.steps} steps"
        + (f", last loss {result.loss:.4f})" if result.loss is not None else ")")
    )
    if result.evaluations:
        names = list(result.evaluations[0]["metrics"])
        out("step\t" + "\t".join(names))
        for ev in result.evaluations:
            label = f"{ev['step']}{' (merged)' if ev.get('merged') else ''}"
            out(label + "\t" + "\t".join(f"{ev['metrics'][n]:.4f}" for n in names))
    return EXIT_OK
