"""``qwen3-rag eval --search-instructions``: choose the query instruction on a dev split.

Candidates (given, read from a file, or proposed by an LLM) are scored on a dev split of the
queries and the best is reported on the held-out rest (see :mod:`qwen3_rag.eval.instructions`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qwen3_rag.cli.common import EXIT_OK, CliError, out
from qwen3_rag.cli.eval_inputs import _dataset_json, _embedder
from qwen3_rag.cli.eval_report import format_search

#: The reply cache of instruction proposals, inside the eval cache folder.
LLM_CACHE_FILE = "instruction-llm-replies.jsonl"


def _candidates(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(instruction, source) of the instruction search's given candidates, checked early."""
    if not args.search_instructions:
        return []
    from qwen3_rag.eval import DataError, read_candidates
    from qwen3_rag.eval.instructions import clean_instruction

    found: list[tuple[str, str]] = []
    for text in args.instructions or []:
        try:
            found.append(("" if text == "" else clean_instruction(text), "flag"))
        except ValueError as e:
            raise CliError(f"--instruction {text!r}: {e}") from e
    if args.candidates:
        try:
            found += [(text, "file") for text in read_candidates(args.candidates)]
        except DataError as e:
            raise CliError(str(e)) from e
    return found


def _search(
    args: argparse.Namespace,
    dataset: Any,
    metrics: list[str],
    options: dict[str, Any],
    candidates: list[tuple[str, str]],
    progress: bool,
) -> int:
    """``--search-instructions``: choose on dev, report on test, write the choice."""
    from qwen3_rag.datafiles import write_atomic
    from qwen3_rag.eval import (
        parse_metrics,
        propose_instructions,
        search_instructions,
        split_queries,
    )
    from qwen3_rag.eval.evaluate import check_embedder_dimensions

    try:
        metric = parse_metrics(args.search_metric or metrics[0])[0]
        dev, test = split_queries(dataset, args.dev_fraction, args.seed)
    except ValueError as e:
        raise CliError(str(e)) from e
    embedder = _embedder(args, options, progress)
    dimensions = args.dimensions[0] if args.dimensions else None
    try:
        check_embedder_dimensions(embedder, dimensions)  # before the LLM and the embedding
    except ValueError as e:
        raise CliError(str(e)) from e
    proposals = None
    texts = [text for text, _ in candidates]
    sources = [source for _, source in candidates]
    if args.propose:
        from qwen3_rag.cli.synth import _llm
        from qwen3_rag.synth import LLMError, ReplyCache

        llm = _llm(args)
        cache_path = (
            Path(args.llm_cache).expanduser()
            if args.llm_cache
            else (None if args.no_cache else Path(args.eval_cache).expanduser() / LLM_CACHE_FILE)
        )
        try:
            proposals = propose_instructions(
                llm,
                dev,
                args.propose,
                tried=[embedder.instruction, *texts],
                cache=ReplyCache(cache_path),
                seed=args.seed,
            )
        except LLMError as e:
            raise CliError(f"{e} (replies so far are cached; run again to resume)") from e
        texts += proposals.accepted
        sources += ["llm"] * len(proposals.accepted)
    cache_dir = None if args.no_cache else Path(args.eval_cache).expanduser()
    try:
        result = search_instructions(
            embedder,
            dev,
            test,
            texts,
            metric=metric,
            metrics=metrics,
            dimensions=dimensions,
            cache_dir=cache_dir,
            sources=sources,
            permutations=args.permutations,
            seed=args.seed,
            proposals=proposals,
        )
    except ValueError as e:
        raise CliError(str(e)) from e
    document = {"dataset": _dataset_json(args, dataset), **result.as_json()}
    write_atomic(args.save_instruction, [json.dumps(document, indent=2, ensure_ascii=False) + "\n"])
    for line in format_search(result, [metric, *[m for m in metrics if m != metric]]):
        out(line)
    out(f"written: {args.save_instruction}")
    out(result.flag)
    return EXIT_OK
