"""Research (issue 4): a learned second-stage scorer for semantic-cache hits from token-level
alignment features (BERTScore-style) taken from the same MiniLM forward pass.

Not part of keel; nothing here is imported by src/ or tests/.

    .venv/bin/python bench/experiments/cache_second_stage.py [--json OUT]

What it does:

1. Builds keel's MiniLM ONNX graph in memory (``keel.providers.embeddings.build_graph``) and
   adds a second graph output, the last encoder layer's hidden state per word piece
   (``l5.ln2``, [batch, seq, 384]); runs it with ``threads=1``.
2. Per text: word pieces merged into words (mean of pieces), L2-normalised; [CLS]/[SEP],
   punctuation and the verifier's stop words dropped ("content words").
3. Per pair (cached = text_a, query = text_b): sentence cosine; BERTScore P/R/F1 (greedy max
   cosine), plain and idf-weighted (idf from the training fold's texts only); min and 2nd-min
   best-match similarity per side; counts of words with best-match < 0.5/0.6/0.7 per side;
   idf mass of unmatched words; exact content-word overlap; HitVerifier reason (one-hot).
4. Models: L2 logistic regression (IRLS) and gradient-boosted depth-2 trees, numpy only.
   Honest 2-fold cross-fitting: QQP pairs are grouped by connected components over their
   texts (so no question text is in both folds), fold = sha1(min pair id in the group) % 2;
   only out-of-fold scores are reported.
5. Transfer: the same models trained only on gptcache_mock_pairs.jsonl positives + generated
   negatives (shuffled, nearest-neighbour, content-word swap, number change, negation flip),
   scored on all QQP pairs.
6. Cost: batch-1 forward time (threads=1) with and without the token-state output, feature
   time per pair, bytes per cache entry if token states were stored in fp16.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # noqa: F401  (first, on the main thread)

from keel.cache.verifier import _STOP, HitVerifier
from keel.providers.embeddings import (
    DIM,
    MAX_TOKENS,
    build_graph,
    load_tokenizer,
    load_weights,
    model_dir,
    open_session,
    pad_batch,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "datasets" / "semantic_cache"
STATE_OUT = "l5.ln2"  # last encoder layer (after its output LayerNorm); --layer changes it
# recall points of bench/results/cache_eval.json, as true-hit counts out of 1,566 duplicates:
# keel cos>=0.95+verifier 181 (0.1156), keel cos>=0.95 350 (0.2235),
# redisvl 668 (0.4266, P 0.786), GPTCache 1556 (0.9936, P 0.544)
RECALLS = {"0.116": 181, "0.224": 350, "0.427": 668, "0.994": 1556}
THRESH = (0.5, 0.6, 0.7)
_PUNCT = re.compile(r"^[^0-9a-z]+$")


# -- data ---------------------------------------------------------------------------------


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def group_folds(rows: list[dict[str, Any]], salt: int = 0) -> np.ndarray:
    """Fold 0/1 per pair; pairs sharing a (normalised) question text share a fold."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        for t in (r["text_a"], r["text_b"]):
            key = " ".join(t.lower().split())
            if key in seen:
                parent[find(i)] = find(seen[key])
            else:
                seen[key] = i
    groups: dict[int, int] = {}
    for i, r in enumerate(rows):
        g = find(i)
        groups[g] = min(groups.get(g, r["id"]), r["id"])
    tag = "" if salt == 0 else f"{salt}:"
    return np.array([int(hashlib.sha1(f"{tag}{groups[find(i)]}".encode()).hexdigest(), 16) % 2
                     for i in range(len(rows))])


# -- the encoder with token states --------------------------------------------------------


def build_session(with_states: bool, threads: int = 1) -> Any:
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(build_graph(load_weights(model_dir())))
    if with_states:
        model.graph.output.append(helper.make_tensor_value_info(
            STATE_OUT, TensorProto.FLOAT, ["batch", "seq", DIM]))
    return open_session(model.SerializeToString(), threads=threads)


