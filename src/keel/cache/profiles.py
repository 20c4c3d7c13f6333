"""Operating profiles: how eagerly a namespace serves paraphrases.

* ``strict``: cosine >= 0.95 and the strict verifier (every content word must match, modulo
  stems and a short synonym list). Almost an exact cache; the choice for open-domain traffic
  where a near-duplicate is often a different question.
* ``balanced`` (the default): cosine >= 0.78 and the contradiction verifier (numbers,
  negation, opposites, entities, direction, deixis; differing words compared by embedding).
  Serves everyday rewordings of support questions.

A namespace may also set its own ``threshold`` with either profile. The thresholds are for the
default embedder (all-MiniLM-L6-v2); another embedder needs its own (``keel cache eval``).
"""

from __future__ import annotations

from keel.cache.contradiction import ContradictionVerifier
from keel.cache.settings import Profile
from keel.cache.verifier import HitVerifier, Verifier


def make_verifier(profile: Profile) -> Verifier:
    return HitVerifier() if profile == "strict" else ContradictionVerifier()
