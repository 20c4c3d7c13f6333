"""What a firewall layer decided about one request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Layer = Literal["signature", "semantic", "ban"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A block. ``rule`` is a rule id (signature), the closest known attack id (semantic) or
    the ban key (ban); never the regex itself."""

    layer: Layer
    rule: str
    category: str
    score: float = 1.0
    detail: str = ""
