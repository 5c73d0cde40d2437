# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench-cpu

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is installed explicitly: the CPU build of 2.13.0 is what these machines hold locally;
# a plain `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ssmkit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15 tests

bench-cpu: $(STAMP)
	$(BIN)/python benchmarks/ops_cpu.py --out benchmarks/results

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
