# Two commands do everything on a fresh machine (see README.md):
#   make run    set up .venv and train the default model on the embedded synthetic data
#   make test   set up .venv (with the packaged real samples) and run lint + the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Real sample data ships inside these packages; --no-deps keeps their heavy imports (torch) out.
SAMPLE_PACKAGES := devolearn==0.3.0 ndev-sampledata==0.0.3

.PHONY: run test lint clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,beam,bioimageio]"
	$(BIN)/pip install -q --no-deps $(SAMPLE_PACKAGES)
	touch $@

run: $(VENV)/.installed
	$(BIN)/python -m trainer.task $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
