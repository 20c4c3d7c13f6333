"""A training run as a file: the same spec trains here or on another machine
(``keel train run SPEC``), and the result is registered back from its output."""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import Field, ValidationError

from keel.errors import InvalidRequest
from keel.settings_section import Section


class TrainSpec(Section):
    model: str = "gemma-3-270m"  # the public model name the result will serve under
    base: str  # a GGUF file (dequantised for training) or a Hugging Face model directory
    dataset: str  # a dataset directory (train.jsonl, eval.jsonl, regression.jsonl)
    output: str  # checkpoints and the adapter: a directory or any fsspec URL
    parent: str = ""  # the version serving when the run was planned ("" = the base)
    chat_format: str = "transcript"
    lora_rank: int = Field(default=16, ge=1, le=256)
    lora_alpha: float = Field(default=32.0, gt=0.0)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    learning_rate: float = Field(default=1e-3, gt=0.0)
    epochs: float = Field(default=5.0, gt=0.0)
    max_steps: int = Field(default=0, ge=0)  # 0: epochs decide
    batch_size: int = Field(default=4, ge=1)
    max_length: int = Field(default=512, ge=16)
    checkpoint_every: int = Field(default=20, ge=1)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # CPU threads for torch (0: its default, one per core). On a busy machine fewer threads
    # are much faster: torch's threads spin waiting for each other.
    threads: int = Field(default=0, ge=0)

    @classmethod
    def load(cls, path: Path) -> TrainSpec:
        try:
            raw = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise InvalidRequest(f"training spec {path} does not exist") from None
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"training spec {path} is not JSON: {exc}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in exc.errors())
            raise InvalidRequest(f"training spec {path}: {problems}") from None

    def check_inputs(self) -> None:
        """Fail before loading anything heavy when an input is missing."""
        base = Path(self.base)
        if not (base.is_file() or (base / "config.json").is_file()):
            raise InvalidRequest(f"base model {self.base} does not exist (a .gguf file or a "
                                 "Hugging Face model directory with config.json)")
        if not (Path(self.dataset) / "train.jsonl").is_file():
            raise InvalidRequest(f"dataset {self.dataset} has no train.jsonl")

    def save(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(self.model_dump(), option=orjson.OPT_INDENT_2))
