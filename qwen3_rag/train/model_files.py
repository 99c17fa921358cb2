"""The model folder a run writes: the base model's side files, sentence-transformers' files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from qwen3_rag.core.spec import format_query
from qwen3_rag.datafiles import write_atomic

#: Files of a model folder that the run writes itself; everything else is copied from the base.
_WRITTEN = {"config.json", "generation_config.json", "model.safetensors.index.json"}


def _copy_model_files(source: Path, dest: Path) -> None:
    """Tokenizer and other side files of the base model (weights and config are written)."""
    for item in source.iterdir():
        if item.name in _WRITTEN or item.suffix == ".safetensors" or item.name.startswith("."):
            continue
        if item.name.lower().startswith("readme") or (dest / item.name).exists():
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        elif item.is_file():
            shutil.copy2(item, dest / item.name)


def write_sentence_transformers_files(
    dest: Path, hidden_size: int, instruction: str | None = None
) -> None:
    """sentence-transformers' files: last-token pooling, the query prompt, the input length.

    The pooling layout is written unless the base model had one. The query prompt is the
    embedder's template around ``instruction`` with an empty query (the model card's
    ``prompt_name="query"``; an empty instruction is no prompt), documents get none, and
    ``max_seq_length`` is the runtime's default ``max_length``: both overwrite what the base
    model's files said, which described the base model's training, not this one.

    Args:
        dest: The model folder.
        hidden_size: The model's hidden size (the pooled vector's length).
        instruction: The task the queries were trained with; None: the model's default task.
    """
    from qwen3_rag.core import EmbedderConfig
    from qwen3_rag.core.spec import DEFAULT_TASK

    task = DEFAULT_TASK if instruction is None else instruction
    prompt = format_query("", task) if task else ""
    settings = _read_json(dest / "config_sentence_transformers.json")
    settings["prompts"] = {**settings.get("prompts", {}), "query": prompt, "document": ""}
    settings.setdefault("default_prompt_name", None)
    settings.setdefault("similarity_fn_name", "cosine")
    _write_json(dest / "config_sentence_transformers.json", settings)
    length = _read_json(dest / "sentence_bert_config.json")
    length["max_seq_length"] = EmbedderConfig().max_length
    length.setdefault("do_lower_case", False)
    _write_json(dest / "sentence_bert_config.json", length)
    if (dest / "modules.json").exists():
        return
    _write_json(
        dest / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
        ],
    )
    (dest / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        dest / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": True,
            "include_prompt": True,
        },
    )
    (dest / "2_Normalize").mkdir(exist_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a JSON object")
    return value


def _write_json(path: Path, value: Any) -> None:
    write_atomic(path, [json.dumps(value, indent=1) + "\n"])
