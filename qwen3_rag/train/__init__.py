"""Fine-tuning per the Qwen3-Embedding paper.

Its contrastive loss, reranker SFT, LoRA, slerp merging.
"""

from __future__ import annotations

from .loss import DEFAULT_MARGIN, DEFAULT_TEMPERATURE, contrastive_loss, reranker_loss

__all__ = ["DEFAULT_MARGIN", "DEFAULT_TEMPERATURE", "contrastive_loss", "reranker_loss"]
