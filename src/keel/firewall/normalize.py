"""Text normalisation before signature matching, so trivial obfuscation does not walk past.

:func:`normalize` produces the copy the rules are written against: Unicode NFKC (full-width
letters fold to ASCII), zero-width / bidi / other invisible format characters removed,
Unicode "tag" characters (invisible ASCII smuggling) turned back into ASCII, a few Cyrillic
and Greek look-alikes folded to Latin, whitespace collapsed, lowercased, and leetspeak folded
*inside words that mix letters and digits* ("ign0re" -> "ignore", "pr3v10us" -> "previous"),
so ordinary numbers ("1990", "gpt-4", "h264") stay as they are.

:func:`scan_variants` adds normalised decodings of base64 and hex segments found in the raw
text. Work is bounded: at most :data:`MAX_SEGMENTS` segments of at most
:data:`MAX_SEGMENT_CHARS` characters each are decoded, and only decodings that are mostly
printable text are kept.

The original text is never changed; callers forward it untouched.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

MAX_SEGMENTS = 8
MAX_SEGMENT_CHARS = 8192
MIN_B64_CHARS = 20
MIN_HEX_BYTES = 10
PRINTABLE_RATIO = 0.85

# Zero-width, bidi controls, soft hyphen, invisible operators, variation selectors.
_INVISIBLE = [
    0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0,
    *range(0x200B, 0x2010),  # ZWSP, ZWNJ, ZWJ, LRM, RLM
    *range(0x202A, 0x202F),  # LRE, RLE, PDF, LRO, RLO
    *range(0x2060, 0x2070),  # word joiner, invisible times/separator/plus, LRI..PDI
    *range(0xFE00, 0xFE10),  # variation selectors
]
# Cyrillic and Greek letters that look like Latin ones
_CONFUSABLES = {
    "\u0430": "a", "\u0432": "b", "\u0435": "e", "\u043a": "k", "\u043c": "m", "\u043d": "h",
    "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0442": "t", "\u0443": "y", "\u0445": "x",
    "\u0456": "i", "\u0458": "j", "\u0455": "s", "\u0501": "d", "\u0410": "a", "\u0412": "b",
    "\u0415": "e", "\u041a": "k", "\u041c": "m", "\u041d": "h", "\u041e": "o", "\u0420": "p",
    "\u0421": "c", "\u0422": "t", "\u0425": "x", "\u0406": "i", "\u0408": "j", "\u0405": "s",
    "\u03b1": "a", "\u03b5": "e", "\u03b9": "i", "\u03ba": "k", "\u03bd": "v", "\u03bf": "o",
    "\u03c1": "p", "\u03c4": "t", "\u03c5": "u", "\u0391": "a", "\u0392": "b", "\u0395": "e",
    "\u0399": "i", "\u039a": "k", "\u039c": "m", "\u039d": "n", "\u039f": "o", "\u03a1": "p",
    "\u03a4": "t", "\u03a7": "x", "\u03a5": "y", "\u0396": "z", "\u0397": "h",
}


def _build_table() -> dict[int, str | None]:
    table: dict[int, str | None] = dict.fromkeys(_INVISIBLE)
    for src, dst in _CONFUSABLES.items():
        table[ord(src)] = dst
    for code in range(0xE0020, 0xE007F):  # tag characters -> the ASCII they hide
        table[code] = chr(code - 0xE0000)
    table[0xE0001] = None
    table[0xE007F] = None
    return table


_TABLE = _build_table()
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t",
                       "8": "b", "@": "a", "$": "s"})
_LEET_CHAR = re.compile(r"[0134578@$]")
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@$")
# base64 (standard or url-safe) and plain hex runs share this character class
_B64 = re.compile(r"[A-Za-z0-9+/_-]{" + str(MIN_B64_CHARS) + r",}={0,2}")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_ESCAPED_HEX = re.compile(r"(?:\\x[0-9a-fA-F]{2}){" + str(MIN_HEX_BYTES) + ",}")


def _fold_word(word: str) -> str:
    letters = sum(c.isalpha() for c in word)
    # "h264" (1 letter, 3 digits) and "2023" stay; "1gn0r3" and "pr3v10us" fold
    return word.translate(_LEET) if letters and letters >= len(word) - letters else word


def fold_leet(text: str) -> str:
    """Fold leetspeak in words that mix letters and leet characters (lowercase input)."""
    m = _LEET_CHAR.search(text)
    if m is None:  # the common case: one fast scan
        return text
    parts: list[str] = []
    pos = 0
    n = len(text)
    while m is not None:
        start = m.start()
        if start < pos:
            m = _LEET_CHAR.search(text, pos)
            continue
        end = start + 1
        while start > pos and text[start - 1] in _WORD_CHARS:
            start -= 1
        while end < n and text[end] in _WORD_CHARS:
            end += 1
        parts.append(text[pos:start])
        parts.append(_fold_word(text[start:end]))
        pos = end
        m = _LEET_CHAR.search(text, pos)
    parts.append(text[pos:])
    return "".join(parts)


def clean(text: str) -> str:
    """NFKC, invisible characters removed, look-alikes folded, whitespace collapsed,
    lowercased. No leetspeak folding (base64 detection must see the original case)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text).translate(_TABLE)
    return " ".join(text.split())


def normalize(text: str) -> str:
    """The copy of ``text`` that signature rules are matched against."""
    lowered = clean(text).lower()
    return fold_leet(lowered)


def _printable(decoded: bytes) -> str | None:
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    ok = sum(c.isprintable() or c in "\n\r\t" for c in text)
    letters = sum(c.isalpha() for c in text)
    if ok / len(text) < PRINTABLE_RATIO or letters < len(text) / 3:
        return None
    return text


def _decode_b64(segment: str) -> str | None:
    seg = segment.rstrip("=")
    seg += "=" * (-len(seg) % 4)
    try:
        if "-" in seg or "_" in seg:
            raw = base64.urlsafe_b64decode(seg)
        else:
            raw = base64.b64decode(seg, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable(raw)


def _decode_hex(segment: str) -> str | None:
    digits = segment.replace("\\x", "")
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return _printable(raw)


def decoded_segments(text: str) -> list[str]:
    """Printable decodings of base64 and hex segments in ``text`` (bounded work)."""
    out: list[str] = []
    segments = [m.group(0) for m in _B64.finditer(text)]
    if "\\x" in text:
        segments += [m.group(0) for m in _ESCAPED_HEX.finditer(text)]
    budget = MAX_SEGMENTS
    for segment in segments:
        # a long plain word or a number is no encoding; cheap rejections first
        if segment.isalpha() or segment.isdigit():
            continue
        if budget <= 0:
            break
        budget -= 1
        segment = segment[:MAX_SEGMENT_CHARS]
        if segment.startswith("\\x") or set(segment) <= _HEX_DIGITS:
            decoded = _decode_hex(segment) if len(segment) >= 2 * MIN_HEX_BYTES else None
        else:
            decoded = _decode_b64(segment)
        if decoded is not None:
            out.append(decoded)
    return out


def scan_variants(text: str) -> list[str]:
    """The normalised text plus the normalised decodings of base64 / hex segments in it."""
    cleaned = clean(text)
    variants = [fold_leet(cleaned.lower())]
    if len(cleaned) >= MIN_B64_CHARS:
        for decoded in decoded_segments(cleaned):
            variants.append(normalize(decoded))
    return variants
