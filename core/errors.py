"""Exceptions raised by the runtime."""

from __future__ import annotations


class Qwen3RagError(Exception):
    """Base class of the errors this library raises on purpose."""


class InvalidInputError(Qwen3RagError, ValueError):
    """A value the caller gave cannot be used: an option, a text, an instruction that cannot fit.

    A ``ValueError`` as well, so code that catches ``ValueError`` keeps working; applications
    (the CLI) tell it from a bug's ``ValueError`` by this type.
    """


class ModelLoadError(Qwen3RagError, OSError):
    """A model folder or hub id could not be used: missing, unsafe, or not a Qwen3 checkpoint."""


class NonFiniteOutputError(Qwen3RagError, FloatingPointError):
    """The model produced NaN or infinite values; nothing is returned to the caller."""


class OutOfMemoryError(Qwen3RagError, MemoryError):
    """Even a batch of one input does not fit in accelerator memory."""
