"""Model merging as in the paper's stage 3: spherical interpolation (slerp) of checkpoints.

Each tensor is merged on its own. Two checkpoints ``a`` and ``b`` with weight ``t`` on ``b``:
``slerp(a, b, t) = sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b`` with ``θ`` the angle between the
flattened tensors; tensors that are nearly parallel (or antiparallel, or zero) have no
well-defined great circle, so they are interpolated linearly, ``(1-t)·a + t·b``, which slerp
tends to as ``θ → 0``.

More than two checkpoints are merged by iterated pairwise slerp with cumulative weights: the
running result ``m_k`` of the first ``k`` checkpoints (total weight ``W_k``) is slerped toward
checkpoint ``k+1`` with ``t = w_{k+1} / W_{k+1}``. With linear interpolation this is exactly the
weighted mean; with slerp it is the usual generalisation (it equals pairwise slerp for two
checkpoints and depends slightly on the order for more, so pass them in training order).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qwen3_rag.core import Qwen3RagError

logger = logging.getLogger(__name__)

#: Above this absolute cosine two tensors count as parallel and are interpolated linearly
#: (mergekit's threshold: the slerp and linear results differ by well under 0.1% there).
PARALLEL_COSINE = 0.9995

_INDEX = "model.safetensors.index.json"
#: Files of a training checkpoint that are not part of the model; never copied.
_SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt", ".tmp")
_SKIPPED_NAMES = {_INDEX, "trainer_state.json", "training_args.json"}


class MergeError(Qwen3RagError, ValueError):
    """Checkpoints that cannot be merged; the message names the tensor and the checkpoint."""


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from ``a`` (``t = 0``) to ``b`` (``t = 1``), in float64.

    Falls back to linear interpolation when the tensors are nearly parallel or antiparallel
    (``|cos| > PARALLEL_COSINE``) or one is zero. The result has ``a``'s shape and dtype; at
    ``t = 0`` and ``t = 1`` it is exactly ``a`` and ``b``.

    Example:
        >>> x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
        >>> [round(v, 4) for v in slerp(x, y, 0.5).tolist()]
        [0.7071, 0.7071]
    """
    # No special case for the endpoints: at t = 0 the coefficients are exactly 1 and 0 (and at
    # t = 1 exactly 0 and 1), so the inputs come back bit for bit.
    x, y = a.double().flatten(), b.double().flatten()
    na, nb = x.norm(), y.norm()
    cos = float(x @ y / (na * nb)) if float(na) > 0 and float(nb) > 0 else 1.0
    if abs(cos) > PARALLEL_COSINE:
        out = (1 - t) * x + t * y
    else:
        theta = math.acos(max(-1.0, min(1.0, cos)))
        sin = math.sin(theta)
        out = (math.sin((1 - t) * theta) / sin) * x + (math.sin(t * theta) / sin) * y
    return out.reshape(a.shape).to(a.dtype)


def slerp_merge(
    checkpoints: Sequence[str | os.PathLike[str]],
    weights: Sequence[float] | None = None,
    *,
    out: str | os.PathLike[str],
    show_progress: bool | None = None,
) -> Path:
    """Merge two or more checkpoint folders into a new model folder by per-tensor slerp.

    Args:
        checkpoints: Hugging Face model folders with safetensors weights (full weights: merge a
            LoRA adapter into its base first), all of one architecture, in training order.
        weights: One weight >= 0 per checkpoint, not all 0 (normalised here; for two
            checkpoints, ``[1 - t, t]`` is slerp at ``t``, and 0 gives a checkpoint back
            exactly); None weighs them equally.
        out: The folder to create. It must not exist, or be empty. It receives the merged
            safetensors (sharded as the first checkpoint) and every other file of the first
            checkpoint (config, tokenizer, ...), so it loads like any model folder. Written
            to a temporary folder and renamed into place.
        show_progress: A progress bar over the tensors; None shows it on a terminal only.

    Returns:
        The output folder.

    Raises:
        MergeError: For fewer than two checkpoints, a folder without safetensors weights, or
            tensors that differ in name, shape or dtype (the message names the tensor and the
            checkpoint).
        ValueError: For bad weights or an output folder that is not empty.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    folders = [Path(c) for c in checkpoints]
    if len(folders) < 2:
        raise MergeError(f"slerp needs at least two checkpoints, got {len(folders)}")
    fractions = _weights(weights, len(folders))
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"output {str(target)!r} exists and is not an empty folder")
    for folder in folders:
        if target.exists() and target.resolve() == folder.resolve():
            raise ValueError(f"output {str(target)!r} is one of the checkpoints")
    layouts = [_layout(folder) for folder in folders]
    _check_same_tensors(folders, layouts)

    shards: dict[str, list[str]] = {}
    for key, file in layouts[0].items():
        shards.setdefault(file, []).append(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.merging-"))
    try:
        total = sum(len(keys) for keys in shards.values())
        disable = None if show_progress is None else not show_progress  # None: terminals only
        with tqdm(total=total, desc="merge", unit="tensor", disable=disable) as bar:
            for file, keys in shards.items():
                merged: dict[str, torch.Tensor] = {}
                for key in keys:
                    merged[key] = _merge_tensor(key, folders, layouts, fractions, safe_open)
                    bar.update(1)
                save_file(merged, str(staging / file), metadata={"format": "pt"})
                del merged
        first = folders[0]
        if (first / _INDEX).is_file():
            index = json.loads((first / _INDEX).read_text(encoding="utf-8"))
            (staging / _INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
        for item in first.iterdir():
            if item.name in _SKIPPED_NAMES or item.name.endswith(_SKIPPED_SUFFIXES):
                continue
            if item.name.startswith(("optimizer", "scheduler", "rng_state", ".")):
                continue
            if item.is_dir():
                if not any(item.glob("*.safetensors")):  # a nested checkpoint is not copied
                    shutil.copytree(item, staging / item.name)
            else:
                shutil.copy2(item, staging / item.name)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("merged %d checkpoints into %s", len(folders), target)
    return target


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Cumulative interpolation fractions ``t_k = w_k / (w_1 + ... + w_k)`` (``t_1`` unused).

    While the running total is 0 the fraction is 0 (nothing to move toward yet); the first
    checkpoint with a weight then gets ``t = 1``, which slerp returns exactly.
    """
    if weights is None:
        values = [1.0] * n
    else:
        values = list(weights)
        if len(values) != n:
            raise ValueError(f"got {len(values)} weights for {n} checkpoints")
        for i, w in enumerate(values):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
                raise ValueError(f"weights[{i}] must be a finite number >= 0, got {w!r}")
        if not any(values):
            raise ValueError(f"weights are all 0 ({values}); give at least one a weight")
    fractions, running = [], 0.0
    for w in values:
        running += float(w)
        fractions.append(float(w) / running if running > 0 else 0.0)
    return fractions


