"""Ports: the Protocols that capabilities depend on. Implementations live elsewhere."""

from keel.ports.embedder import Embedder
from keel.ports.kv import KV
from keel.ports.provider import ChatProvider

__all__ = ["KV", "ChatProvider", "Embedder"]
