"""The base of every ``keel.toml`` table: an unknown key is an error, never ignored.

A misspelt setting (``[cache] ttl_sec = 60``) that loads silently leaves the default in
force without a word, so every settings model, at every depth, forbids extra keys;
:func:`keel.config.load_settings` turns the error into one naming the key and its table.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
