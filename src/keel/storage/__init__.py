"""Storage backends chosen by URL: ``sqlite://``, ``postgresql://``, ``redis://``, ``memory://``."""

from keel.storage.kv import open_kv
from keel.storage.sql import Database
from keel.storage.vectors import open_vector_index

__all__ = ["Database", "open_kv", "open_vector_index"]
