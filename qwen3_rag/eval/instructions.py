"""Instruction search: which query instruction retrieves best on your data?

Qwen3's embedder reads each query after an instruction (``Instruct: ...`` then ``Query: ...``), and
the model card reports 1-5 % from a task-specific one. :func:`search_instructions` tries
candidates (the model's own, yours, and optionally an LLM's proposals, see
:func:`propose_instructions`) on a *dev* split of the queries, with the corpus embedded once,
chooses the best on dev alone, then reports it against the default instruction on the
held-out *test* split with a paired randomization test. The test queries are embedded only
after the choice, with the chosen and the default instruction, so they cannot influence it.
"""

from __future__ import annotations

import logging
import os
import random
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen3_rag.datafiles import DataError

from .data import Dataset
from .evaluate import DenseRunner
from .metrics import mean_metrics, parse_metrics, per_query_metrics
from .significance import DEFAULT_PERMUTATIONS, compare_per_query

logger = logging.getLogger("qwen3_rag.eval")

#: Longest instruction accepted from a file or an LLM, in characters.
MAX_INSTRUCTION_CHARS = 300
#: Example (query, document) pairs from the dev split shown to the LLM.
PROMPT_EXAMPLES = 6
#: Characters of each example document shown to the LLM.
PROMPT_DOCUMENT_CHARS = 300
#: LLM replies tried (each a new sample) before giving up on proposals.
PROPOSAL_ATTEMPTS = 3

PROPOSAL_PROMPT = """\
You write task instructions for a text-embedding model used for search. The model reads each \
search query after the line "Instruct: <instruction>", and documents without one. A good \
instruction says in one sentence what the queries are and what documents to retrieve for them, \
for example: "Given a web search query, retrieve relevant passages that answer the query".

Example queries from this collection, each with the start of a document that answers it:

{examples}

Instructions already tried:
{tried}

Write {count} new instructions for this collection, in English, each one sentence of at most \
40 words, all different. Reply with one JSON object and nothing else:
{{"instructions": ["...", "..."]}}"""


@dataclass(frozen=True)
class Candidate:
    """One instruction tried: its text and where it came from (``default``, ``file``, ``llm``)."""

    instruction: str
    source: str


