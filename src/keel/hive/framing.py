"""The on-disk record frame of the directory backend: length-prefixed and checksummed.

A frame is a 28-byte header (magic, payload length, sequence number, timestamp, CRC-32 of
everything after the magic) and a JSON payload ``{"w": writer, "k": kind, "d": data}``.
A writer emits each append as one ``write()`` on an ``O_APPEND`` file under a lock, so a
frame is torn only when the machine stops mid-write; a reader then sees a short or
failing frame, skips it (:func:`scan`) and the next writer truncates it before appending.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from keel.hive.model import NewRecord, Record

MAGIC = b"\xf0HV1"
_HEAD = struct.Struct("<IQdI")  # payload length, seq, ts, crc32
_SIGNED = 20  # length, seq, ts: the header bytes the checksum covers
HEADER = len(MAGIC) + _HEAD.size
MAX_PAYLOAD = 64 << 20  # a length above this is a torn or foreign header, not a record


def record_bytes(rec: NewRecord) -> int:
    """What a record costs in a stream: its frame header and JSON payload (exact for the
    directory backend; what quotas count on every backend)."""
    return HEADER + len(orjson.dumps({"w": rec.writer, "k": rec.kind, "d": rec.data}))


def encode_all(first_seq: int, ts: float, records: Sequence[NewRecord]) -> bytes:
    out = []
    for i, rec in enumerate(records):
        payload = orjson.dumps({"w": rec.writer, "k": rec.kind, "d": rec.data})
        body = struct.pack("<IQd", len(payload), first_seq + i, ts) + payload
        out.append(MAGIC + _HEAD.pack(len(payload), first_seq + i, ts, zlib.crc32(body))
                   + payload)
    return b"".join(out)


@dataclass(slots=True)
class Scan:
    records: list[Record]
    end: int  # byte offset just after the last whole frame read
    next_seq: int  # the sequence number the next record gets
    torn: bool  # a frame that can never become whole was skipped at ``end``
    ended: bool  # an end-of-stream record was read


def scan(buf: bytes | memoryview, base: int, next_seq: int, *, want: bool = True,
         final: bool = False) -> Scan:
    """Parse whole frames from ``buf`` (which starts at file offset ``base``).

    Stops at the first incomplete frame (a writer may still be writing it), unless
    ``final`` (no writer can be mid-frame: we hold the lock), where an incomplete or
    failing frame is reported ``torn``. A frame whose checksum fails with whole frames
    after it (a torn record a later writer appended after) is skipped by searching for
    the next valid magic. ``want=False`` counts without decoding payloads.
    """
    mv = memoryview(buf)
    pos = 0
    out: list[Record] = []
    torn = ended = False
    n = len(mv)
    while pos < n:
        if n - pos < HEADER:
            torn = final
            break
        length, seq, ts, crc = _HEAD.unpack_from(mv, pos + 4)
        ok = bytes(mv[pos:pos + 4]) == MAGIC and length <= MAX_PAYLOAD
        if ok and n - pos - HEADER < length:
            torn = final
            break
        if ok:
            body = (bytes(mv[pos + 4:pos + 4 + _SIGNED])
                    + bytes(mv[pos + HEADER:pos + HEADER + length]))
            ok = zlib.crc32(body) == crc
        if not ok:
            nxt = _resync(mv, pos + 1)
            if nxt is None:
                torn = final
                break
            pos = nxt  # a torn frame with whole frames after it: skip it
            continue
        payload = mv[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        next_seq = seq + 1
        d = orjson.loads(payload)
        ended = ended or d["k"] == "end"
        if want:
            out.append(Record(seq, ts, d["w"], d["k"], d["d"]))
    return Scan(out, base + pos, next_seq, torn, ended)


def _resync(mv: memoryview, start: int) -> int | None:
    """The offset of the next frame with a valid checksum after ``start``, if any."""
    data = bytes(mv)
    pos = data.find(MAGIC, start)
    while pos != -1:
        if len(data) - pos >= HEADER:
            length, _seq, _ts, crc = _HEAD.unpack_from(data, pos + 4)
            if length <= MAX_PAYLOAD and len(data) - pos - HEADER >= length:
                body = data[pos + 4:pos + 4 + _SIGNED] + data[pos + HEADER:pos + HEADER + length]
                if zlib.crc32(body) == crc:
                    return pos
        pos = data.find(MAGIC, pos + 1)
    return None
