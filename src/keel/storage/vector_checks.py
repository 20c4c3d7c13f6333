"""Input checks shared by the VectorIndex backends: the same bad input, the same 4xx."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from keel.errors import InvalidRequest
from keel.ports.vector_index import Metadata, Vectors

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"vector index name {name!r} must be 1-64 letters, digits, '_' or '-'", param="name"
        )
    return name


def check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 32768:
        raise InvalidRequest(f"dim must be an integer from 1 to 32768, got {dim!r}", param="dim")
    return dim


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10_000:
        raise InvalidRequest(f"k must be an integer from 1 to 10000, got {k!r}", param="k")
    return k


def check_filters(filters: Mapping[str, str] | None) -> dict[str, str]:
    """Filters as a plain dict (empty when none); every key and value must be a string."""
    if not filters:
        return {}
    out: dict[str, str] = {}
    for key, value in filters.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidRequest(
                f"filter {key!r}={value!r}: filters match string metadata, use str values",
                param="filters",
            )
        out[key] = value
    return out


def unit_rows(vectors: Vectors, dim: int, *, what: str = "vectors") -> Vectors:
    """``vectors`` as a C-contiguous float32 ``(n, dim)`` array with unit-length rows."""
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InvalidRequest(
            f"{what} must have shape (n, {dim}) for this index, got {arr.shape}", param=what
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InvalidRequest(f"{what} contain NaN or infinity", param=what)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidRequest(f"{what} contain an all-zero row: cosine is undefined", param=what)
    out: Vectors = np.asarray(arr / norms, dtype=np.float32)
    return out


def unit_query(vector: Vectors, dim: int) -> Vectors:
    arr = np.asarray(vector)
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise InvalidRequest(
            f"query vector must have shape ({dim},) for this index, got {arr.shape}",
            param="vector",
        )
    row: Vectors = unit_rows(arr.reshape(1, dim), dim, what="vector").reshape(dim)
    return row


def check_items(ids: Sequence[str], n_vectors: int, metadata: Sequence[Metadata]) -> None:
    if len(ids) != n_vectors or len(metadata) != n_vectors:
        raise InvalidRequest(
            f"upsert needs one id and one metadata dict per vector: got {len(ids)} ids, "
            f"{n_vectors} vectors, {len(metadata)} metadata",
            param="ids",
        )
    if len(set(ids)) != len(ids):
        raise InvalidRequest("upsert got the same id twice in one call", param="ids")
    for item_id, meta in zip(ids, metadata, strict=True):
        if not isinstance(item_id, str) or not item_id:
            raise InvalidRequest(f"ids must be non-empty strings, got {item_id!r}", param="ids")
        for key, value in meta.items():
            ok = isinstance(value, str | int | float) and not isinstance(value, bool)
            if not isinstance(key, str) or not ok:
                raise InvalidRequest(
                    f"metadata {key!r}={value!r} of {item_id!r}: keys are str, values "
                    "str, int or float",
                    param="metadata",
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidRequest(f"metadata {key!r} of {item_id!r} is not finite")
