"""Questions about the asker's own data: "Where is my order?", "What's my balance?".

Their answer depends on who asks (an app with tools, RAG or account context answers them
per user), so a shared cache must not hand one end user's answer to another. How-to
questions that merely mention "my" ("How do I change my password?", "Can I export my
data?") ask the same thing for everyone and stay cacheable.
"""

from __future__ import annotations

import re

_MINE = re.compile(r"\b(?:my|our|mine|ours)\b", re.IGNORECASE)
# frames that ask how to do something, or whether one may: the same answer for everyone
_HOW_TO = re.compile(
    r"^\W*(?:please\W+)?(?:"
    r"how\s+(?:do|can|could|should|would|may)\s+(?:i|we)\b|how\s+to\b|how\s+does\s+one\b"
    r"|(?:where|when)\s+(?:can|do|should)\s+(?:i|we)\b"
    r"|(?:can|could|may|should|must)\s+(?:i|we)\b"
    r"|is\s+(?:it|there)\s+(?:possible|a\s+way|any\s+way)\b"
    r"|(?:what|which)\s+(?:should|do|can)\s+(?:i|we)\b"
    r"|do\s+(?:i|we)\s+(?:need|have)\s+to\b"
    r"|(?:i\s+want|i'd\s+like|i\s+would\s+like|i\s+need)\s+to\b)",
    re.IGNORECASE)


def asks_about_own_data(text: str) -> bool:
    """Whether ``text`` asks for the asker's own data rather than how to do something."""
    return bool(_MINE.search(text)) and _HOW_TO.search(text) is None
