"""Fine-tuning per the Qwen3-Embedding paper.

Its contrastive loss, reranker SFT, LoRA, slerp merging.
"""
