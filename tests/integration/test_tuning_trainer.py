"""The LoRA trainer on a tiny real Gemma 3 model: resumes after kill -9 from the last
checkpoint, exports an adapter llama.cpp's layout names, refuses bad specs clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("peft", reason="training needs the keel[train] extra")

from keel.tuning.spec import TrainSpec
from tuning_helpers import FACTS, tiny_gemma, write_dataset

STEPS, EVERY = 200, 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gemma(tmp_path_factory.mktemp("tiny") / "model")


def _spec(tmp_path: Path, tiny: Path, **kw: object) -> Path:
    ds = write_dataset(tmp_path, FACTS)
    spec = TrainSpec(base=str(tiny), dataset=str(ds), output=str(tmp_path / "out"),
                     max_steps=STEPS, checkpoint_every=EVERY, batch_size=2, lora_rank=4,
                     lora_alpha=8, learning_rate=1e-3, device="cpu", threads=1,
                     **kw)  # type: ignore[arg-type]
    path = tmp_path / "spec.json"
    spec.save(path)
    return path


def _run(spec: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "keel.tuning.run", str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_kill_9_mid_training_resumes_from_the_last_checkpoint(tmp_path: Path, tiny: Path):
    spec = _spec(tmp_path, tiny)
    ckpts = tmp_path / "out" / "checkpoints"
    proc = _run(spec)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in ckpts.glob("step-*") if (p / "COMPLETE").exists()] \
            if ckpts.exists() else []
        if done:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr}"
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    reached = max(int(line.split()[1].split("/")[0]) for line in err.splitlines()
                  if line.startswith("step "))
    assert reached < STEPS
    assert not (tmp_path / "out" / "result.json").exists()
    saved = max(int(p.name[5:]) for p in ckpts.glob("step-*") if (p / "COMPLETE").exists())

    again = _run(spec)
    out, err2 = again.communicate(timeout=600)
    assert again.returncode == 0, err2[-2000:]
    import json

    result = json.loads(out)
    assert result["resumed_from"] == saved  # not from zero ...
    assert reached - saved <= EVERY  # ... and at most one checkpoint interval lost
    assert result["steps"] == STEPS and len(result["losses"]) == STEPS
    first = next(line for line in err2.splitlines() if line.startswith("step "))
    assert first.startswith(f"step {saved + 1}/")
    # the tiny model learns its facts: the loss falls
    assert sum(result["losses"][-10:]) < sum(result["losses"][:10])


def test_peft_adapter_exports_to_llama_cpp_lora_layout(tmp_path: Path, tiny: Path):
    import numpy as np
    from gguf import GGUFReader
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from keel.tuning.lora_gguf import write_lora_gguf

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny)), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], task_type="CAUSAL_LM"))
    out = tmp_path / "adapter.gguf"
    n = write_lora_gguf(get_peft_model_state_dict(model), out, arch="gemma3", n_blocks=2,
                        alpha=8)
    assert n == 4
    reader = GGUFReader(str(out))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(8.0)
    shapes = {t.name: [int(x) for x in t.shape] for t in reader.tensors}
    # ggml order (ne0 first): lora_a is (in, rank), lora_b is (rank, out)
    assert shapes["blk.0.attn_q.weight.lora_a"] == [32, 4]
    assert shapes["blk.0.attn_q.weight.lora_b"] == [4, 32]
    assert shapes["blk.1.ffn_down.weight.lora_a"] == [64, 4]
    assert shapes["blk.1.ffn_down.weight.lora_b"] == [4, 32]
    assert all(np.isfinite(t.data).all() for t in reader.tensors)


def test_a_spec_with_a_missing_base_model_fails_clearly(tmp_path: Path, tiny: Path):
    spec = _spec(tmp_path, tiny)
    bad = TrainSpec.load(spec).model_copy(update={"base": str(tmp_path / "nope.gguf")})
    bad.save(spec)
    proc = _run(spec)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "base model" in err and "does not exist" in err
    assert not (tmp_path / "out").exists()