class Encoded:
    """Sentence embedding + content-word vectors (unit length) for one text."""

    __slots__ = ("content", "emb", "n_pieces", "vecs", "words")

    def __init__(self, emb: np.ndarray, words: list[str], vecs: np.ndarray,
                 content: np.ndarray, n_pieces: int) -> None:
        self.emb, self.words, self.vecs, self.content, self.n_pieces = (
            emb, words, vecs, content, n_pieces)


def encode(texts: list[str], session: Any, batch: int = 64) -> dict[str, Encoded]:
    tok = load_tokenizer(model_dir())
    encs = tok.encode_batch(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encs[i].ids))
    out: dict[str, Encoded] = {}
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        rows = []
        for i in idx:
            ids = encs[i].ids
            rows.append(ids if len(ids) <= MAX_TOKENS else [*ids[:MAX_TOKENS - 1], 102])
        ids, mask = pad_batch(rows)
        emb, states = session.run(["embedding", STATE_OUT],
                                  {"input_ids": ids, "attention_mask": mask})
        for j, i in enumerate(idx):
            e = encs[i]
            n = len(rows[j])
            words: list[str] = []
            sums: list[np.ndarray] = []
            counts: list[int] = []
            cur = None
            real = n if len(e.ids) <= MAX_TOKENS else n - 1  # truncated: last is [SEP]
            for p in range(real):
                wid = e.word_ids[p] if p < len(e.word_ids) else None
                if wid is None:  # [CLS], [SEP]
                    cur = None
                    continue
                piece = e.tokens[p]
                if wid != cur:
                    words.append(piece)
                    sums.append(states[j, p].astype(np.float32).copy())
                    counts.append(1)
                    cur = wid
                else:
                    words[-1] += piece[2:] if piece.startswith("##") else piece
                    sums[-1] += states[j, p]
                    counts[-1] += 1
            v = (np.array([a / c for a, c in zip(sums, counts, strict=True)], dtype=np.float32)
                 if sums
                 else np.zeros((0, DIM), np.float32))
            if len(v):
                v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-9
            content = np.array([not _PUNCT.match(w) and w not in _STOP for w in words],
                               dtype=bool)
            keep = np.array([not _PUNCT.match(w) for w in words], dtype=bool)
            words = [w for w, k in zip(words, keep, strict=True) if k]
            v = v[keep] if len(v) else v
            content = content[keep] if len(content) else content
            out[texts[i]] = Encoded(emb[j].copy(), words, v, content, n)
    return out


# -- features -----------------------------------------------------------------------------

REASONS = ["ok", "numbers", "negation", "person", "context", "intent", "entity", "antonym",
           "direction", "modifiers", "content"]


def reason_class(reason: str | None) -> str:
    if reason is None:
        return "ok"
    for key, name in (("numbers", "numbers"), ("negation", "negation"), ("person", "person"),
                      ("context", "context"), ("intent", "intent"), ("entity", "entity"),
                      ("antonym", "antonym"), ("direction", "direction"),
                      ("modifiers", "modifiers"), ("content", "content")):
        if reason.startswith(key) or key in reason.split(":")[0]:
            return name
    return "content"


def idf_table(texts: list[str], enc: dict[str, Encoded]) -> tuple[dict[str, float], float]:
    df: dict[str, int] = {}
    for t in set(texts):
        for w in set(enc[t].words):
            df[w] = df.get(w, 0) + 1
    n = len(set(texts))
    table = {w: float(np.log((n + 1) / (c + 1))) for w, c in df.items()}
    return table, float(np.log(n + 1))  # unseen words get the max idf


def _side(best: np.ndarray, w: np.ndarray, idf_unk: float) -> list[float]:
    if len(best) == 0:
        return [1.0, 1.0, 1.0, 1.0, 0, 0, 0, 0.0, 0.0]
    s = np.sort(best)
    mn, mn2 = float(s[0]), float(s[1] if len(s) > 1 else s[0])
    plain = float(best.mean())
    weighted = float((best * w).sum() / (w.sum() + 1e-9))
    counts = [int((best < t).sum()) for t in THRESH]
    unmatched_idf = float(w[best < 0.6].sum()) / idf_unk
    # idf-weighted "worst word": lowest best-match, with rarer words pushed down
    worst_w = float((best - 0.1 * w / idf_unk).min())
    return [plain, weighted, mn, mn2, *counts, unmatched_idf, worst_w]


