"""Reading the LLM's replies: untrusted text in, one validated value or a reason out.

Extraction is strict: the reply must hold exactly one JSON object, either bare (possibly with
prose around it) or in a fenced code block. Nothing is repaired (a trailing comma, single
quotes or a missing brace make the reply invalid); a reasoning model's ``<think>`` block is
dropped first. Validation then checks the keys and the allowed values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qwen3_rag.synth.prompts import (
    CONFIGURATION_KEYS,
    DIFFICULTIES,
    QUERY_KEY,
    QUESTION_TYPES,
)

#: Longest query kept, in characters: a longer "query" is the model rambling.
MAX_QUERY_CHARS = 1000

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.S)
_THINK = re.compile(r"<think>.*?</think>", re.S)


class InvalidReply(ValueError):
    """A reply that cannot be used; ``reason`` is a short category for the summary."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Configuration:
    """Stage 1's choice for one passage."""

    character: str
    question_type: str
    difficulty: str


def extract_json(reply: str | None) -> dict[str, Any]:
    """The one JSON object in ``reply``.

    Raises:
        InvalidReply: ``empty`` if there is no text, ``no_json`` if no object parses,
            ``ambiguous_json`` if several different objects do.
    """
    if reply is None or not reply.strip():
        raise InvalidReply("empty", "the reply is empty")
    text = _THINK.sub("", reply).strip()
    fenced = _FENCE.findall(text)
    candidates = fenced if fenced else [text]
    found: list[dict[str, Any]] = []
    for chunk in candidates:
        for value in _objects(chunk.strip()):
            if value not in found:
                found.append(value)
    if not found:
        raise InvalidReply("no_json", f"no JSON object in {_preview(reply)}")
    if len(found) > 1:
        raise InvalidReply("ambiguous_json", f"{len(found)} different JSON objects in the reply")
    return found[0]


def _objects(text: str) -> list[dict[str, Any]]:
    """Top-level JSON objects that parse completely, scanning from each ``{`` outside them."""
    decoder = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    position = text.find("{")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            out.append(value)
        position = text.find("{", end)
    return out


def _preview(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _field(data: dict[str, Any], key: str) -> str:
    """A string value by key; keys match ignoring case, as LLMs vary the case."""
    matches = [v for k, v in data.items() if isinstance(k, str) and k.casefold() == key.casefold()]
    if len(matches) != 1:
        keys = ", ".join(map(repr, data)) or "none"
        raise InvalidReply("wrong_keys", f"expected the key {key!r}, got {keys}")
    value = matches[0]
    if not isinstance(value, str) or not value.strip():
        raise InvalidReply("bad_value", f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def parse_configuration(reply: str | None, candidates: Sequence[str]) -> Configuration:
    """Stage 1's reply as a :class:`Configuration`.

    The Character must be one of ``candidates`` (compared ignoring case and surrounding space;
    the candidate's own spelling is kept), the Question_Type one of :data:`QUESTION_TYPES`, the
    Difficulty one of :data:`DIFFICULTIES`.

    Raises:
        InvalidReply: With the reason (``wrong_keys``, ``bad_value``...) and what was wrong.
    """
    data = extract_json(reply)
    character, kind, difficulty = (_field(data, key) for key in CONFIGURATION_KEYS)
    chosen = next((c for c in candidates if c.strip().casefold() == character.casefold()), None)
    if chosen is None:
        raise InvalidReply("bad_value", f"Character {character!r} is not one of the candidates")
    if kind not in QUESTION_TYPES:
        raise InvalidReply(
            "bad_value", f"Question_Type {kind!r} is not one of {', '.join(QUESTION_TYPES)}"
        )
    if difficulty not in DIFFICULTIES:
        raise InvalidReply(
            "bad_value", f"Difficulty {difficulty!r} is not one of {', '.join(DIFFICULTIES)}"
        )
    return Configuration(chosen, kind, difficulty)


def parse_query(reply: str | None) -> str:
    """Stage 2's reply: the query text, whitespace collapsed.

    Raises:
        InvalidReply: If the reply holds no ``Query`` string, or one longer than
            :data:`MAX_QUERY_CHARS`.
    """
    query = " ".join(_field(extract_json(reply), QUERY_KEY).split())
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidReply("bad_value", f"the query has {len(query)} characters")
    return query
