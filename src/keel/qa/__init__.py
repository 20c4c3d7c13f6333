"""Reverse-RAG synthetic QA: sanitized traffic -> personas and prompts -> swarm -> judge -> gate."""
