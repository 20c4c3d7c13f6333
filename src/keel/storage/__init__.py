"""Storage backends chosen by URL: ``sqlite://``, ``postgresql://``, ``redis://``, ``memory://``."""

from keel.storage.kv import open_kv
from keel.storage.sql import Database

__all__ = ["Database", "open_kv"]
