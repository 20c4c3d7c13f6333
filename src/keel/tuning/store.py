"""Tables of the tuning loop: feedback votes, model versions and what each model serves."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from keel.storage.migrations import Migration

meta = MetaData()

# One vote per request per API key; a second vote from the same key replaces the first.
feedback = Table(
    "tuning_feedback",
    meta,
    Column("request_id", String(40), primary_key=True),
    Column("key_id", String(32), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("model", String(200)),
    Column("rating", Integer, nullable=False),  # +1 thumbs-up, -1 thumbs-down
    Column("correction", Text),
    Column("comment", Text),
    Column("trainable", Boolean, nullable=False, default=False),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Index("tuning_feedback_model_updated", "model", "updated"),
    Index("tuning_feedback_tenant_updated", "tenant", "updated"),
)

# A trained adapter for one public model name, with its lineage and evaluation report.
versions = Table(
    "tuning_versions",
    meta,
    Column("id", String(80), primary_key=True),  # "<model>@v<N>"
    Column("model", String(200), nullable=False),
    Column("number", Integer, nullable=False),
    Column("parent", String(80)),  # the version served when it was trained ("" = base)
    Column("base_model", Text, nullable=False),  # the base GGUF it adapts
    Column("adapter", Text, nullable=False),  # the LoRA adapter GGUF
    Column("dataset_hash", String(64), nullable=False),
    Column("hyperparams", Text, nullable=False),  # JSON
    Column("metrics", Text, nullable=False),  # JSON: training time, loss, cost
    Column("report", Text),  # JSON: the evaluation gate's report
    Column("status", String(20), nullable=False),  # candidate | refused | promoted | retired
    Column("created", Float, nullable=False),
    Index("tuning_versions_model_number", "model", "number", unique=True),
)

# Every change of what a model serves, newest last: the current one is the last row, and
# rollback goes back to the one before it.
serving = Table(
    "tuning_serving",
    meta,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("version", String(80)),  # NULL: the base model
    Column("action", String(20), nullable=False),  # promote | rollback
    Column("ts", Float, nullable=False),
    Index("tuning_serving_model_seq", "model", "seq"),
)

MIGRATIONS = [
    Migration("tuning/0001_tables",
              lambda c: meta.create_all(c, tables=[feedback, versions, serving])),
]
