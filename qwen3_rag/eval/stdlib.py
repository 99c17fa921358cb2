"""A real retrieval dataset built offline from the Python standard library (CodeSearchNet-style).

Each query is the first sentence of a function's docstring; its one relevant document is that
function's source with the docstring removed. Nobody in this project wrote that text, it ships
with every Python, and it needs no download: the modules' source files are parsed with
:mod:`ast`, never imported.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import random
import re
import textwrap
from pathlib import Path

from .data import DataError, Dataset, check_new_folder, write_beir

#: Pure-Python modules with many documented functions, used when ``modules`` is not given.
DEFAULT_MODULES = (
    "argparse",
    "ast",
    "calendar",
    "configparser",
    "csv",
    "difflib",
    "email.utils",
    "fractions",
    "ftplib",
    "gettext",
    "heapq",
    "imaplib",
    "inspect",
    "ipaddress",
    "json.decoder",
    "json.encoder",
    "mailbox",
    "os",
    "pathlib",
    "pickletools",
    "platform",
    "pprint",
    "shlex",
    "shutil",
    "smtplib",
    "statistics",
    "string",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "tokenize",
    "traceback",
    "urllib.parse",
    "urllib.request",
    "zipfile",
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = inspect.cleandoc(docstring).split("\n\n", 1)[0]
    line = " ".join(paragraph.split())
    return _SENTENCE_END.split(line, 1)[0].strip()


def _source_file(module: str) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:
        raise DataError(f"standard-library module {module!r} not found: {e}") from e
    origin = spec.origin if spec is not None else None
    if origin == "frozen" and spec is not None:  # os, codecs...: frozen, the file is still there
        origin = getattr(spec.loader_state, "filename", None)
    if not origin or not origin.endswith(".py"):
        raise DataError(f"module {module!r} has no Python source file (a built-in or C module?)")
    return Path(origin)


def _functions(module: str) -> list[tuple[str, str, str]]:
    """``(id, query, code)`` for each documented function or method of ``module``."""
    path = _source_file(module)
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source, filename=str(path))
    found: list[tuple[str, str, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                item = _function(child, lines)
                if item is not None:
                    found.append((f"{module}:{prefix}{child.name}", *item))

    visit(tree, "")
    return found


def _function(
    node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]
) -> tuple[str, str] | None:
    doc = ast.get_docstring(node, clean=False)
    body = node.body
    if doc is None or len(body) < 2 or node.end_lineno is None:
        return None
    query = first_sentence(doc)
    if len(query.split()) < 4:
        return None
    start = (node.decorator_list[0] if node.decorator_list else node).lineno
    drop = range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1)
    kept = [lines[i - 1] for i in range(start, node.end_lineno + 1) if i not in drop]
    return query, textwrap.dedent("\n".join(kept)).strip("\n")


def build_stdlib_dataset(
    *,
    modules: tuple[str, ...] | list[str] | None = None,
    seed: int = 0,
    max_queries: int | None = None,
    name: str = "stdlib-code-search",
) -> Dataset:
    """The standard-library code-search dataset in memory (see :func:`stdlib_code_search`)."""
    chosen = tuple(DEFAULT_MODULES if modules is None else modules)
    if not chosen:
        raise ValueError("modules is empty; name at least one standard-library module")
    items = [item for module in sorted(set(chosen)) for item in _functions(module)]
    corpus: dict[str, str] = {}
    by_query: dict[str, list[str]] = {}
    for doc_id, query, code in items:
        if doc_id in corpus:  # a name defined twice (e.g. per platform): keep the first
            continue
        corpus[doc_id] = code
        by_query.setdefault(query, []).append(doc_id)
    # A sentence shared by several functions ("Return a string representation.") has no single
    # answer: it is not a query, and those functions stay in the corpus as distractors.
    pairs = sorted((ids[0], q) for q, ids in by_query.items() if len(ids) == 1)
    if max_queries is not None and max_queries < len(pairs):
        pairs = sorted(random.Random(seed).sample(pairs, max_queries))
    if not pairs:
        raise ValueError(f"no documented functions found in {', '.join(chosen)}")
    return Dataset(
        corpus=corpus,
        queries={doc_id: query for doc_id, query in pairs},
        qrels={doc_id: {doc_id: 1} for doc_id, _ in pairs},
        name=name,
    )


def stdlib_code_search(
    out_dir: str | os.PathLike[str],
    *,
    modules: tuple[str, ...] | list[str] | None = None,
    seed: int = 0,
    max_queries: int | None = None,
    split: str = "test",
    overwrite: bool = False,
) -> Path:
    """Build a BEIR folder from the Python standard library's functions, offline.

    Query = the first sentence (four words or more) of a function's or method's docstring;
    relevant document = that function's source without its docstring, dedented. Every
    documented function of the chosen modules is in the corpus; a first sentence shared by
    several functions is not used as a query. Query and document ids are
    ``"module:Class.function"`` (the same id in both files).

    The result depends only on the arguments and the Python version's sources.

    Args:
        out_dir: The folder to write (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).
        modules: Standard-library modules (dotted names) to read; default
            :data:`DEFAULT_MODULES`. Disjoint lists give disjoint datasets (to hold modules out
            of fine-tuning, for example).
        seed: Seed of the draw of ``max_queries`` queries.
        max_queries: Keep this many queries, drawn at random; None keeps all. The corpus keeps
            every function, so the other ones are distractors.
        split: The qrels file name.
        overwrite: Replace the dataset files of a non-empty ``out_dir`` (else refused).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: If a module is not found or has no Python source.
        FileExistsError: If ``out_dir`` is a file, or a non-empty folder and not ``overwrite``.
    """
    check_new_folder(out_dir, overwrite)  # before the sources are parsed
    dataset = build_stdlib_dataset(modules=modules, seed=seed, max_queries=max_queries)
    return write_beir(dataset, out_dir, split, overwrite=overwrite)
