# Two entry points for a fresh machine: `make demo` (the RECAP study, demo preset) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU defaults, set before JAX is imported: the flag without which jit(vmap(mjx.step)) was seen to hang
# on CPU. The demo runs on one host device: 8 virtual devices on 2 cores only add collectives, and under
# load one device thread missed XLA's 40 s all-reduce rendezvous and aborted a training run. The tests
# add 8 host devices themselves (tests/conftest.py) for the sharding tests.
export JAX_PLATFORMS ?= cpu
export XLA_FLAGS ?= --xla_cpu_enable_concurrency_optimized_scheduler=false
export JAX_COMPILATION_CACHE_DIR ?= $(HOME)/.cache/recap_jax/jax_cache
export PYTHONUNBUFFERED = 1

.PHONY: install demo test lint format clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python -m experiments.recap_bendpick --preset demo --out runs/demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