def _layout(folder: Path) -> dict[str, str]:
    """Tensor name -> safetensors file name within ``folder``."""
    from safetensors import safe_open

    if not folder.is_dir():
        raise MergeError(f"checkpoint {str(folder)!r} is not a folder")
    index = folder / _INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise MergeError(f"checkpoint {str(folder)!r}: cannot read {_INDEX}: {e}") from e
        return {str(k): str(v) for k, v in weight_map.items()}
    files = sorted(p for p in folder.glob("*.safetensors"))
    if not files or all(p.name.startswith("adapter_") for p in files):
        hint = (
            " (it holds a LoRA adapter only: merge the adapter into its base model first)"
            if files
            else ""
        )
        raise MergeError(f"checkpoint {str(folder)!r} has no safetensors model weights{hint}")
    layout: dict[str, str] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not mappings
                if key in layout:
                    raise MergeError(
                        f"checkpoint {str(folder)!r}: tensor {key!r} is in both "
                        f"{layout[key]} and {file.name}"
                    )
                layout[key] = file.name
    return layout


def _check_same_tensors(folders: list[Path], layouts: list[dict[str, str]]) -> None:
    from safetensors import safe_open

    reference = layouts[0]
    for folder, layout in zip(folders[1:], layouts[1:], strict=True):
        missing = sorted(set(reference) - set(layout))
        extra = sorted(set(layout) - set(reference))
        if missing:
            raise MergeError(
                f"checkpoint {str(folder)!r} has no tensor {missing[0]!r} that "
                f"{str(folders[0])!r} has ({len(missing)} missing)"
            )
        if extra:
            raise MergeError(
                f"checkpoint {str(folder)!r} has tensor {extra[0]!r} that {str(folders[0])!r} "
                f"lacks ({len(extra)} extra)"
            )
    # Shapes and dtypes from the headers only: no tensor is read yet.
    specs: list[dict[str, tuple[list[int], str]]] = []
    for folder, layout in zip(folders, layouts, strict=True):
        spec: dict[str, tuple[list[int], str]] = {}
        for file in sorted(set(layout.values())):
            with safe_open(str(folder / file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118
                    sl = f.get_slice(key)
                    spec[key] = (list(sl.get_shape()), str(sl.get_dtype()))
        specs.append(spec)
    for folder, spec in zip(folders[1:], specs[1:], strict=True):
        for key, (shape, dtype) in specs[0].items():
            other_shape, other_dtype = spec[key]
            if other_shape != shape:
                raise MergeError(
                    f"tensor {key!r} has shape {other_shape} in checkpoint {str(folder)!r} but "
                    f"{shape} in {str(folders[0])!r}"
                )
            if other_dtype != dtype:
                raise MergeError(
                    f"tensor {key!r} is {other_dtype} in checkpoint {str(folder)!r} but {dtype} "
                    f"in {str(folders[0])!r}"
                )


def _merge_tensor(
    key: str,
    folders: list[Path],
    layouts: list[dict[str, str]],
    fractions: list[float],
    safe_open: object,
) -> torch.Tensor:
    def read(i: int) -> torch.Tensor:
        with safe_open(str(folders[i] / layouts[i][key]), framework="pt") as f:  # type: ignore[operator]
            tensor: torch.Tensor = f.get_tensor(key)
        return tensor

    first = read(0)
    if not first.is_floating_point():
        for i in range(1, len(folders)):
            if not torch.equal(first, read(i)):
                raise MergeError(
                    f"tensor {key!r} holds integers that differ in checkpoint "
                    f"{str(folders[i])!r}; only floating-point tensors can be interpolated"
                )
        return first
    # The running result stays float64 between steps; rounded to the checkpoints' dtype once.
    merged = first.double()
    for i in range(1, len(folders)):
        merged = slerp(merged, read(i), fractions[i])
    return merged.to(first.dtype)
