# Every target creates the virtual environment on first use, so `make demo` and
# `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: install test test-fp32 test-all lint format demo docs figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev,sweep,cluster]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The same suite with precision=auto choosing float32, as on a CPU without native bf16
# (the default run takes bf16 where this CPU has it): run both before saying a change
# passes on every CPU.
test-fp32: $(STAMP)
	GLOW_TRAIN_AUTO_PRECISION=fp32 $(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)
	$(BIN)/glow-train

# The docs extra on top of the dev install (mkdocs, Material, mkdocstrings, matplotlib).
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -e '.[dev,sweep,cluster,docs]'
	touch $(DOCS_STAMP)

# The site, into site/; --strict turns a broken link or a missing API object into an error.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The pictures of the docs, docs/results.md and the README's transcript and results table.
figures: $(DOCS_STAMP)
	$(BIN)/python scripts/make_figures.py

clean:
	rm -rf $(VENV) build site *.egg-info
