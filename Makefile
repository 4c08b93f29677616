# Two commands on a fresh clone: `make demo` (the full system) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo bench gpu-bench replicate lint clean docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pin torch first: this version resolves to the CPU wheel; an unpinned torch pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The docs need the library and pdoc only (the `[docs]` extra), not the `[dev]` environment
# (lm-eval, triton, ...): their own virtualenv. `make test` still builds them, in the dev venv
# (tests/test_docs.py).
DOCS_VENV  := .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.installed-stamp

$(DOCS_STAMP): pyproject.toml
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install -q --upgrade pip
	$(DOCS_VENV)/bin/python -m pip install -q torch==2.13.0
	$(DOCS_VENV)/bin/python -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(DOCS_VENV)/bin/python docs/build.py --out build/docs

demo: $(STAMP)
	$(BIN)/python -m examples.demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# The GPU figures in one table (benchmarks/gpu.py, ~5 min on an H100). The venv above holds a CPU
# torch: GPU_PYTHON names an interpreter with a CUDA torch (and triton, jaxtyping, beartype,
# safetensors, tqdm). Without a GPU it stops with a message; `python -m benchmarks.gpu --tiny`
# runs on a CPU.
GPU_PYTHON ?= python3
gpu-bench:
	$(GPU_PYTHON) -m benchmarks.gpu

replicate: $(STAMP)
	$(BIN)/python -m examples.replicate

clean:
	rm -rf $(VENV) $(DOCS_VENV) .pytest_cache .ruff_cache .hypothesis .benchmarks