@dataclass
class ProposalSummary:
    """What the LLM was asked and what came back."""

    requested: int
    accepted: list[str] = field(default_factory=list)
    replies: int = 0
    cached_replies: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON object."""
        return {
            "requested": self.requested,
            "accepted": self.accepted,
            "replies": self.replies,
            "cached_replies": self.cached_replies,
            "rejected": self.rejected,
        }


@dataclass
class SearchResult:
    """The outcome of :func:`search_instructions`.

    Attributes:
        instruction: The chosen instruction (the best on dev).
        default: The embedder's own instruction, the one it is compared to.
        metric: The metric that chose.
        dev: Per candidate, in the order tried: ``{"instruction", "source", "metrics"}``.
        test: ``{"queries", "chosen": metrics, "default": metrics, "p_values"}`` on test.
        dev_queries: The dev split's query ids.
        test_queries: The test split's query ids.
        model: The embedding model.
        dimensions: The vector length searched (None: full).
        proposals: The LLM's part, when it was asked.
    """

    instruction: str
    default: str
    metric: str
    dev: list[dict[str, Any]]
    test: dict[str, Any]
    dev_queries: list[str]
    test_queries: list[str]
    model: str
    dimensions: int | None
    proposals: ProposalSummary | None = None

    @property
    def flag(self) -> str:
        """The command-line flag that uses the chosen instruction, quoted for a POSIX shell."""
        return f"--instruction {shlex.quote(self.instruction)}"

    def as_json(self) -> dict[str, Any]:
        """The result as JSON: ``instruction`` and ``flag`` first, then the evidence."""
        return {
            "instruction": self.instruction,
            "flag": self.flag,
            "model": self.model,
            "dimensions": self.dimensions,
            "metric": self.metric,
            "default_instruction": self.default,
            "dev": {"queries": len(self.dev_queries), "candidates": self.dev},
            "test": self.test,
            "llm_proposals": None if self.proposals is None else self.proposals.as_json(),
            "dev_query_ids": self.dev_queries,
            "test_query_ids": self.test_queries,
        }


def clean_instruction(text: object) -> str:
    """An instruction with whitespace collapsed, checked.

    Raises:
        ValueError: If it is not a string, is empty, or is longer than
            :data:`MAX_INSTRUCTION_CHARS`.
    """
    if not isinstance(text, str):
        raise ValueError(f"an instruction must be a string, got {type(text).__name__}")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise ValueError("the instruction is empty")
    if len(cleaned) > MAX_INSTRUCTION_CHARS:
        raise ValueError(
            f"the instruction has {len(cleaned)} characters (at most {MAX_INSTRUCTION_CHARS})"
        )
    return cleaned


def read_candidates(path: str | os.PathLike[str]) -> list[str]:
    """Candidate instructions from a text file: one a line; blank lines and ``#`` lines skipped.

    Raises:
        DataError: If the file cannot be read, is not UTF-8, holds a line that is not a valid
            instruction (file and line named), or holds none.
    """
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(f"{file}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    found: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            found.append(clean_instruction(line))
        except ValueError as e:
            raise DataError(f"{file}:{number}: {e}") from e
    if not found:
        raise DataError(f"{file}: no instruction (one a line; # starts a comment)")
    return list(dict.fromkeys(found))


def split_queries(
    dataset: Dataset, dev_fraction: float = 0.5, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """The queries split at random into (dev, test), both over the whole corpus.

    The draw is over the sorted query ids, so it depends only on the ids, ``dev_fraction`` and
    ``seed``. Each side gets at least one query.

    Raises:
        ValueError: If there are fewer than two queries or ``dev_fraction`` is not in (0, 1).
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    ids = sorted(dataset.queries)
    if len(ids) < 2:
        raise ValueError(
            f"an instruction search needs at least 2 queries, {dataset.name} has {len(ids)}"
        )
    random.Random(seed).shuffle(ids)
    cut = min(max(round(len(ids) * dev_fraction), 1), len(ids) - 1)
    dev, test = set(ids[:cut]), set(ids[cut:])

    def part(keep: set[str]) -> Dataset:
        return Dataset(
            corpus=dataset.corpus,
            queries={q: t for q, t in dataset.queries.items() if q in keep},
            qrels={q: dataset.qrels[q] for q in dataset.queries if q in keep},
            name=dataset.name,
        )

    return part(dev), part(test)


def proposal_prompt(dev: Dataset, tried: Sequence[str], count: int) -> str:
    """The prompt asking an LLM for ``count`` instructions, with examples from ``dev`` only."""
    examples = []
    for qid in sorted(dev.queries)[:PROMPT_EXAMPLES]:
        relevant = [d for d, r in dev.qrels[qid].items() if r > 0]
        document = " ".join(dev.corpus[relevant[0]].split()) if relevant else ""
        if len(document) > PROMPT_DOCUMENT_CHARS:
            document = document[:PROMPT_DOCUMENT_CHARS] + "..."
        examples.append(f"Query: {dev.queries[qid]}\nDocument: {document}")
    return PROPOSAL_PROMPT.format(
        examples="\n\n".join(examples),
        tried="\n".join(f"- {t}" for t in tried) or "- (none)",
        count=count,
    )


