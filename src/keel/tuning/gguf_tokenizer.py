"""The tokenizer of a GGUF model rebuilt from the GGUF itself, so training sees exactly the
token ids llama.cpp feeds the served model.

transformers' own GGUF conversion of Gemma 3's tokenizer is unusable for training (measured
with transformers 5.17: a Unigram model that splits "Question" into eight one-letter
tokens and adds no ``<bos>``, while llama.cpp reads it as one token after ``<bos>``); a
model trained on those ids learns nothing llama.cpp can use. A llama-style (SentencePiece
BPE) GGUF vocabulary is a list of pieces with scores: llama.cpp merges the adjacent pair
whose joined piece scores highest. The same thing as a Hugging Face BPE model: every
split of a piece into two pieces of the vocabulary is a merge, ranked by the joined
piece's score; spaces become "▁"; unknown bytes fall back to the ``<0xNN>`` pieces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keel.errors import InvalidRequest

MARKER = "keel-tokenizer.txt"  # written next to tokenizer.json: "built from the GGUF, v1"
VERSION = "gguf-spm-bpe-v1"
_CONTROL, _USER_DEFINED = 3, 4


def _field(reader: Any, name: str) -> Any:
    f = reader.fields.get(name)
    if f is None:
        raise InvalidRequest(f"the GGUF has no {name}: cannot rebuild its tokenizer")
    return f


def _strings(reader: Any, name: str) -> list[str]:
    f = _field(reader, name)
    return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]


def _numbers(reader: Any, name: str) -> list[float]:
    f = _field(reader, name)
    return [float(f.parts[i][0]) for i in f.data]


def _scalar(reader: Any, name: str, default: Any) -> Any:
    f = reader.fields.get(name)
    return default if f is None else f.parts[f.data[0]][0]


def build_tokenizer(gguf: Path) -> Any:
    """A ``transformers`` fast tokenizer equal to llama.cpp's for a llama-style vocab."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    reader = GGUFReader(str(gguf))
    kind = bytes(_field(reader, "tokenizer.ggml.model").parts[-1]).decode()
    if kind != "llama":
        raise InvalidRequest(f"{gguf.name}: tokenizer model {kind!r}; only llama-style "
                             "(SentencePiece) vocabularies can be rebuilt")
    pieces = _strings(reader, "tokenizer.ggml.tokens")
    scores = _numbers(reader, "tokenizer.ggml.scores")
    types = [int(t) for t in _numbers(reader, "tokenizer.ggml.token_type")]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges: list[tuple[float, int, int, str, str]] = []
    for piece, i in vocab.items():
        if types[i] != 1:  # only normal pieces are built by merging
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            a, b = vocab.get(left), vocab.get(right)
            if a is not None and b is not None:
                merges.append((-scores[i], a, b, left, right))
    merges.sort()
    bos = int(_scalar(reader, "tokenizer.ggml.bos_token_id", 2))
    eos = int(_scalar(reader, "tokenizer.ggml.eos_token_id", 1))
    unk = int(_scalar(reader, "tokenizer.ggml.unknown_token_id", 3))
    pad = int(_scalar(reader, "tokenizer.ggml.padding_token_id", 0))
    add_bos = bool(_scalar(reader, "tokenizer.ggml.add_bos_token", True))
    tok = Tokenizer(BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges],
                        unk_token=pieces[unk], fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_tokens([AddedToken(p, special=False, normalized=False)
                    for p, t in zip(pieces, types, strict=True) if t == _USER_DEFINED])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p, t in zip(pieces, types, strict=True) if t == _CONTROL])
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{pieces[bos]} $A", pair=f"{pieces[bos]} $A $B",
            special_tokens=[(pieces[bos], bos)])
    fast: Any = PreTrainedTokenizerFast  # untyped in transformers 5
    return fast(tokenizer_object=tok, bos_token=pieces[bos], eos_token=pieces[eos],
                unk_token=pieces[unk], pad_token=pieces[pad])


def ensure_tokenizer(gguf: Path, cache: Path) -> None:
    """Write the GGUF's own tokenizer into the Hugging Face cache directory (once)."""
    marker = cache / MARKER
    if marker.is_file() and marker.read_text().strip() == VERSION:
        return
    build_tokenizer(gguf).save_pretrained(str(cache))
    marker.write_text(VERSION + "\n")
