"""What ``qwen3-rag eval`` reads and checks before it runs.

Flag values, the extra it needs, the request's conflicts and output paths, the dataset, the
embedding model, and the dense run of an indexed Chroma collection (``--collection``).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from qwen3_rag.cli.common import CliError, model_reference
from qwen3_rag.core import DEFAULT_EMBEDDING_MODEL

EVAL_INSTALL = 'pip install "qwen3-rag[eval]"'
#: DATA naming the built-in code-search set (qwen3_rag.eval.stdlib), optionally ``stdlib:a,b``.
STDLIB = "stdlib"


def _require_eval() -> None:
    import importlib

    for name in ("pytrec_eval", "bm25s", "scipy"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise CliError(f"{name} is not installed; qwen3-rag eval needs: {EVAL_INSTALL}") from e


def _dimensions(text: str) -> list[int | None]:
    values: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part in ("", "full", "none"):
            values.append(None)
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--dimensions takes a comma list of integers (or 'full'), got {part!r}"
            ) from None
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def _collection_run(args: argparse.Namespace, dataset: Any, progress: bool) -> tuple[Any, str, Any]:
    """Search an indexed Chroma collection: (run, row name, texts of the returned documents)."""
    from qwen3_rag.cli.common import (
        SHARED_OPTIONS,
        model_hint,
        rebuild_hint,
        require,
        store_options,
    )
    from qwen3_rag.eval.evaluate import model_label
    from qwen3_rag.eval.runs import RUN_DEPTH
    from qwen3_rag.indexing import collection_embedder, open_store

    require("chromadb")
    where = store_options(args)
    runtime = {k: getattr(args, k) for k in SHARED_OPTIONS if getattr(args, k, None) is not None}
    with (
        open_store(where, write=False, rebuild_hint=rebuild_hint(None, where)) as opened,
        opened.errors(),
    ):
        with model_hint("--embedding-model", "EMBED_MODEL"):
            embedder = collection_embedder(opened, getattr(args, "embedding_model", None), runtime)
        collection = opened.open_for(embedder)
        count = collection.count()
        if count == 0:
            raise CliError(f"collection {args.collection!r} is empty")
        query_ids = list(dataset.queries)
        vectors = embedder.embed_queries([dataset.queries[q] for q in query_ids])
        run: dict[str, dict[str, float]] = {}
        texts: dict[str, str] = {}
        unknown: set[str] = set()
        from tqdm.auto import tqdm

        for start in tqdm(
            range(0, len(query_ids), 64), desc="search", unit="batch", disable=not progress
        ):
            hits = collection.query(
                query_embeddings=vectors[start : start + 64],
                n_results=min(RUN_DEPTH, count),
                include=["documents", "metadatas", "distances"],
            )
            for row, qid in enumerate(query_ids[start : start + 64]):
                docs: dict[str, float] = {}
                for rid, meta, doc, dist in zip(
                    hits["ids"][row],
                    hits["metadatas"][row],
                    hits["documents"][row],
                    hits["distances"][row],
                    strict=True,
                ):
                    key = str((meta or {}).get(args.id_field, "")) if args.id_field else rid
                    if key not in dataset.corpus:
                        unknown.add(key)
                    # Cosine distance (qwen3-rag's collections) -> similarity; in any space
                    # the order, all that the metrics read, is the collection's own.
                    score = 1.0 - float(dist)
                    if score > docs.get(key, -math.inf):  # several chunks of one document
                        docs[key] = score
                        # The reranker sees this chunk (the last best one any query found).
                        texts[key] = doc or ""
                run[qid] = docs
    if unknown and len(unknown) == len({k for d in run.values() for k in d}):
        how = f"metadata field {args.id_field!r}" if args.id_field else "record ids"
        raise CliError(
            f"none of the ids the collection {args.collection!r} returned ({how}, e.g. "
            f"{sorted(unknown)[0]!r}) is a document id of the dataset; name the metadata field "
            "that holds them with --id-field"
        )
    name = f"{model_label(embedder.model_name)} (collection {args.collection})"
    return run, name, texts


def _load(args: argparse.Namespace) -> Any:
    """The dataset DATA names: a BEIR folder, a QA file, or ``stdlib[:module,...]``."""
    from qwen3_rag.eval import build_stdlib_dataset, load_dataset

    data = str(args.data)
    if not Path(data).exists() and (data == STDLIB or data.startswith(STDLIB + ":")):
        modules = [m.strip() for m in data[len(STDLIB) + 1 :].split(",") if m.strip()]
        return build_stdlib_dataset(modules=modules or None)
    return load_dataset(
        data, split=args.split, question=args.question_field, answer=args.answer_field
    )


def _writable_parent(path: Path, flag: str) -> None:
    """Refuse ``path`` when the nearest existing folder above it is a file or read-only."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"{flag} {str(path)!r}: cannot write in {str(parent)!r}")


