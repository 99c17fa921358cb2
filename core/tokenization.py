"""User text tokenized to the official ids, except that it never becomes control tokens.

The Qwen3 tokenizer has 26 added tokens. Fourteen are flagged ``special`` (``<|endoftext|>``,
``<|im_start|>``, ``<|im_end|>`` and the vision, box, quad and object-reference markers): the
chat template is built from them, so a document holding ``<|im_end|>`` could close the reranker's
user turn and forge the answer, or plant an ``<|endoftext|>`` in an embedding input. The other
twelve are ordinary vocabulary (``<think>``, ``</think>``, ``<tool_call>``, ``</tool_call>``,
``<tool_response>``, ``</tool_response>`` and the ``<|fim_*|>``, ``<|repo_name|>``,
``<|file_sep|>`` code markers): the official pipeline (the model cards' code, vLLM, TEI)
keeps each as one token wherever it appears, and so must we for the same vectors and scores.

:class:`SafeTokenizer` encodes user text with the tokenizers library's own switch for exactly this
split, ``encode_special_tokens`` (what transformers' ``split_special_tokens=True`` sets): tokens
flagged ``special`` are encoded as the characters they are spelled with, every other added token
is matched as usual. Only the runtime adds control tokens, by id or through its own templates.

:meth:`SafeTokenizer.encode_plain` is also the one place user text enters the tokenizer, so it is
where text that has no UTF-8 form is repaired (see :func:`replace_surrogates`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from .errors import ModelLoadError

logger = logging.getLogger(__name__)

_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_surrogates(text: str) -> str:
    r"""``text`` with its UTF-16 surrogate code points made encodable.

    A Python string can hold surrogates (U+D800 to U+DFFF): ``"\ud800"`` escapes, JSON from
    JavaScript, file names decoded with ``surrogateescape``. They have no UTF-8 form, so the
    tokenizer refuses the whole batch with a ``TypeError``. A high surrogate followed by a low
    one is joined into the character the pair encodes (what a UTF-16 source meant); every other
    surrogate becomes U+FFFD, the replacement character, as the CLI's reader does with bytes
    that are not UTF-8. Replacing keeps one bad character from failing a whole batch, and
    U+FFFD is an ordinary character to the model.

    Example:
        >>> replace_surrogates("a\ud800b") == "a\ufffdb"
        True
        >>> replace_surrogates("\ud83d\ude00")
        '😀'
    """
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _default_name(index: int) -> str:
    return f"texts[{index}]"


@dataclass(frozen=True)
class SafeTokenizer:
    """A pair of tokenizers: ``plain`` for user text, ``template`` for the runtime's own strings.

    Attributes:
        plain: The model's tokenizer with ``encode_special_tokens`` on (tokens flagged
            ``special`` are text, the other added tokens are matched), and no post-processor,
            truncation or padding. Read-only after construction, so concurrent ``encode_batch``
            calls never hit "Already borrowed".
        template: The model's own tokenizer (a private copy), used only for template strings and
            to resolve token ids.
    """

    plain: Tokenizer
    template: Tokenizer

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], control_tokens: Sequence[str] = ()
    ) -> SafeTokenizer:
        """Build from a ``tokenizer.json`` file.

        Args:
            path: The ``tokenizer.json`` file.
            control_tokens: Tokens the runtime's templates are built from (turn markers, end of
                text). Each that the tokenizer has as an added token must be flagged ``special``,
                or user text spelling it would become it.

        Raises:
            ModelLoadError: If the file cannot be read as a tokenizer, or it does not flag one of
                ``control_tokens`` as ``special`` (the message names it).
        """
        try:
            with open(path, encoding="utf-8") as f:
                spec = json.load(f)
            template = Tokenizer.from_file(os.fspath(path))
            spec["post_processor"] = None
            spec["truncation"] = None
            spec["padding"] = None
            plain = Tokenizer.from_str(json.dumps(spec))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise ModelLoadError(f"cannot read the tokenizer {os.fspath(path)!r}: {e}") from e
        added = {t.content: t for t in template.get_added_tokens_decoder().values()}
        for token in control_tokens:
            if token in added and not added[token].special:
                raise ModelLoadError(
                    f"the tokenizer {os.fspath(path)!r} does not flag {token!r} as special, so "
                    "user text spelling it would become the control token; mark it "
                    '"special": true in its added_tokens'
                )
        plain.encode_special_tokens = True
        template.no_truncation()
        template.no_padding()
        return cls(plain=plain, template=template)

    @property
    def text_tokens(self) -> list[str]:
        """The added tokens that user text spells as characters: those flagged ``special``."""
        decoder = self.template.get_added_tokens_decoder()
        return [decoder[i].content for i in sorted(decoder) if decoder[i].special]

    def encode_plain(
        self, texts: Sequence[str], name: Callable[[int], str] = _default_name
    ) -> list[list[int]]:
        """Token ids of user texts: the official ids, with special-token strings kept as text.

        A non-special added token (``<think>``, ``<tool_call>``, ...) is one token, as in the
        official tokenizer; a special one (``<|im_end|>``, ...) becomes the tokens of its
        characters (see :attr:`text_tokens`). Surrogates are replaced first
        (:func:`replace_surrogates`), with one warning per call that says how many texts were
        changed and names the first by ``name(index)``.

        Args:
            texts: User texts.
            name: How the warning names the text at an index (``documents[3]``, ``the query``).
        """
        if not texts:
            return []
        clean = [replace_surrogates(t) for t in texts]
        changed = [i for i, (a, b) in enumerate(zip(texts, clean, strict=True)) if a is not b]
        if changed:
            logger.warning(
                "%d of %d texts held UTF-16 surrogates, which have no UTF-8 form: replaced by "
                "U+FFFD (first: %s)",
                len(changed),
                len(texts),
                name(changed[0]),
            )
        return [enc.ids for enc in self.plain.encode_batch(clean, add_special_tokens=False)]

    def encode_template(self, text: str) -> list[int]:
        """Token ids of a runtime-owned template string; its control tokens are parsed."""
        return list(self.template.encode(text, add_special_tokens=False).ids)

    def token_id(self, token: str) -> int:
        """The id of ``token`` as one vocabulary entry.

        Raises:
            ModelLoadError: If the tokenizer has no single token for ``token``.
        """
        token_id = self.template.token_to_id(token)
        if token_id is None:
            raise ModelLoadError(
                f"the tokenizer has no single token for {token!r}; is this a Qwen3 tokenizer?"
            )
        return int(token_id)
