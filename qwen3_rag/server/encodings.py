"""How vectors travel: base64 float32 (OpenAI) and Cohere's quantized ``embedding_types``.

Cohere defines the types; the scaling of ``int8``/``uint8`` is not published, so we use
sentence-transformers' ``quantize_embeddings`` rule with the range fixed to ``[-1, 1]`` in every
dimension (where components of unit vectors lie) instead of calibrated per batch: a text gets
the same codes whatever it is sent with. With ``step = 2 / 255``:

- ``uint8 = clip(floor((x + 1) / step), 0, 255)``;
- ``int8 = uint8 - 128``, -128 to 127;
- ``ubinary``: one bit per dimension, ``x > 0``, packed 8 to a byte, first dimension in the
  highest bit (``numpy.packbits``), 0 to 255; ``binary``: the same bytes less 128, as int8.

Cosine or dot products of the codes rank like those of the floats up to the rounding; the
README gives the recall they keep.
"""

from __future__ import annotations

import base64

import numpy as np

#: Width of one int8/uint8 step over the fixed range [-1, 1].
_STEP = np.float32(2.0) / np.float32(255.0)


def to_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes, base64: what the openai client decodes."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")


def quantize(vectors: np.ndarray, kind: str) -> list[list[int]] | list[list[float]]:
    """``vectors`` (float32, unit rows) in one of Cohere's embedding types, as JSON lists.

    Args:
        vectors: ``[n, d]`` float32 rows with components in [-1, 1].
        kind: ``float``, ``int8``, ``uint8``, ``binary`` or ``ubinary``.

    Raises:
        ValueError: For another ``kind``.
    """
    if kind == "float":
        out: list[list[float]] = vectors.tolist()
        return out
    x = vectors.astype(np.float32, copy=False)
    if kind in ("int8", "uint8"):
        codes = np.clip(np.floor((x + np.float32(1.0)) / _STEP), 0, 255)
        if kind == "int8":
            return (codes - 128).astype(np.int8).tolist()  # type: ignore[no-any-return]
        return codes.astype(np.uint8).tolist()  # type: ignore[no-any-return]
    if kind in ("binary", "ubinary"):
        packed = np.packbits(x > 0, axis=-1)
        if kind == "binary":
            return (packed.astype(np.int16) - 128).astype(np.int8).tolist()  # type: ignore[no-any-return]
        return packed.tolist()  # type: ignore[no-any-return]
    raise ValueError(f"embedding type {kind!r} is not one of float, int8, uint8, binary, ubinary")
