# Two set-up-included commands (see README): `make demo` and `make test`.
# Both create .venv from nothing on first use: the pinned CPU-capable torch first, then gpt2kit itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/gpt2kit demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# the unit tests only (no whole runs, subprocesses, torchrun or crash tests): the edit-run loop
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info
