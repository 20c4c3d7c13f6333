"""Ports: the Protocols that capabilities depend on. Implementations live elsewhere."""

from keel.ports.embedder import Embedder
from keel.ports.kv import KV
from keel.ports.provider import ChatProvider
from keel.ports.vector_index import Hit, VectorIndex

__all__ = ["KV", "ChatProvider", "Embedder", "Hit", "VectorIndex"]