FEATURE_NAMES = (["cos"]
                 + [f"{s}_{k}" for s in ("q", "c") for k in
                    ("bs", "bs_idf", "min", "min2", "n<.5", "n<.6", "n<.7", "unm_idf", "worst_w")]
                 + ["F1", "F1_idf", "min_both", "min2_both", "jacc", "n_content_q",
                    "n_content_c", "len_diff"]
                 + [f"ver_{r}" for r in REASONS])
SMALL = ["cos", "F1_idf", "min_both", "min2_both", "q_unm_idf", "c_unm_idf"]
LEXICAL_ONLY = ["cos"] + [f"ver_{r}" for r in REASONS] + ["jacc", "n_content_q", "n_content_c",
                                                          "len_diff"]


def pair_features(a: Encoded, b: Encoded, idf: dict[str, float], idf_unk: float,
                  reason: str | None) -> list[float]:
    """a = cached text, b = new query."""
    def pick(e: Encoded) -> tuple[np.ndarray, list[str]]:
        m = e.content if e.content.any() else np.ones(len(e.words), bool)
        return e.vecs[m], [w for w, k in zip(e.words, m, strict=True) if k]

    va, wa = pick(a)
    vb, wb = pick(b)
    cos = float(a.emb @ b.emb)
    if len(va) and len(vb):
        sim = va @ vb.T
        best_a, best_b = sim.max(1), sim.max(0)
    else:
        best_a, best_b = np.ones(len(va)), np.ones(len(vb))
    ia = np.array([idf.get(w, idf_unk) for w in wa])
    ib = np.array([idf.get(w, idf_unk) for w in wb])
    q = _side(best_b, ib, idf_unk)  # query words matched in the cached text ("precision")
    c = _side(best_a, ia, idf_unk)  # cached words matched in the query ("recall")
    f1 = 2 * q[0] * c[0] / (q[0] + c[0] + 1e-9)
    f1i = 2 * q[1] * c[1] / (q[1] + c[1] + 1e-9)
    sa, sb = set(wa), set(wb)
    jacc = len(sa & sb) / max(1, len(sa | sb))
    onehot = [float(reason_class(reason) == r) for r in REASONS]
    return [cos, *q, *c, f1, f1i, min(q[2], c[2]), min(q[3], c[3]), jacc, len(wb), len(wa),
            abs(len(wa) - len(wb)), *onehot]


def feature_matrix(pairs: list[tuple[str, str]], enc: dict[str, Encoded],
                   idf: dict[str, float], idf_unk: float, reasons: list[str | None]
                   ) -> np.ndarray:
    return np.array([pair_features(enc[a], enc[b], idf, idf_unk, r)
                     for (a, b), r in zip(pairs, reasons, strict=True)], dtype=np.float64)


# -- models (numpy only) --------------------------------------------------------------------


class Logistic:
    def __init__(self, l2: float = 1.0) -> None:
        self.l2 = l2

    def fit(self, x: np.ndarray, y: np.ndarray) -> Logistic:
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-9
        z = np.hstack([np.ones((len(x), 1)), (x - self.mu) / self.sd])
        w = np.zeros(z.shape[1])
        reg = np.full(z.shape[1], self.l2)
        reg[0] = 0.0
        for _ in range(50):
            p = 1 / (1 + np.exp(-z @ w))
            g = z.T @ (p - y) + reg * w
            h = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg + 1e-6)
            step = np.linalg.solve(h, g)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        self.w = w
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        z = np.hstack([np.ones((len(x), 1)), (x - self.mu) / self.sd])
        return z @ self.w


