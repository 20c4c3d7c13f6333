"""Helpers for the tuning tests: a tiny real Gemma 3 model (random weights, a word-level
tokenizer) that trains in milliseconds per step, and dataset rows."""

from __future__ import annotations

import json
from pathlib import Path

FACTS = [
    ("What port does keel listen on by default?", "8080"),
    ("Which database does keel use when none is configured?", "SQLite"),
    ("What is the name of keel's config file?", "keel.toml"),
    ("Which command starts the keel gateway?", "keel serve"),
    ("What is keel's default local model?", "gemma-3-270m"),
    ("Which header carries the keel request id?", "x-keel-request-id"),
]


def tiny_gemma(path: Path) -> Path:
    """Save a 2-layer Gemma 3 text model with random weights and a tokenizer to ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    words = sorted({w for q, a in FACTS for w in (q + " " + a + " Question: Answer:").split()})
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for w in [*words, "\n"]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                              head_dim=16, max_position_embeddings=256, sliding_window=64,
                              bos_token_id=2, eos_token_id=1, pad_token_id=0)
    Gemma3ForCausalLM(config).save_pretrained(str(path))
    fast.save_pretrained(str(path))
    return path


def write_dataset(root: Path, rows: list[tuple[str, str]], name: str = "ds") -> Path:
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": a}]}) for q, a in rows]
    (out / "train.jsonl").write_text("\n".join(lines) + "\n")
    (out / "eval.jsonl").write_text("")
    return out
