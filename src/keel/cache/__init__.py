"""Semantic cache: exact + embedding-similarity layers with a hit verifier."""
