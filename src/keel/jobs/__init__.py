"""Durable work for every capability: one DBOS runtime per process, and worker processes."""

from keel.jobs.runtime import JobRuntime, QueueSpec

__all__ = ["JobRuntime", "QueueSpec"]