class Boosted:
    """Gradient-boosted depth-2 trees on 32 quantile bins, logistic loss."""

    def __init__(self, rounds: int = 200, lr: float = 0.05, depth: int = 2,
                 min_leaf: int = 20, lam: float = 1.0, bins: int = 32) -> None:
        self.rounds, self.lr, self.depth = rounds, lr, depth
        self.min_leaf, self.lam, self.bins = min_leaf, lam, bins

    def _bin(self, x: np.ndarray) -> np.ndarray:
        return np.stack([np.searchsorted(self.edges[j], x[:, j], side="right")
                         for j in range(x.shape[1])], axis=1)

    def fit(self, x: np.ndarray, y: np.ndarray) -> Boosted:
        qs = np.linspace(0, 1, self.bins + 1)[1:-1]
        self.edges = [np.unique(np.quantile(x[:, j], qs)) for j in range(x.shape[1])]
        xb = self._bin(x)
        self.base = float(np.log((y.mean() + 1e-6) / (1 - y.mean() + 1e-6)))
        f = np.full(len(y), self.base)
        self.trees: list[Any] = []
        for _ in range(self.rounds):
            p = 1 / (1 + np.exp(-f))
            g, h = p - y, p * (1 - p)
            tree = self._grow(xb, g, h, np.arange(len(y)), self.depth)
            f += self.lr * self._apply(tree, xb)
            self.trees.append(tree)
        return self

    def _grow(self, xb: np.ndarray, g: np.ndarray, h: np.ndarray, idx: np.ndarray,
              depth: int) -> Any:
        G, H = g[idx].sum(), h[idx].sum()
        leaf = ("leaf", -G / (H + self.lam))
        if depth == 0 or len(idx) < 2 * self.min_leaf:
            return leaf
        best = (0.0, -1, -1)
        parent = G * G / (H + self.lam)
        nb = self.bins + 1
        for j in range(xb.shape[1]):
            col = xb[idx, j]
            gs = np.bincount(col, g[idx], nb).cumsum()
            hs = np.bincount(col, h[idx], nb).cumsum()
            cs = np.bincount(col, None, nb).cumsum()
            ok = (cs >= self.min_leaf) & (len(idx) - cs >= self.min_leaf)
            gain = gs**2 / (hs + self.lam) + (G - gs) ** 2 / (H - hs + self.lam) - parent
            gain[~ok] = -1
            k = int(gain.argmax())
            if gain[k] > best[0]:
                best = (float(gain[k]), j, k)
        if best[1] < 0:
            return leaf
        _, j, k = best
        left = idx[xb[idx, j] <= k]
        right = idx[xb[idx, j] > k]
        return ("split", j, k, self._grow(xb, g, h, left, depth - 1),
                self._grow(xb, g, h, right, depth - 1))

    def _apply(self, tree: Any, xb: np.ndarray) -> np.ndarray:
        if tree[0] == "leaf":
            return np.full(len(xb), tree[1])
        _, j, k, lt, rt = tree
        go_left = xb[:, j] <= k
        out = np.empty(len(xb))
        out[go_left] = self._apply(lt, xb[go_left])
        out[~go_left] = self._apply(rt, xb[~go_left])
        return out

    def score(self, x: np.ndarray) -> np.ndarray:
        xb = self._bin(x)
        f = np.full(len(x), self.base)
        for t in self.trees:
            f += self.lr * self._apply(t, xb)
        return f


# -- metrics ------------------------------------------------------------------------------


def curve(score: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                     np.ndarray]:
    """(precision, recall, tp, fp) at every distinct threshold (score >= t), finite scores."""
    ok = np.isfinite(score)
    s, yy = score[ok], y[ok]
    order = np.argsort(-s, kind="stable")
    s, yy = s[order], yy[order]
    tp, fp = np.cumsum(yy), np.cumsum(1 - yy)
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = tp[last], fp[last]
    return tp / (tp + fp), tp / y.sum(), tp, fp


