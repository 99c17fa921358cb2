"""Synthetic queries per the Qwen3-Embedding paper.

Persona-driven generation with a similarity filter.
"""
