"""Synthesis from passages to a training file and a BEIR evaluation folder.

For each passage and each requested query: the top personas are retrieved for the passage,
stage 1 asks the LLM for a configuration (Character, Question_Type, Difficulty), stage 2 for the
query with a sampled length and language. Invalid replies are counted and skipped; the optional
cosine filter keeps the pairs whose query-passage similarity exceeds a threshold (the paper
uses 0.7); a split by passage gives the training rows and the evaluation set.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qwen3_rag.core.spec import DEFAULT_TASK
from qwen3_rag.datafiles import QRELS_HEADER, write_atomic
from qwen3_rag.synth.corpus import Passage
from qwen3_rag.synth.llm import ChatLLM, LLMRequestError, ReplyCache, as_llm, cache_key
from qwen3_rag.synth.parsing import InvalidReply, parse_configuration, parse_query
from qwen3_rag.synth.personas import Embedder, PersonaRetriever, cosine_rows, load_personas
from qwen3_rag.synth.prompts import configuration_prompt, query_prompt

logger = logging.getLogger(__name__)

#: Language codes understood by ``--languages``; any other name made of letters is used as is.
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
    "sv": "Swedish",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "vi": "Vietnamese",
    "zh": "Chinese",
}

#: File names inside the output folder.
TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"
BEIR_DIR = "beir"
SUMMARY_FILE = "summary.json"
CACHE_FILE = "llm-cache.jsonl"


def language_name(value: str) -> str:
    """``"en"`` -> ``"English"``; a name ("German", "Brazilian Portuguese") is kept.

    Raises:
        ValueError: For an unknown two-letter code or a value that is not a name.
    """
    text = " ".join(value.split())
    if text.lower() in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[text.lower()]
    if len(text) > 2 and all(part.isalpha() for part in text.split()):
        return text[0].upper() + text[1:]
    known = ", ".join(sorted(LANGUAGE_NAMES))
    raise ValueError(f"unknown language {value!r}: use a code ({known}) or a name such as German")


class SynthesisStopped(Exception):
    """``should_stop`` asked the run to stop; the replies so far are in the cache."""


@dataclass(frozen=True)
class SynthOptions:
    """How many queries, of what kind, and which to keep.

    Attributes:
        queries_per_passage: Queries requested per passage (two LLM calls each).
        languages: Query languages, as names; each query draws one.
        corpus_language: The passages' language, as a name.
        query_words: The (shortest, longest) query length in words; each query draws one.
        top_personas: Candidate personas per passage (the paper uses 5).
        min_cosine: Keep a pair only if the cosine of the query (embedded as a query with
            ``instruction``) and the passage (as a document) exceeds this; None keeps all.
        instruction: The retrieval instruction, recorded with each training row and used by
            the cosine filter.
        concurrency: LLM requests in flight at once.
        seed: Seeds the lengths, languages and per-request sampling seeds.
    """

    queries_per_passage: int = 1
    languages: tuple[str, ...] = ("English",)
    corpus_language: str = "English"
    query_words: tuple[int, int] = (5, 20)
    top_personas: int = 5
    min_cosine: float | None = None
    instruction: str = DEFAULT_TASK
    concurrency: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.languages, str) or not self.languages:
            raise ValueError("languages must be a non-empty sequence of language names")
        object.__setattr__(self, "languages", tuple(language_name(x) for x in self.languages))
        object.__setattr__(self, "corpus_language", language_name(self.corpus_language))
        for name in ("queries_per_passage", "top_personas", "concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        low, high = self.query_words
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
            raise ValueError(
                f"query_words must be (min, max) with 1 <= min <= max, got {low, high}"
            )
        if self.min_cosine is not None and not -1.0 <= self.min_cosine < 1.0:
            raise ValueError(f"min_cosine must be in [-1, 1), got {self.min_cosine}")


@dataclass
class SynthSummary:
    """What a run did; ``invalid_reasons`` counts the skipped replies by stage and reason."""

    passages: int = 0
    requested: int = 0
    llm_calls: int = 0
    cached_replies: int = 0
    generated: int = 0
    invalid: int = 0
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    filtered_by_cosine: int = 0
    kept: int = 0
    train_rows: int = 0
    train_passages: int = 0
    eval_queries: int = 0
    eval_passages: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


@dataclass(frozen=True)
class SyntheticQuery:
    """One generated query and how it was made."""

    query: str
    passage: Passage
    persona: str
    question_type: str
    difficulty: str
    language: str
    length: int
    sample: int
    cosine: float | None = None

    @property
    def query_id(self) -> str:
        """A stable id: the passage id and the sample number."""
        return f"{self.passage.id}-q{self.sample}"


@dataclass(frozen=True)
class _Task:
    passage: Passage
    candidates: tuple[str, ...]
    sample: int
    length: int
    language: str


class _Caller:
    """One LLM behind the cache, counting real calls and cache hits."""

    def __init__(self, llm: ChatLLM, cache: ReplyCache, seed: int) -> None:
        self.llm = llm
        self.cache = cache
        self.seed = seed
        self.calls = 0
        self.hits = 0

    def __call__(self, prompt: str, sample: int) -> str | None:
        key = cache_key(self.llm.name, prompt, sample + 1_000_003 * self.seed)
        found, reply = self.cache.get(key)
        if found:
            self.hits += 1
            return reply
        request_seed = int(key[:8], 16)
        self.calls += 1
        reply = self.llm.complete(prompt, seed=request_seed)
        # A non-string reply from a custom callable is stored as its text, then fails parsing.
        reply = None if reply is None else str(reply)
        self.cache.put(key, reply)
        return reply


def _run_task(task: _Task, call: _Caller, options: SynthOptions) -> SyntheticQuery | str:
    """The query for one task, or the reason it failed (``stage:reason``)."""
    stage = "configuration"
    try:
        prompt = configuration_prompt(task.passage.text, task.candidates, options.corpus_language)
        configuration = parse_configuration(call(prompt, task.sample), task.candidates)
        stage = "query"
        prompt = query_prompt(
            configuration.character,
            task.passage.text,
            configuration.question_type,
            configuration.difficulty,
            task.length,
            task.language,
            options.corpus_language,
        )
        query = parse_query(call(prompt, task.sample))
    except InvalidReply as e:
        return f"{stage}:{e.reason}"
    except LLMRequestError as e:
        logger.warning("passage %s: %s", task.passage.id, e)
        return f"{stage}:refused"
    return SyntheticQuery(
        query=query,
        passage=task.passage,
        persona=configuration.character,
        question_type=configuration.question_type,
        difficulty=configuration.difficulty,
        language=task.language,
        length=task.length,
        sample=task.sample,
    )


def _tasks(
    passages: Sequence[Passage], candidates: list[list[str]], options: SynthOptions
) -> list[_Task]:
    tasks = []
    low, high = options.query_words
    for passage, top in zip(passages, candidates, strict=True):
        for sample in range(options.queries_per_passage):
            # Seeded per passage and sample: the draws do not depend on the corpus's order.
            rng = random.Random(f"{options.seed}:{passage.id}:{sample}")
            tasks.append(
                _Task(
                    passage,
                    tuple(top),
                    sample,
                    rng.randint(low, high),
                    rng.choice(options.languages),
                )
            )
    return tasks


def generate(
    passages: Sequence[Passage],
    llm: ChatLLM | Callable[[str], str | None],
    embedder: Embedder,
    *,
    options: SynthOptions | None = None,
    personas: Sequence[str] | None = None,
    cache: ReplyCache | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[SyntheticQuery], SynthSummary]:
    """Write queries for ``passages`` (two LLM calls per query), validated and filtered.

    Args:
        passages: The passages (ids unique).
        llm: A :class:`~qwen3_rag.synth.llm.ChatLLM`, or a callable ``prompt -> reply``.
        embedder: Retrieves the personas and, with ``min_cosine``, scores the pairs.
        options: What to generate (default :class:`SynthOptions`).
        personas: The persona pool (default: the built-in one).
        cache: Replies already paid for (default: an in-memory cache).
        should_stop: Polled between requests; True stops the run with
            :class:`SynthesisStopped`.
        progress: Called with (finished tasks, total tasks) as tasks finish.

    Returns:
        The kept queries in passage and sample order, and the counts.

    Raises:
        LLMError: If the LLM cannot be used at all.
        SynthesisStopped: If ``should_stop`` returned True.
    """
    options = options or SynthOptions()
    passages = list(passages)
    if not passages:
        raise ValueError("there are no passages to write queries for")
    ids = Counter(p.id for p in passages)
    repeated = next((i for i, n in ids.items() if n > 1), None)
    if repeated is not None:
        raise ValueError(f"the passage id {repeated!r} occurs {ids[repeated]} times")
    retriever = PersonaRetriever(embedder, load_personas() if personas is None else personas)
    candidates = retriever.top([p.text for p in passages], options.top_personas)
    tasks = _tasks(passages, candidates, options)
    call = _Caller(as_llm(llm), ReplyCache(None) if cache is None else cache, options.seed)
    results: dict[int, SyntheticQuery | str] = {}
    with cf.ThreadPoolExecutor(max_workers=options.concurrency) as pool:
        pending: set[cf.Future[SyntheticQuery | str]] = set()
        index_of: dict[cf.Future[SyntheticQuery | str], int] = {}
        queue = iter(enumerate(tasks))
        try:
            while True:
                # A bounded window of requests in flight, refilled as they finish.
                while len(pending) < 2 * options.concurrency:
                    item = next(queue, None)
                    if item is None:
                        break
                    future = pool.submit(_run_task, item[1], call, options)
                    pending.add(future)
                    index_of[future] = item[0]
                if not pending:
                    break
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    results[index_of.pop(future)] = future.result()
                if progress is not None:
                    progress(len(results), len(tasks))
                if should_stop is not None and should_stop():
                    raise SynthesisStopped(f"stopped after {len(results)} of {len(tasks)} queries")
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    summary = SynthSummary(
        passages=len(passages),
        requested=len(tasks),
        llm_calls=call.calls,
        cached_replies=call.hits,
    )
    queries = _collect(tasks, results, summary)
    queries = _filter(queries, embedder, options, summary)
    return queries, summary


def _collect(
    tasks: list[_Task], results: dict[int, SyntheticQuery | str], summary: SynthSummary
) -> list[SyntheticQuery]:
    reasons: Counter[str] = Counter()
    queries: list[SyntheticQuery] = []
    seen: set[tuple[str, str]] = set()
    for index in range(len(tasks)):
        result = results[index]
        if isinstance(result, str):
            reasons[result] += 1
            continue
        summary.generated += 1
        key = (result.passage.id, result.query.casefold())
        if key in seen:
            summary.duplicates += 1
            continue
        seen.add(key)
        queries.append(result)
    summary.invalid = sum(reasons.values())
    summary.invalid_reasons = dict(sorted(reasons.items()))
    return queries


def _filter(
    queries: list[SyntheticQuery],
    embedder: Embedder,
    options: SynthOptions,
    summary: SynthSummary,
) -> list[SyntheticQuery]:
    if options.min_cosine is None or not queries:
        summary.kept = len(queries)
        return queries
    query_vectors = embedder.embed_queries([q.query for q in queries], options.instruction)
    passage_vectors = embedder.embed_documents([q.passage.text for q in queries])
    scores = cosine_rows(query_vectors, passage_vectors)
    kept = []
    for query, score in zip(queries, scores.tolist(), strict=True):
        # The paper keeps pairs whose cosine similarity is above the threshold.
        if score > options.min_cosine:
            kept.append(_with_cosine(query, round(float(score), 6)))
    summary.filtered_by_cosine = len(queries) - len(kept)
    summary.kept = len(kept)
    return kept


def _with_cosine(query: SyntheticQuery, score: float) -> SyntheticQuery:
    from dataclasses import replace

    return replace(query, cosine=score)


# -- the split and the files -----------------------------------------------------------------
def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_by_passage(
    queries: Sequence[SyntheticQuery], eval_fraction: float, seed: int = 0
) -> tuple[list[SyntheticQuery], list[SyntheticQuery]]:
    """(train, eval): every query of a passage goes to the same side.

    Passages are grouped by text, so two ids holding the same text also stay on one side. The
    choice is a seeded hash of the text: stable across runs and independent of order.

    Raises:
        ValueError: If ``eval_fraction`` is outside [0, 1].
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    groups = sorted(
        {_text_key(q.passage.text) for q in queries},
        key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest(),
    )
    count = round(eval_fraction * len(groups))
    if 0.0 < eval_fraction < 1.0 and len(groups) >= 2:
        count = min(max(count, 1), len(groups) - 1)  # both sides get something
    held_out = set(groups[:count])
    train = [q for q in queries if _text_key(q.passage.text) not in held_out]
    evaluation = [q for q in queries if _text_key(q.passage.text) in held_out]
    return train, evaluation


