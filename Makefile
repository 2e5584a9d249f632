PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench conformance clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench,ray]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/cenote serve $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cenote tests benchmarks conformance

# vLLM 0.34.0's own pooling tests against cenote: downloads vLLM's sdist once (pinned,
# sha256-checked) into ~/.cache/cenote-conformance and writes docs/conformance.md.
# Not part of `make test`. ARGS, e.g.: --files 'tests/entrypoints/pooling/embed/*'
conformance: $(STAMP)
	$(BIN)/python conformance/run.py $(ARGS)

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
