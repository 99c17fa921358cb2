"""The public API, pinned: exactly these names, each documented.

A name added to or dropped from ``__all__`` must be a decision, made here as well.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path
from types import ModuleType

import pytest

import qwen3_rag
import qwen3_rag.core

PUBLIC = {
    "qwen3_rag": [
        "DEFAULT_EMBEDDING_MODEL",
        "DEFAULT_RERANKER_MODEL",
        "DEFAULT_TASK",
        "EmbedderConfig",
        "Encoded",
        "InvalidInputError",
        "ModelLoadError",
        "NonFiniteOutputError",
        "OutOfMemoryError",
        "Qwen3Embedder",
        "Qwen3RagError",
        "Qwen3Reranker",
        "RemoteEmbedder",
        "RemoteError",
        "RemoteReranker",
        "RerankResult",
        "RerankerConfig",
        "__version__",
    ],
    "qwen3_rag.core": [
        "DEFAULT_EMBEDDING_MODEL",
        "DEFAULT_RERANKER_MODEL",
        "DEFAULT_TASK",
        "EmbedderConfig",
        "Encoded",
        "InvalidInputError",
        "ModelLoadError",
        "NonFiniteOutputError",
        "OutOfMemoryError",
        "Qwen3Embedder",
        "Qwen3RagError",
        "Qwen3Reranker",
        "RerankResult",
        "RerankerConfig",
        "RuntimeConfig",
        "format_query",
        "format_rerank_body",
    ],
}
MODULES: dict[str, ModuleType] = {"qwen3_rag": qwen3_rag, "qwen3_rag.core": qwen3_rag.core}
# Where module-level constants can be defined: the package roots and the core's modules.
SOURCES = [Path(qwen3_rag.__file__), *sorted(Path(qwen3_rag.core.__file__).parent.glob("*.py"))]


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_exactly_the_pinned_list(module):
    exported = MODULES[module].__all__
    assert len(exported) == len(set(exported)), f"duplicates in {module}.__all__"
    assert sorted(exported) == sorted(PUBLIC[module])
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(PUBLIC[module])


def test_the_root_re_exports_the_core_objects_themselves():
    for name in set(PUBLIC["qwen3_rag"]) & set(PUBLIC["qwen3_rag.core"]):
        assert getattr(qwen3_rag, name) is getattr(qwen3_rag.core, name), name


def _constant_doc(name: str) -> str | None:
    """The ``#:`` comment above, or the string literal below, a module-level ``name = ...``."""
    for path in SOURCES:
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        body = ast.parse(source).body
        for i, node in enumerate(body):
            targets = (
                [t.id for t in node.targets if isinstance(t, ast.Name)]
                if isinstance(node, ast.Assign)
                else [node.target.id]
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                else []
            )
            if name not in targets:
                continue
            comments = []
            row = node.lineno - 2  # 0-based index of the line above the assignment
            while row >= 0 and lines[row].lstrip().startswith("#:"):
                comments.insert(0, lines[row].lstrip()[2:].strip())
                row -= 1
            if comments:
                return " ".join(comments)
            after = body[i + 1] if i + 1 < len(body) else None
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                return after.value.value
            return None
    raise AssertionError(f"no module-level assignment of {name} in {[str(p) for p in SOURCES]}")


def _docstring(obj: object, name: str) -> str | None:
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__")  # its own, not inherited
        if doc and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
            return None  # the signature dataclasses writes when the class has no docstring
        return doc
    if inspect.isfunction(obj):
        return obj.__doc__
    return _constant_doc(name)


@pytest.mark.parametrize(
    "module, name", [(m, n) for m in sorted(PUBLIC) for n in PUBLIC[m]], ids=lambda v: v
)
def test_every_exported_name_is_documented(module, name):
    doc = _docstring(getattr(MODULES[module], name), name)
    assert doc and doc.strip(), f"{module}.{name} has no docstring (or '#:' comment for a constant)"
