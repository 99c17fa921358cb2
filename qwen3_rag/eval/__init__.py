"""``qwen3-rag eval``.

Retrieval quality on the user's own data (recall, nDCG, MRR).
"""
