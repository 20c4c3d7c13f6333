"""Settings of the hive (``[hive]`` in keel.toml): where it lives, TTL, quotas, durability."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from keel.settings_section import Section


class HiveSettings(Section):
    enabled: bool = False
    # file:///shared/hive, a plain path, or redis://host:6379/0; empty: <data_dir>/hive
    url: str = ""
    ttl_s: float = Field(default=24 * 3600.0, gt=0)  # a task idle this long is collected
    max_record_bytes: int = Field(default=1_048_576, ge=64)
    max_file_bytes: int = Field(default=8 << 20, ge=64)  # one shared file (413 above)
    # how often the gateway deletes expired tasks (one process per period does it when
    # several share the store); 0 disables (then run `keel hive gc` yourself)
    gc_interval_s: float = Field(default=3600.0, ge=0)
    quota_bytes: int = Field(default=1 << 30, ge=0)  # per tenant, every task together
    quota_streams: int = Field(default=1000, ge=0)  # per tenant
    max_tasks: int = Field(default=1000, ge=0)  # per tenant (429 at create above it)
    # directory backend: "end" fsyncs when a stream ends (default), "always" after every
    # append (NFS/EFS shared by machines, or no loss on power cut), "never" leaves it to the OS
    fsync: Literal["never", "end", "always"] = "end"
    # how long a tailing reader waits for a change notification before looking anyway
    # (inotify does not see writes made by another machine on NFS: set it low there)
    poll_s: float = Field(default=1.0, gt=0)