def parse_proposals(reply: str | None, tried: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """The new, valid instructions in an LLM reply, and the count of items refused by reason.

    The reply is untrusted text: it must hold one JSON object ``{"instructions": [...]}``
    (synth's strict extraction); each item must be a string that :func:`clean_instruction`
    accepts and that is not already in ``tried`` (nor repeated).

    Raises:
        InvalidReply: If the reply holds no such object or no usable instruction.
    """
    from qwen3_rag.synth.parsing import InvalidReply, extract_json

    data = extract_json(reply)
    items = [v for k, v in data.items() if isinstance(k, str) and k.casefold() == "instructions"]
    if len(items) != 1 or not isinstance(items[0], list):
        keys = ", ".join(map(repr, data)) or "none"
        raise InvalidReply("wrong_keys", f"expected a list under 'instructions', got {keys}")
    seen = {t.casefold() for t in tried}
    accepted: list[str] = []
    rejected: dict[str, int] = {}
    for item in items[0]:
        try:
            text = clean_instruction(item)
        except ValueError:
            rejected["bad_value"] = rejected.get("bad_value", 0) + 1
            continue
        if text.casefold() in seen:
            rejected["duplicate"] = rejected.get("duplicate", 0) + 1
            continue
        seen.add(text.casefold())
        accepted.append(text)
    if not accepted:
        raise InvalidReply("no_instruction", "no new, valid instruction in the reply")
    return accepted, rejected


def propose_instructions(
    llm: Any,
    dev: Dataset,
    count: int,
    *,
    tried: Sequence[str] = (),
    cache: Any | None = None,
    seed: int = 0,
    attempts: int = PROPOSAL_ATTEMPTS,
) -> ProposalSummary:
    """Ask an LLM for ``count`` new instructions, shown examples from the dev split only.

    Each reply is validated (:func:`parse_proposals`); an invalid or refused reply is logged
    and counted, and another sample is asked for, up to ``attempts`` replies. Replies go
    through synth's :class:`~qwen3_rag.synth.ReplyCache` keyed as synth keys them, so a
    re-run with the same LLM, data and seed makes no call.

    Args:
        llm: A :class:`~qwen3_rag.synth.ChatLLM` (OpenAI-compatible endpoint, local causal
            LM) or a callable ``prompt -> reply``.
        dev: The dev split (examples for the prompt).
        count: How many instructions to ask for.
        tried: Instructions already candidates (not accepted again).
        cache: A :class:`~qwen3_rag.synth.ReplyCache`; None keeps replies in memory.
        seed: Seed of the requests (part of the cache key).
        attempts: Most replies asked for.

    Raises:
        ValueError: If ``count`` or ``attempts`` is below 1.
        LLMError: If the LLM cannot be used at all (the replies so far are cached).
    """
    from qwen3_rag.synth.llm import LLMRequestError, ReplyCache, as_llm, cache_key
    from qwen3_rag.synth.parsing import InvalidReply

    if count < 1 or attempts < 1:
        raise ValueError(f"count and attempts must be at least 1, got {count} and {attempts}")
    chat = as_llm(llm)
    replies = ReplyCache(None) if cache is None else cache
    summary = ProposalSummary(requested=count)
    known = list(tried)
    for sample in range(attempts):
        if len(summary.accepted) >= count:
            break
        prompt = proposal_prompt(dev, known, count - len(summary.accepted))
        key = cache_key(chat.name, prompt, sample + 1_000_003 * seed)
        found, reply = replies.get(key)
        if found:
            summary.cached_replies += 1
        else:
            try:
                reply = chat.complete(prompt, seed=int(key[:8], 16))
            except LLMRequestError as e:
                logger.warning("instruction proposals: %s", e)
                summary.rejected["refused"] = summary.rejected.get("refused", 0) + 1
                continue
            reply = None if reply is None else str(reply)
            replies.put(key, reply)
        summary.replies += 1
        try:
            accepted, rejected = parse_proposals(reply, known)
        except InvalidReply as e:
            logger.warning("instruction proposals: reply %d refused: %s", sample + 1, e)
            summary.rejected[e.reason] = summary.rejected.get(e.reason, 0) + 1
            continue
        for reason, n in rejected.items():
            summary.rejected[reason] = summary.rejected.get(reason, 0) + n
        accepted = accepted[: count - len(summary.accepted)]
        summary.accepted += accepted
        known += accepted
    if len(summary.accepted) < count:
        logger.warning(
            "the LLM gave %d of the %d instructions asked for (%s)",
            len(summary.accepted),
            count,
            ", ".join(f"{k} {v}" for k, v in summary.rejected.items()) or "no reply",
        )
    return summary


def search_instructions(
    embedder: Any,
    dev: Dataset,
    test: Dataset,
    candidates: Sequence[str],
    *,
    metric: str = "ndcg@10",
    metrics: Sequence[str] | str | None = None,
    dimensions: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    sources: Sequence[str] | None = None,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    proposals: ProposalSummary | None = None,
) -> SearchResult:
    """Choose the query instruction with the best ``metric`` on ``dev``; report it on ``test``.

    The embedder's own instruction is always a candidate (the first), so "keep the default" is
    a possible answer. The corpus is embedded once (or read from the cache). Ties on dev go
    to the candidate tried first. ``test`` is read only after the choice, to report the chosen
    and the default instruction with a paired randomization test between them.

    Args:
        embedder: A :class:`~qwen3_rag.core.Qwen3Embedder`.
        dev: The queries that choose (see :func:`split_queries`).
        test: The held-out queries that report; the same corpus as ``dev``.
        candidates: Instructions to try besides the embedder's own (``""``: none).
        metric: The metric that chooses; it is also reported.
        metrics: Further metrics to report; None: the defaults.
        dimensions: Search at this MRL length (None: full).
        cache_dir: Corpus-vector cache folder; None: no cache.
        sources: Where each of ``candidates`` came from (``file``, ``llm``...).
        permutations: Resamples of the randomization test.
        seed: Seed of the test.
        proposals: The LLM's summary, kept in the result.

    Raises:
        ValueError: For an unknown metric, a candidate that is not a valid instruction, a
            ``dimensions`` the embedder cannot give, or dev and test over different corpora
            or sharing a query.
    """
    chooser = parse_metrics([metric])[0]
    names = tuple(dict.fromkeys([chooser, *parse_metrics(metrics)]))
    if set(dev.queries) & set(test.queries):
        raise ValueError("the dev and test splits share queries")
    if sources is not None and len(sources) != len(candidates):
        raise ValueError("sources must name the source of each candidate")
    default = str(getattr(embedder, "instruction", "") or "")
    tried: dict[str, Candidate] = {default: Candidate(default, "default")}
    for i, text in enumerate(candidates):
        cleaned = "" if text == "" else clean_instruction(text)  # "": no instruction
        tried.setdefault(cleaned, Candidate(cleaned, sources[i] if sources else "given"))
    runner = DenseRunner(embedder, dev, cache_dir=cache_dir)
    dev_rows: list[dict[str, Any]] = []
    best: str | None = None
    best_value = float("-inf")
    for candidate in tried.values():
        run = runner.run(candidate.instruction, dimensions)
        values = mean_metrics(per_query_metrics(dev.qrels, run, names), names)
        dev_rows.append(
            {"instruction": candidate.instruction, "source": candidate.source, "metrics": values}
        )
        if values[chooser] > best_value:  # strictly: a tie keeps the earlier candidate
            best, best_value = candidate.instruction, values[chooser]
    assert best is not None
    # Only now are the test queries embedded, and only with the two instructions reported.
    held = runner.for_queries(test)
    reported = {}
    for label, instruction in (("chosen", best), ("default", default)):
        reported[label] = per_query_metrics(test.qrels, held.run(instruction, dimensions), names)
    test_result = {
        "queries": len(test.queries),
        "chosen": mean_metrics(reported["chosen"], names),
        "default": mean_metrics(reported["default"], names),
        "p_values": compare_per_query(
            reported["chosen"], reported["default"], names, permutations=permutations, seed=seed
        ),
    }
    return SearchResult(
        instruction=best,
        default=default,
        metric=chooser,
        dev=dev_rows,
        test=test_result,
        dev_queries=list(dev.queries),
        test_queries=list(test.queries),
        model=str(getattr(embedder, "model_name", "")),
        dimensions=dimensions,
        proposals=proposals,
    )
