"""``qwen3-rag synth``: labelled queries for a corpus, written by an LLM (the paper's recipe)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from qwen3_rag.cli.common import (
    EXIT_OK,
    CliError,
    Interrupted,
    add_chunk_flags,
    add_config_flags,
    add_output_flags,
    add_store_flags,
    check_options,
    deferred_stop,
    format_duration,
    given_options,
    logger,
    model_hint,
    model_reference,
    out,
    rebuild_hint,
    require,
    store_options,
)
from qwen3_rag.core import DEFAULT_EMBEDDING_MODEL, EmbedderConfig, Qwen3Embedder
from qwen3_rag.core.spec import DEFAULT_TASK
from qwen3_rag.indexing.errors import IndexingError
from qwen3_rag.indexing.options import check_chunking

#: Seconds between progress lines when stderr is not a terminal.
PROGRESS_SECONDS = 5.0


def _words(value: str) -> tuple[int, int]:
    """``8`` or ``5-20`` -> (min, max) words."""
    try:
        low, _, high = value.partition("-")
        pair = (int(low), int(high or low))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {value!r}") from e
    if not 1 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {value!r}")
    return pair


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from e
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


class _Progress:
    """Queries finished out of requested, with rate and ETA, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        final = done == total
        if not final and now - self.last < (0.2 if self.tty else PROGRESS_SECONDS):
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        line = f"synth: {done:,}/{total:,} queries, {rate:,.2f}/s"
        # As index's lines: "done" at the end (the summary line gives the run's one duration),
        # and no ETA before a query has finished.
        if final:
            line += ", done"
        elif rate > 0:
            line += f", ETA {format_duration((total - done) / rate)}"
        sys.stderr.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        sys.stderr.flush()


def _load_passages(args: argparse.Namespace) -> list[Any]:
    from qwen3_rag.indexing.documents import DocumentError
    from qwen3_rag.synth import (
        passages_from_collection,
        passages_from_folder,
        passages_from_jsonl,
    )

    from_store = bool(args.db or args.chroma_url)
    if from_store == bool(args.corpus):
        raise CliError(
            "give the corpus as a folder or .jsonl file, or as a Chroma collection "
            "(--db/--chroma-url with --collection), not both"
            if from_store
            else "no corpus: give a folder, a .jsonl file, or --db/--chroma-url with --collection"
        )
    if from_store:
        return _passages_from_store(args, passages_from_collection)
    path = Path(args.corpus).expanduser()
    try:
        if path.is_file() and path.suffix.lower() in (".jsonl", ".ndjson"):
            return passages_from_jsonl(path)
        require("langchain_text_splitters", "pypdf")
        passages, _ = passages_from_folder(
            [args.corpus], chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap
        )
    except DocumentError as e:
        raise CliError(str(e)) from e
    except ValueError as e:
        raise CliError(str(e)) from e
    if not passages:
        raise CliError(f"{args.corpus}: no text to write queries for")
    return passages


def _passages_from_store(args: argparse.Namespace, read: Any) -> list[Any]:
    require("chromadb")
    from qwen3_rag.indexing import StoreError, open_store

    where = store_options(args)
    with (
        open_store(where, write=False, rebuild_hint=rebuild_hint(None, where)) as opened,
        opened.errors(),
    ):
        if opened.stored_config() is None:
            raise StoreError(f"collection {where.collection!r} does not exist")
        passages = read(opened.collection())
    if not passages:
        raise CliError(f"collection {args.collection!r} holds no documents")
    return passages