def _check_file_output(value: str | None, flag: str) -> None:
    if value is None:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        raise CliError(f"{flag} {value!r} is a folder; give a file name")
    _writable_parent(path, flag)


def _check_folder_output(value: str | None, flag: str) -> None:
    if value is None:
        return
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise CliError(f"{flag} {value!r} is a file; give a folder")
    _writable_parent(path, flag)


def _check_request(args: argparse.Namespace) -> None:
    """Every check that needs neither data nor model: conflicts and output paths."""
    from qwen3_rag.eval.data import check_new_folder
    from qwen3_rag.eval.plot import check_plot_path

    if args.collection is not None and (args.instructions or args.dimensions):
        raise CliError(
            "--instruction and --dimensions do not apply to --collection: it is searched with "
            "the model and options it was built with"
        )
    if args.search_instructions:
        conflicts = [
            flag
            for flag, given in (
                ("--collection", args.collection is not None),
                ("--reranker-model", args.reranker_model is not None),
                ("--baseline", bool(args.baselines)),
                ("--hybrid", args.hybrid),
                ("--compare-to", args.compare_to is not None),
                ("--save-runs", args.save_runs is not None),
                ("--plot", args.plot is not None),
                ("--json", args.json is not None),
            )
            if given
        ]
        if conflicts:
            raise CliError(
                f"{', '.join(conflicts)}: not with --search-instructions (it compares "
                "instructions of one embedder; its results go to --save-instruction)"
            )
        if args.dimensions and len(args.dimensions) > 1:
            raise CliError("--search-instructions takes one --dimensions value (the one you use)")
        if not (args.instructions or args.candidates or args.propose):
            raise CliError(
                "--search-instructions needs candidates: --candidates FILE, --instruction TEXT "
                "(repeatable) and/or --propose N with an LLM"
            )
        if args.propose and not args.llm_model:
            raise CliError(
                "--propose needs an LLM: --llm-model (a local causal LM folder, or with "
                "--llm-url the endpoint's model name)"
            )
        _check_file_output(args.save_instruction, "--save-instruction")
    else:
        for flag, given in (
            ("--candidates", args.candidates is not None),
            ("--propose", bool(args.propose)),
            ("--llm-model", args.llm_model is not None),
        ):
            if given:
                raise CliError(f"{flag} applies to --search-instructions only")
    _check_file_output(args.json, "--json")
    if args.plot is not None:
        try:
            check_plot_path(args.plot)
        except ValueError as e:
            raise CliError(f"--plot: {e}") from e
        _check_file_output(args.plot, "--plot")
    _check_folder_output(args.save_runs, "--save-runs")
    if not args.no_cache:
        _check_folder_output(args.eval_cache, "--eval-cache")
    if args.save_dataset is not None:
        try:
            check_new_folder(Path(args.save_dataset).expanduser(), args.overwrite)
        except FileExistsError as e:
            raise CliError(f"--save-dataset: {e}") from e
        _writable_parent(Path(args.save_dataset).expanduser(), "--save-dataset")


def _dataset_json(args: argparse.Namespace, dataset: Any) -> dict[str, Any]:
    return {
        "name": dataset.name,
        # The built-in set is named, not a path (a folder of that name would be read instead).
        "path": str(Path(args.data).resolve()) if Path(args.data).exists() else str(args.data),
        "queries": len(dataset.queries),
        "documents": len(dataset.corpus),
        "sample": args.sample,
        "seed": args.seed if args.sample is not None else None,
    }


def _embedder(args: argparse.Namespace, options: dict[str, Any], progress: bool) -> Any:
    from qwen3_rag.cli.common import model_hint
    from qwen3_rag.core import Qwen3Embedder

    with model_hint("--embedding-model", "EMBED_MODEL"):
        return Qwen3Embedder(
            model_reference(args.embedding_model or DEFAULT_EMBEDDING_MODEL),
            show_progress=progress,
            **options,
        )