def pr_report(score: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    p, r, tp, fp = curve(score, y)
    out: dict[str, Any] = {}
    for label, need in RECALLS.items():
        m = tp >= need
        if not m.any():
            out[f"P@R{label}"] = None
            continue
        k = int(np.flatnonzero(m)[np.argmax(p[m])])
        out[f"P@R{label}"] = [round(float(p[k]), 3), int(tp[k]), int(fp[k])]
    out["all_in_gate"] = [round(float(p[-1]), 3), int(tp[-1]), int(fp[-1])] if len(p) else None
    for pmin in (0.97, 0.95):
        m = p >= pmin
        if m.any():
            k = int(np.flatnonzero(m)[np.argmax(r[m])])
            out[f"R@P{pmin}"] = [round(float(r[k]), 3), int(tp[k]), int(fp[k])]
        else:
            out[f"R@P{pmin}"] = [0.0, 0, 0]
    # average precision (area under the step curve)
    out["AP"] = round(float(np.sum(np.diff(np.r_[0, r]) * p)), 3)
    return out


# -- synthetic training data ----------------------------------------------------------------

_AUX = re.compile(r"\b(is|are|can|does|do|will|should|was|were|has|have)\b", re.IGNORECASE)
_NUM = re.compile(r"\b\d+(?:\.\d+)?\b")


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z][A-Za-z\-]{3,}", text) if w.lower() not in _STOP]


def synthetic(rows: list[dict[str, Any]], enc_emb: dict[str, np.ndarray] | None,
              seed: int = 0) -> list[tuple[str, str, int, str]]:
    """(cached, query, label, kind) from mock positives + generated negatives."""
    rnd = random.Random(seed)
    vocab = sorted({w.lower() for r in rows for w in content_words(r["text_a"] + " "
                                                                    + r["text_b"])})
    out: list[tuple[str, str, int, str]] = []
    n = len(rows)
    perm = list(range(n))
    rnd.shuffle(perm)
    for i, r in enumerate(rows):
        a, b = r["text_a"], r["text_b"]
        out.append((a, b, 1, "pos"))
        j = perm[i] if perm[i] != i else (i + 1) % n
        out.append((a, rows[j]["text_b"], 0, "shuffled"))
        for src, kind in ((b, "swap_para"), (a, "swap_self")):
            cw = content_words(src)
            if cw:
                w = rnd.choice(cw)
                new = rnd.choice(vocab)
                while new == w.lower():
                    new = rnd.choice(vocab)
                out.append((a, re.sub(rf"\b{re.escape(w)}\b", new, src, count=1), 0, kind))
        nums = _NUM.findall(b)
        if nums:
            x = rnd.choice(nums)
            y = str(int(float(x)) + rnd.choice([1, 2, 5, 10, 100]))
            out.append((a, re.sub(rf"\b{re.escape(x)}\b", y, b, count=1), 0, "number"))
        if re.search(r"\bnot\b", b):
            out.append((a, re.sub(r"\bnot\s+", "", b, count=1), 0, "negation"))
        elif _AUX.search(b):
            out.append((a, _AUX.sub(lambda m: m.group(0) + " not", b, count=1), 0, "negation"))
    if enc_emb is not None:  # nearest other paraphrase: hard topical negatives
        ea = np.stack([enc_emb[r["text_a"]] for r in rows])
        eb = np.stack([enc_emb[r["text_b"]] for r in rows])
        s = ea @ eb.T
        np.fill_diagonal(s, -1)
        for i, r in enumerate(rows):
            j = int(s[i].argmax())
            if rows[j]["text_b"] != r["text_b"]:
                out.append((r["text_a"], rows[j]["text_b"], 0, "nearest"))
    return out


# -- main -----------------------------------------------------------------------------------


def run_models(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray) -> dict[str, np.ndarray]:
    return {"logreg": Logistic(1.0).fit(xtr, ytr).score(xte),
            "gbm": Boosted().fit(xtr, ytr).score(xte)}


def timing(texts: list[str]) -> dict[str, Any]:
    tok = load_tokenizer(model_dir())
    plain, states = build_session(False), build_session(True)
    rows = [e.ids for e in tok.encode_batch(texts)]
    res: dict[str, Any] = {}
    for name, sess, outs in (("embedding only", plain, ["embedding"]),
                             ("embedding + token states", states, ["embedding", STATE_OUT]),
                             ("embedding only (again)", plain, ["embedding"])):
        for r in rows[:20]:
            ids, mask = pad_batch([r])
            sess.run(outs, {"input_ids": ids, "attention_mask": mask})
        ts = []
        for r in rows:
            ids, mask = pad_batch([r])
            t0 = time.perf_counter()
            sess.run(outs, {"input_ids": ids, "attention_mask": mask})
            ts.append(time.perf_counter() - t0)
        res[name] = {"median_ms": round(1000 * float(np.median(ts)), 2),
                     "mean_ms": round(1000 * float(np.mean(ts)), 2)}
    return res