def _llm(args: argparse.Namespace) -> Any:
    from qwen3_rag.synth import LLMError, LocalCausalLM, OpenAIChatLLM

    if not args.llm_model:
        raise CliError(
            "no LLM: give --llm-model (a local causal LM folder, or with --llm-url the "
            "endpoint's model name)"
        )
    if args.llm_url:
        require("openai", extra="synth", what="--llm-url")
        key = os.environ.get(args.llm_api_key_env)
        if not key:
            logger.info(
                "%s is not set; calling %s without a key", args.llm_api_key_env, args.llm_url
            )
        return OpenAIChatLLM(
            args.llm_url,
            args.llm_model,
            api_key=key,
            temperature=args.temperature,
            max_tokens=args.max_new_tokens,
            max_retries=args.retries,
            timeout=args.timeout,
        )
    with model_hint("--llm-model", "LLM_MODEL"):
        try:
            return LocalCausalLM(
                model_reference(args.llm_model),
                temperature=args.temperature,
                max_new_tokens=args.max_new_tokens,
                device=args.device,
            )
        except LLMError as e:
            raise CliError(str(e)) from e


def cmd_synth(args: argparse.Namespace) -> int:
    """Write queries for a corpus with an LLM; resumable through the reply cache."""
    from qwen3_rag.synth import (
        LLMError,
        SynthesisStopped,
        SynthOptions,
        load_personas,
        synthesize,
    )

    embedder_options = given_options(args, EmbedderConfig)
    check_options(EmbedderConfig, embedder_options)
    if not 0.0 <= args.eval_fraction <= 1.0:
        raise CliError(f"--eval-fraction must be from 0 to 1, got {args.eval_fraction}")
    try:
        check_chunking(args.chunk_size, args.chunk_overlap)
    except IndexingError as e:
        raise CliError(f"bad option: {e}") from e
    try:
        options = SynthOptions(
            queries_per_passage=args.queries_per_passage,
            languages=tuple(x for x in args.languages.split(",") if x.strip()),
            corpus_language=args.corpus_language,
            query_words=args.query_words,
            top_personas=args.top_personas,
            min_cosine=args.min_cosine,
            instruction=embedder_options.get("instruction", DEFAULT_TASK),
            concurrency=args.concurrency if args.llm_url else 1,
            seed=args.seed,
        )
        personas = load_personas(args.personas)
    except ValueError as e:
        raise CliError(str(e)) from e
    output = Path(args.output).expanduser()
    if output.exists() and not output.is_dir():
        raise CliError(f"--output {str(output)!r} is a file; give a folder")
    passages = _load_passages(args)
    if args.max_passages is not None:
        passages = passages[: args.max_passages]
    started = time.perf_counter()
    with model_hint("--embedding-model", "EMBED_MODEL"):
        embedder = Qwen3Embedder(
            model_reference(args.embedding_model), show_progress=False, **embedder_options
        )
    llm = _llm(args)
    logger.info("%d passages, %d queries each", len(passages), args.queries_per_passage)
    with deferred_stop() as stop:
        try:
            summary = synthesize(
                passages,
                llm,
                embedder,
                output,
                options=options,
                personas=personas,
                eval_fraction=args.eval_fraction,
                cache_path=args.cache,
                should_stop=lambda: stop.signal_name is not None,
                progress=_Progress(not args.quiet),
            )
        except SynthesisStopped as e:
            raise Interrupted(
                f"{e} (stopped by {stop.signal_name}; replies so far are cached)"
            ) from e
        except LLMError as e:
            raise CliError(f"{e} (replies so far are cached; run again to resume)") from e
    elapsed = time.perf_counter() - started
    if args.json:
        out(json.dumps({**summary.to_dict(), "output": str(output), "seconds": round(elapsed, 2)}))
        return EXIT_OK
    reasons = ", ".join(f"{k} {v}" for k, v in summary.invalid_reasons.items())
    out(
        f"synth: {summary.passages} passages, {summary.requested} queries requested, "
        f"{summary.generated} generated, {summary.invalid} invalid"
        + (f" ({reasons})" if reasons else "")
        + f", {summary.duplicates} duplicates, {summary.filtered_by_cosine} filtered by cosine, "
        f"{summary.kept} kept; {summary.llm_calls} LLM calls, {summary.cached_replies} from "
        f"the cache, in {elapsed:.1f}s"
    )
    out(
        f"-> {output}: train.jsonl ({summary.train_rows} rows, {summary.train_passages} "
        f"passages), beir/ ({summary.eval_queries} queries on {summary.eval_passages} passages)"
    )
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``synth`` to the ``qwen3-rag`` subcommands."""
    p = sub.add_parser(
        "synth",
        help="write labelled queries for your documents with an LLM (training and eval data)",
        description="Per passage: retrieve candidate personas, ask the LLM for a configuration "
        "(persona, question type, difficulty), then for a query of a given length and "
        "language; two LLM calls per query. Writes train.jsonl, eval.jsonl and a BEIR folder.",
    )
    p.add_argument(
        "corpus",
        nargs="?",
        help="a folder or file (.txt, .md, .pdf, chunked as by `index`), or a .jsonl file of "
        '{"_id", "text"} passages; leave out to read a Chroma collection (--db/--chroma-url)',
    )
    p.add_argument("--output", required=True, help="folder for the results (created)")
    llm = p.add_argument_group("LLM")
    llm.add_argument(
        "--llm-model",
        help="a local causal LM folder (safetensors, chat template), or with --llm-url the "
        "endpoint's model name",
    )
    llm.add_argument(
        "--llm-url", help="an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1"
    )
    llm.add_argument(
        "--llm-api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the endpoint's key (default: OPENAI_API_KEY)",
    )
    llm.add_argument(
        "--concurrency",
        type=_positive,
        default=4,
        help="requests in flight to --llm-url (default: 4; a local model runs one at a time)",
    )
    llm.add_argument(
        "--retries",
        type=int,
        default=5,
        help="retries of a failed request, with backoff (default: 5)",
    )
    llm.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per request (default: 120)"
    )
    llm.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature (default: 0.7)"
    )
    llm.add_argument(
        "--max-new-tokens",
        type=_positive,
        default=256,
        help="longest reply in tokens (default: 256)",
    )
    llm.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    llm.add_argument(
        "--cache",
        default=None,
        help="reply cache; a re-run resumes from it (default: OUTPUT/llm-cache.jsonl)",
    )
    what = p.add_argument_group("queries")
    what.add_argument(
        "--queries-per-passage", type=_positive, default=1, help="queries per passage (default: 1)"
    )
    what.add_argument(
        "--languages",
        default="en",
        help="query languages, codes or names, comma-separated; each query draws one (default: en)",
    )
    what.add_argument(
        "--corpus-language", default="en", help="the passages' language (default: en)"
    )
    what.add_argument(
        "--query-words",
        type=_words,
        default=(5, 20),
        metavar="MIN-MAX",
        help="query length in words; each query draws one (default: 5-20)",
    )
    what.add_argument(
        "--personas", default=None, help="persona file, one a line (default: the built-in pool)"
    )
    what.add_argument(
        "--top-personas",
        type=_positive,
        default=5,
        help="candidate personas per passage (default: 5)",
    )
    what.add_argument(
        "--min-cosine",
        type=float,
        default=None,
        help="keep a pair only if its query-passage cosine exceeds this (the paper: 0.7; "
        "default: keep all)",
    )
    what.add_argument(
        "--eval-fraction",
        type=float,
        default=0.2,
        help="share of the passages held out for evaluation (default: 0.2)",
    )
    what.add_argument(
        "--max-passages", type=_positive, default=None, help="use only the first N passages"
    )
    source = p.add_argument_group("corpus from files or Chroma")
    add_chunk_flags(source)
    add_store_flags(
        source,
        db_help="read the passages from this embedded Chroma",
        url_help="read them from this Chroma server",
    )
    p.add_argument(
        "--embedding-model",
        default=DEFAULT_EMBEDDING_MODEL,
        help=f"retrieves the personas and scores --min-cosine (default: {DEFAULT_EMBEDDING_MODEL})",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_output_flags(p)
    add_config_flags(p.add_argument_group("embedding model options"), EmbedderConfig)
    p.set_defaults(func=cmd_synth)
