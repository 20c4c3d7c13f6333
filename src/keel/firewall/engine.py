"""The two detection layers behind one call: signatures first, then the semantic layer.

``check`` takes only the texts to judge (user turns, tool results; see
:mod:`keel.firewall.extract`) and a predicate naming rules that are allow-listed for the
caller: an allow-listed rule is skipped and the *next* matching rule still blocks, so an
allow-list entry never waives other attacks in the same request.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from keel.config import FirewallSettings
from keel.firewall.framing import benign_framing
from keel.firewall.normalize import scan_variants
from keel.firewall.rules import Rule, RuleSet
from keel.firewall.semantic import AttackCorpus, SemanticLayer
from keel.firewall.signatures import SignatureMatcher
from keel.firewall.verdict import Verdict
from keel.gateway.embedding_memo import EmbeddingMemo
from keel.ports.embedder import Embedder

RuleFilter = Callable[[str], bool]
SEMANTIC_RULE = "semantic"  # allow-listing this id waives the semantic layer for a tenant


def _never(_rule: str) -> bool:
    return False


@functools.lru_cache(maxsize=8)
def compiled_matcher(rules: tuple[Rule, ...], cache_dir: Path | None = None
                     ) -> SignatureMatcher:
    """Compiling the hyperscan database takes ~1 s: do it once per rule set and process
    (and once per machine with ``cache_dir``)."""
    return SignatureMatcher(rules, cache_dir=cache_dir)


class Firewall:
    def __init__(self, settings: FirewallSettings, matcher: SignatureMatcher,
                 semantic: SemanticLayer | None) -> None:
        self.settings = settings
        self.matcher = matcher
        self.semantic = semantic
        # Python patterns for the framing check, compiled on a rule's first hit
        self._patterns: dict[int, re.Pattern[str]] = {}
        # Semantic verdicts by text hash: retries and repeated prompts skip the embedding.
        self._seen: OrderedDict[bytes, Verdict | None] = OrderedDict()
        self._seen_max = 4096

    @classmethod
    def build(cls, settings: FirewallSettings, embedder: Embedder | None, *,
              cache_dir: Path | None = None) -> Firewall:
        """``cache_dir``: where compiled rule sets are kept between processes."""
        rules = [r for spec in settings.rules for r in RuleSet.load(spec).rules]
        semantic = None
        if settings.semantic and embedder is not None:
            semantic = SemanticLayer(embedder, AttackCorpus.default(),
                                     threshold=settings.semantic_threshold,
                                     chunk_chars=settings.semantic_chunk_chars)
        return cls(settings, compiled_matcher(tuple(rules), cache_dir), semantic)

    def _pattern(self, index: int) -> re.Pattern[str]:
        pat = self._patterns.get(index)
        if pat is None:
            pat = re.compile(self.matcher.rules[index].pattern, re.IGNORECASE)
            self._patterns[index] = pat
        return pat

    def check_signatures(self, texts: list[str], skip: RuleFilter = _never) -> Verdict | None:
        """The first rule (in rule order) that matches one of ``texts`` as an attack: not
        allow-listed (``skip``) and not benignly framed (quoted, negated, asked about)."""
        best: tuple[int, Rule] | None = None
        for text in texts:
            for variant in scan_variants(text):
                for index in self.matcher.hits(variant):
                    if best is not None and index >= best[0]:
                        break
                    rule = self.matcher.rules[index]
                    if skip(rule.id) or benign_framing(self._pattern(index), variant,
                                                         rule.category, rule.id):
                        continue
                    best = (index, rule)
                    break
        if best is None:
            return None
        rule = best[1]
        return Verdict("signature", rule.id, rule.category, 1.0, rule.description)

    async def check_semantic(self, texts: list[str], skip: RuleFilter = _never,
                             memo: EmbeddingMemo | None = None) -> Verdict | None:
        if self.semantic is None or not texts or skip(SEMANTIC_RULE):
            return None
        # lone surrogates (possible in tool results) would trip the tokenizer: replace them
        raw = "\n".join(texts).encode("utf-8", "replace")
        text = raw.decode("utf-8")
        key = hashlib.blake2b(raw, digest_size=16).digest()
        if key in self._seen:
            self._seen.move_to_end(key)
            verdict = self._seen[key]
        else:
            verdict = await self.semantic.check(text, memo)
            self._seen[key] = verdict
            if len(self._seen) > self._seen_max:
                self._seen.popitem(last=False)
        if verdict is None or skip(verdict.rule) or skip(verdict.sample):
            return None
        return verdict

    async def check(self, texts: list[str], skip: RuleFilter = _never,
                    memo: EmbeddingMemo | None = None) -> Verdict | None:
        """Judge ``texts`` (user turns, tool results): signatures, then the semantic layer
        (its embedding through the request's ``memo`` when given)."""
        verdict = self.check_signatures(texts, skip)
        if verdict is None:
            verdict = await self.check_semantic(texts, skip, memo)
        return verdict