def cross_fit(qqp: list[dict[str, Any]], pairs: list[tuple[str, str]], y: np.ndarray,
              enc: dict[str, Encoded], reasons: list[str | None], folds: np.ndarray
              ) -> dict[str, np.ndarray]:
    """Out-of-fold scores of every model variant (trained on one fold, scored on the other)."""
    lex_idx = [FEATURE_NAMES.index(n) for n in LEXICAL_ONLY]
    no_ver = [i for i, n in enumerate(FEATURE_NAMES) if not n.startswith("ver_")]
    oof: dict[str, np.ndarray] = {}
    for k in (0, 1):
        tr, te = folds != k, folds == k
        train_texts = [t for (a, b), m in zip(pairs, tr, strict=True) if m for t in (a, b)]
        idf, unk = idf_table(train_texts, enc)  # idf from the training fold only
        x = feature_matrix(pairs, enc, idf, unk, reasons)
        for tag, cols in (("align+lex ", list(range(len(FEATURE_NAMES)))),
                          ("cos+lex only ", lex_idx), ("align (no verifier) ", no_ver)):
            for name, s in run_models(x[tr][:, cols], y[tr], x[te][:, cols]).items():
                oof.setdefault(tag + name, np.zeros(len(y)))[te] = s
    return oof


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--timing-texts", type=int, default=300)
    ap.add_argument("--layer", type=int, default=5, help="encoder layer for token states (0-5)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="2-fold splits with different hash salts (the first is reported)")
    args = ap.parse_args()
    global STATE_OUT
    STATE_OUT = f"l{args.layer}.ln2"
    t_start = time.time()
    qqp = load_jsonl(DATA / "qqp_pairs.jsonl")
    mock = load_jsonl(DATA / "gptcache_mock_pairs.jsonl")
    y = np.array([r["label"] for r in qqp], dtype=np.float64)
    folds = group_folds(qqp)
    verifier = HitVerifier()
    # evaluate.verified: check(query=text_b, cached=text_a)
    reasons = [verifier.check(r["text_b"], r["text_a"]) for r in qqp]
    ver_ok = np.array([r is None for r in reasons])

    session = build_session(True, threads=1)
    t0 = time.time()
    qqp_texts = sorted({t for r in qqp for t in (r["text_a"], r["text_b"])})
    enc = encode(qqp_texts, session)
    mock_texts = sorted({t for r in mock for t in (r["text_a"], r["text_b"])})
    enc.update(encode(mock_texts, session))
    syn = synthetic(mock, {t: enc[t].emb for t in mock_texts})
    extra = sorted({t for a, b, _, _ in syn for t in (a, b)} - set(enc))
    enc.update(encode(extra, session))
    t_encode = time.time() - t0
    print(f"encoded {len(enc)} texts in {t_encode:.1f}s (threads=1)")

    pairs = [(r["text_a"], r["text_b"]) for r in qqp]
    cos = np.array([float(enc[a].emb @ enc[b].emb) for a, b in pairs])
    oof = cross_fit(qqp, pairs, y, enc, reasons, group_folds(qqp))
    repeats = [cross_fit(qqp, pairs, y, enc, reasons, group_folds(qqp, salt))
               for salt in range(1, args.repeats)]

    # transfer: train on synthetic only, score all QQP
    syn_pairs = [(a, b) for a, b, _, _ in syn]
    syn_y = np.array([lab for _, _, lab, _ in syn], dtype=np.float64)
    syn_reasons = [verifier.check(b, a) for a, b in syn_pairs]
    idf_s, unk_s = idf_table([t for p in syn_pairs for t in p], enc)
    xs = feature_matrix(syn_pairs, enc, idf_s, unk_s, syn_reasons)
    xq = feature_matrix(pairs, enc, idf_s, unk_s, reasons)
    transfer = {"synthetic " + k: v for k, v in run_models(xs, syn_y, xq).items()}
    small = [FEATURE_NAMES.index(n) for n in SMALL]
    transfer["synthetic logreg (small)"] = Logistic(1.0).fit(xs[:, small], syn_y).score(
        xq[:, small])
    syn_kinds: dict[str, int] = {}
    for *_, kind in syn:
        syn_kinds[kind] = syn_kinds.get(kind, 0) + 1

    results: dict[str, Any] = {
        "folds": {"sizes": [int((folds == k).sum()) for k in (0, 1)],
                  "pos_rate": [round(float(y[folds == k].mean()), 3) for k in (0, 1)]},
        "synthetic_pairs": syn_kinds,
        "curves": {},
        "gated": {},
    }
    scores = {"cosine": cos, **oof, **transfer}
    for name, s in scores.items():
        results["curves"][name] = pr_report(s, y)
    gates = {"cos>=0.95 & verifier": (cos >= 0.95) & ver_ok,
             "cos>=0.90 & verifier": (cos >= 0.90) & ver_ok,
             "cos>=0.80 & verifier": (cos >= 0.80) & ver_ok,
             "verifier only": ver_ok}
    for gname, gate in gates.items():
        for name, s in scores.items():
            results["gated"][f"{gname} & {name}>=t"] = pr_report(np.where(gate, s, -np.inf), y)

    keys = ("P@R0.116", "P@R0.224", "P@R0.427", "P@R0.994")
    rep: dict[str, Any] = {}
    for name in oof:
        vals = [pr_report(o[name], y) for o in [oof, *repeats]]
        rep[name] = {k: [round(float(np.mean([v[k][0] for v in vals])), 3),
                         round(float(np.std([v[k][0] for v in vals])), 3)] for k in keys}
        rep[name]["R@P0.97"] = [round(float(np.mean([v["R@P0.97"][0] for v in vals])), 3),
                                round(float(np.std([v["R@P0.97"][0] for v in vals])), 3)]
    results["repeated_splits_mean_sd"] = {"splits": 1 + len(repeats), **rep}
    gate = (cos >= 0.95) & ver_ok
    fh = np.flatnonzero(gate & (y == 0))
    best = "align+lex logreg"
    results["false_hits_at_default"] = [
        {"cached": qqp[i]["text_a"], "query": qqp[i]["text_b"], "cos": round(cos[i], 3),
         "above_in_gate": int((oof[best][gate] > oof[best][i]).sum()),
         "of": int(gate.sum())} for i in fh]

    # per-pair feature time and storage
    idf, unk = idf_table([t for p in pairs for t in p], enc)
    t0 = time.perf_counter()
    feature_matrix(pairs, enc, idf, unk, reasons)
    feat_ms = 1000 * (time.perf_counter() - t0) / len(pairs)
    t0 = time.perf_counter()
    for r in qqp:
        verifier.check(r["text_b"], r["text_a"])
    n_pieces = np.array([enc[t].n_pieces for t in qqp_texts])
    n_words = np.array([len(enc[t].words) for t in qqp_texts])
    n_content = np.array([int(enc[t].content.sum()) for t in qqp_texts])
    results["cost"] = {
        "forward_batch1_threads1": timing(qqp_texts[: args.timing_texts]),
        "features_ms_per_pair": round(feat_ms, 3),
        "bytes_per_entry_fp16": {
            "all word pieces incl. CLS/SEP": round(float(n_pieces.mean()) * DIM * 2),
            "merged words (no punct)": round(float(n_words.mean()) * DIM * 2),
            "content words only": round(float(n_content.mean()) * DIM * 2),
            "p95 word pieces": round(float(np.percentile(n_pieces, 95)) * DIM * 2),
            "sentence embedding fp32 (today)": DIM * 4,
        },
        "mean_word_pieces": round(float(n_pieces.mean()), 1),
        "mean_content_words": round(float(n_content.mean()), 1),
        "encode_all_s": round(t_encode, 1),
    }
    results["runtime_s"] = round(time.time() - t_start, 1)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
