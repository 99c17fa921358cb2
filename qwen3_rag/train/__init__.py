"""Fine-tuning per the Qwen3-Embedding paper.

Its contrastive loss, reranker SFT, training data, hard-negative mining, slerp merging.
"""

from __future__ import annotations

from .data import TrainExample, TrainingDataError, load_training_data, write_training_data
from .loss import DEFAULT_MARGIN, DEFAULT_TEMPERATURE, contrastive_loss, reranker_loss
from .merge import MergeError, slerp_merge

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_TEMPERATURE",
    "MergeError",
    "TrainExample",
    "TrainingDataError",
    "contrastive_loss",
    "load_training_data",
    "reranker_loss",
    "slerp_merge",
    "write_training_data",
]
