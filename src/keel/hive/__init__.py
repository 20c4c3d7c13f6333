"""The hive: shared, streaming context for multi-agent work (tasks of append-only streams)."""
