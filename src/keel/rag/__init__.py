"""Retrieval-augmented generation: ingest documents into versioned indexes, add context."""
