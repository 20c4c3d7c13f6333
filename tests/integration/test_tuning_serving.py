"""The real local model serves a registered LoRA adapter under its public name: promote
and rollback take effect on the next request (no restart), the response header names the
version, and a refused version is not promoted by mistake."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from keel.app import build_services, create_app
from keel.config import Settings, load_settings
from keel.gateway.services import Services
from keel.tuning.lora_gguf import gguf_arch, write_lora_gguf
from keel.tuning.registry import VersionRegistry

from live import serve_app

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models")))
GGUF = MODELS / "gemma-3-270m-q4_k_m.gguf"


def random_adapter(out: Path, rank: int = 8, scale: float = 0.5) -> Path:
    """A LoRA adapter of the right shapes for the real model (random weights, big enough to
    change what it says), written by the exporter the trainer uses."""
    from gguf import GGUFReader

    arch, blocks = gguf_arch(GGUF)
    shapes = {t.name: [int(x) for x in t.shape] for t in GGUFReader(str(GGUF)).tensors}
    rng = np.random.default_rng(0)
    state = {}
    for i in range(blocks):
        n_in, n_out = shapes[f"blk.{i}.attn_v.weight"]
        pre = f"base_model.model.model.layers.{i}.self_attn.v_proj"
        state[f"{pre}.lora_A.weight"] = rng.normal(0, scale, (rank, n_in)).astype(np.float32)
        state[f"{pre}.lora_B.weight"] = rng.normal(0, scale, (n_out, rank)).astype(np.float32)
    write_lora_gguf(state, out, arch=arch, n_blocks=blocks, alpha=rank)
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Services]]:
    tmp = tmp_path_factory.mktemp("tuning")
    settings: Settings = load_settings(None, data_dir=str(tmp / "data"),
                                       models_dir=str(MODELS), tuning={"enabled": True})
    settings.local.slots = 1
    svc = build_services(settings)
    key = svc.keys.create("acme", admin=True).secret
    with serve_app(create_app(settings, services=svc)) as base:
        yield base, key, svc


def ask(base: str, key: str) -> httpx.Response:
    r = httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                   json={"model": "gemma-3-270m", "temperature": 0, "max_tokens": 8,
                         "messages": [{"role": "user", "content": "What is the capital of "
                                                                  "France?"}]}, timeout=120)
    assert r.status_code == 200, r.text
    return r


async def _register(svc: Services, adapter: Path, status: str) -> str:
    reg = svc.components.get(VersionRegistry)
    v = await reg.register(model="gemma-3-270m", base_model=str(GGUF), adapter=str(adapter),
                           dataset_hash="0" * 64, hyperparams={"lora_rank": 8},
                           metrics={}, report={"passed": status != "refused",
                                               "reasons": ["worse"]}, status=status)
    return v.id


async def test_promote_and_rollback_switch_the_served_adapter_without_restart(
        stack: tuple[str, str, Services], tmp_path: Path):
    base, key, svc = stack
    before = ask(base, key)
    assert before.headers["x-keel-model-version"] == "base"
    text_base = before.json()["choices"][0]["message"]["content"]

    vid = await _register(svc, random_adapter(tmp_path / "a.gguf"), "candidate")
    admin = {"authorization": f"Bearer {key}"}
    r = httpx.post(f"{base}/v1/admin/tuning/versions/{vid}/promote", headers=admin)
    assert r.status_code == 200, r.text
    tuned = ask(base, key)
    assert tuned.headers["x-keel-model-version"] == vid == "gemma-3-270m@v1"
    assert tuned.json()["choices"][0]["message"]["content"] != text_base

    r = httpx.post(f"{base}/v1/admin/tuning/models/gemma-3-270m/rollback", headers=admin)
    assert r.json() == {"model": "gemma-3-270m", "serving": "base"}
    back = ask(base, key)
    assert back.headers["x-keel-model-version"] == "base"
    assert back.json()["choices"][0]["message"]["content"] == text_base

    refused = await _register(svc, random_adapter(tmp_path / "b.gguf", scale=0.3), "refused")
    r = httpx.post(f"{base}/v1/admin/tuning/versions/{refused}/promote", headers=admin)
    assert r.status_code == 409 and "refused" in r.json()["error"]["message"]
    assert ask(base, key).headers["x-keel-model-version"] == "base"
    r = httpx.post(f"{base}/v1/admin/tuning/models/gemma-3-270m/rollback", headers=admin)
    assert r.status_code == 409  # nothing to roll back: still the base
