# Two entry points that work on a fresh machine from a clean clone:
#   make demo   set up .venv and run the whole pipeline on the standard library
#   make test   set up .venv, lint, and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev,notebook]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/codelm demo

# pytest exits 5 when it collects no test, so an empty run fails here too.
test: $(STAMP) lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs .pytest_cache
