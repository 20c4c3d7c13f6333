"""The two detection layers behind one call: signatures first, then the semantic layer."""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict

from keel.config import FirewallSettings
from keel.firewall.normalize import scan_variants
from keel.firewall.rules import Rule, RuleSet
from keel.firewall.semantic import AttackCorpus, SemanticLayer
from keel.firewall.signatures import SignatureMatcher
from keel.firewall.verdict import Verdict
from keel.ports.embedder import Embedder


@functools.lru_cache(maxsize=8)
def compiled_matcher(rules: tuple[Rule, ...]) -> SignatureMatcher:
    """Compiling the hyperscan database takes ~1 s: do it once per rule set and process."""
    return SignatureMatcher(rules)


class Firewall:
    def __init__(self, settings: FirewallSettings, matcher: SignatureMatcher,
                 semantic: SemanticLayer | None) -> None:
        self.settings = settings
        self.matcher = matcher
        self.semantic = semantic
        # Semantic verdicts by text hash: retries and repeated prompts skip the embedding.
        self._seen: OrderedDict[bytes, Verdict | None] = OrderedDict()
        self._seen_max = 4096

    @classmethod
    def build(cls, settings: FirewallSettings, embedder: Embedder | None) -> Firewall:
        rules = [r for spec in settings.rules for r in RuleSet.load(spec).rules]
        semantic = None
        if settings.semantic and embedder is not None:
            semantic = SemanticLayer(embedder, AttackCorpus.default(),
                                     threshold=settings.semantic_threshold,
                                     chunk_chars=settings.semantic_chunk_chars)
        return cls(settings, compiled_matcher(tuple(rules)), semantic)

    def check_signatures(self, texts: list[str]) -> Verdict | None:
        variants = [v for t in texts for v in scan_variants(t)]
        rule = self.matcher.match(variants)
        if rule is None:
            return None
        return Verdict("signature", rule.id, rule.category, 1.0, rule.description)

    async def check(self, texts: list[str], user_texts: list[str]) -> Verdict | None:
        verdict = self.check_signatures(texts)
        if verdict is None and self.semantic is not None and user_texts:
            text = "\n".join(user_texts)
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()
            if key in self._seen:
                self._seen.move_to_end(key)
                return self._seen[key]
            verdict = await self.semantic.check(text)
            self._seen[key] = verdict
            if len(self._seen) > self._seen_max:
                self._seen.popitem(last=False)
        return verdict
