# Two set-up-included commands (see README): `make demo` and `make test`.
# Both create .venv from nothing on first use: the pinned CPU-capable torch first, then gpt2kit itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-fast browser bench clean gpu-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/gpt2kit demo

# Chromium for the browser test: installed with apt when missing and run as root (CI), else that test is skipped
browser:
	@bash .ci/browser.sh

test: $(VENV)/.installed browser
	$(BIN)/ruff check gpt2kit tests benchmarks
	$(BIN)/python -m pytest -q

# the unit tests only (no whole runs, subprocesses, torchrun or crash tests): the edit-run loop
test-fast: $(VENV)/.installed
	$(BIN)/ruff check gpt2kit tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

# On a GPU machine whose Python already has torch with CUDA, transformers, tiktoken, safetensors, numpy, tqdm and
# pytest: no venv is built. Every CUDA path once, measured, in under 8 minutes; results in $(GPU_OUT).
GPU_PYTHON ?= python3
GPU_OUT ?= gpu-results
gpu-check:
	PYTHONPATH=. GPU_OUT=$(GPU_OUT) $(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_OUT)

clean:
	rm -rf $(VENV) build *.egg-info
