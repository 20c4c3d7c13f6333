"""What a firewall layer decided about one request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Layer = Literal["signature", "semantic", "ban"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A block. ``rule`` is a rule id (signature), ``semantic:<category>`` of the closest
    known attack (semantic) or the ban key (ban); never the regex itself. It is a metric
    label, so it comes from a small fixed set. ``sample`` is the id of the closest known
    attack (semantic only): for the 403's detail and the operator, never a label."""

    layer: Layer
    rule: str
    category: str
    score: float = 1.0
    detail: str = ""
    sample: str = ""
