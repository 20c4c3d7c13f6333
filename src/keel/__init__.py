"""keel: a self-hosted control plane for LLM features and AI agents."""

__version__ = "0.1.0"