def training_row(query: SyntheticQuery, instruction: str) -> dict[str, Any]:
    """A row in the fine-tuning layout, with how the query was made."""
    row: dict[str, Any] = {
        "query": query.query,
        "pos": [query.passage.text],
        "neg": [],
        "instruction": instruction,
        "persona": query.persona,
        "question_type": query.question_type,
        "difficulty": query.difficulty,
        "language": query.language,
        "length": query.length,
        "passage_id": query.passage.id,
        "query_id": query.query_id,
    }
    if query.cosine is not None:
        row["cosine"] = query.cosine
    return row


def _jsonl(rows: Iterable[dict[str, Any]]) -> Iterable[str]:
    return (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_dataset(
    output_dir: str | Path,
    passages: Sequence[Passage],
    queries: Sequence[SyntheticQuery],
    summary: SynthSummary,
    *,
    eval_fraction: float = 0.2,
    instruction: str = DEFAULT_TASK,
    seed: int = 0,
) -> SynthSummary:
    """Write the training rows, the evaluation set and the summary into ``output_dir``.

    Files (each written whole or not at all):

    - ``train.jsonl`` and ``eval.jsonl``: ``{"query", "pos": [passage], "neg": [],
      "instruction", "persona", "question_type", "difficulty", "language", ...}`` a line.
    - ``beir/corpus.jsonl`` (every passage, ``{"_id", "text"}``), ``beir/queries.jsonl``
      (the evaluation queries) and ``beir/qrels/test.tsv``: a BEIR folder.
    - ``summary.json``: the counts, written last.

    Returns:
        ``summary`` with the split's counts filled in.
    """
    root = Path(output_dir)
    train, evaluation = split_by_passage(queries, eval_fraction, seed)
    write_atomic(root / TRAIN_FILE, _jsonl(training_row(q, instruction) for q in train))
    write_atomic(root / EVAL_FILE, _jsonl(training_row(q, instruction) for q in evaluation))
    beir = root / BEIR_DIR
    write_atomic(beir / "corpus.jsonl", _jsonl({"_id": p.id, "text": p.text} for p in passages))
    write_atomic(
        beir / "queries.jsonl", _jsonl({"_id": q.query_id, "text": q.query} for q in evaluation)
    )
    write_atomic(
        beir / "qrels" / "test.tsv",
        [
            "\t".join(QRELS_HEADER) + "\n",
            *(f"{q.query_id}\t{q.passage.id}\t1\n" for q in evaluation),
        ],
    )
    summary.train_rows = len(train)
    summary.train_passages = len({q.passage.id for q in train})
    summary.eval_queries = len(evaluation)
    summary.eval_passages = len({q.passage.id for q in evaluation})
    write_atomic(root / SUMMARY_FILE, [json.dumps(summary.to_dict(), indent=2) + "\n"])
    return summary


def synthesize(
    passages: Sequence[Passage],
    llm: ChatLLM | Callable[[str], str | None],
    embedder: Embedder,
    output_dir: str | Path,
    *,
    options: SynthOptions | None = None,
    personas: Sequence[str] | None = None,
    eval_fraction: float = 0.2,
    cache_path: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """From passages to a training file and a BEIR folder, resumably.

    Every LLM reply is appended to ``cache_path`` (default ``output_dir/llm-cache.jsonl``) as
    it arrives: running again after an interruption pays only for what is missing, and a
    finished run re-run makes no LLM call.

    Example:
        >>> from qwen3_rag import Qwen3Embedder
        >>> from qwen3_rag.synth import Passage, SynthOptions, synthesize
        >>> summary = synthesize(  # doctest: +SKIP
        ...     [Passage("p1", "Tomatoes need deep watering once a week.")],
        ...     my_llm,  # a callable prompt -> reply, or OpenAIChatLLM(...), LocalCausalLM(...)
        ...     Qwen3Embedder("Qwen/Qwen3-Embedding-0.6B"),
        ...     "synth-out",
        ...     options=SynthOptions(queries_per_passage=2, min_cosine=0.7),
        ... )

    Returns:
        The counts (also written to ``summary.json``).
    """
    options = options or SynthOptions()
    if not 0.0 <= eval_fraction <= 1.0:  # checked before any LLM call is paid for
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    root = Path(output_dir)
    cache = ReplyCache(root / CACHE_FILE if cache_path is None else cache_path)
    queries, summary = generate(
        passages,
        llm,
        embedder,
        options=options,
        personas=personas,
        cache=cache,
        should_stop=should_stop,
        progress=progress,
    )
    return write_dataset(
        root,
        passages,
        queries,
        summary,
        eval_fraction=eval_fraction,
        instruction=options.instruction,
        seed=options.seed,
    )
