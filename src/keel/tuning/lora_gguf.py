"""PEFT LoRA weights -> a GGUF LoRA adapter that llama.cpp (and so xllamacpp) loads on top
of the quantised base GGUF it was trained against.

The layout is llama.cpp's own (``convert_lora_to_gguf.py``): ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, and for every adapted weight ``W`` of shape
(out, in) two tensors ``<gguf name of W>.lora_a`` (rank, in) and ``.lora_b`` (out, rank).
llama.cpp scales the product by alpha / rank, as PEFT does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from keel.errors import InvalidRequest

# "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" (PEFT state dict)
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<name>.+)\.lora_(?P<ab>[AB])(?:\.default)?"
                       r"\.weight$")


def gguf_arch(path: Path) -> tuple[str, int]:
    """The architecture name and block count of a GGUF model file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None:
            raise InvalidRequest(f"{path} has no {key} metadata: not a model GGUF")
        return f.contents()

    arch = str(field("general.architecture"))
    return arch, int(field(f"{arch}.block_count"))


def write_lora_gguf(state: dict[str, Any], out: Path, *, arch: str, n_blocks: int,
                    alpha: float) -> int:
    """Write ``state`` (PEFT's adapter state dict, tensors or arrays) to ``out``; returns
    the number of adapted weights."""
    import gguf

    arch_enum = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(arch)
    if arch_enum is None:
        raise InvalidRequest(f"llama.cpp does not know the architecture {arch!r}")
    names = gguf.get_tensor_name_map(arch_enum, n_blocks)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise InvalidRequest(f"adapter tensor {key!r} is not a LoRA A/B weight")
        array = value.detach().float().cpu().numpy() if hasattr(value, "detach") \
            else np.asarray(value, dtype=np.float32)
        target = names.get_name(m["name"] + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise InvalidRequest(f"no llama.cpp tensor matches {m['name']!r} for {arch}")
        pairs.setdefault(target, {})[m["ab"]] = array.astype(np.float32)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for target, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise InvalidRequest(f"adapter for {target} lacks its lora_{'B' if 'A' in ab else 'A'}")
        writer.add_tensor(f"{target}.lora_a", ab["A"])  # (rank, in)
        writer.add_tensor(f"{target}.lora_b", ab["B"])  # (out, rank)
    tmp = out.with_suffix(".tmp")
    writer.path = tmp  # type: ignore[assignment]
    writer.write_header_to_file(path=tmp)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return len(pairs)
