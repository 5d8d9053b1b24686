# Two commands do everything on a fresh machine (see README.md):
#   make run    set up .venv and train the default model on the embedded synthetic data
#   make test   set up .venv (with the packaged real samples) and run lint + the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Real sample data ships inside these packages; --no-deps keeps their heavy imports (torch) out.
SAMPLE_PACKAGES := devolearn==0.3.0 ndev-sampledata==0.0.3
# The laptrack example nuclei ship only in its source distribution's docs, so they are extracted
# into the venv (cellkeras.data.samples.laptrack_sample reads them there, by path).
LAPTRACK := laptrack==0.17.1
LAPTRACK_DIR := $(VENV)/share/cellkeras/laptrack
LAPTRACK_SRC := docs/examples/napari_interactive_fix_data

.PHONY: run test lint clean laptrack-sample

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,beam,bioimageio]"
	$(BIN)/pip install -q --no-deps $(SAMPLE_PACKAGES)
	$(MAKE) --no-print-directory laptrack-sample
	touch $@

# Idempotent: nothing is downloaded when both files are already there.
laptrack-sample:
	@if [ -f $(LAPTRACK_DIR)/example_images.tif ] && [ -f $(LAPTRACK_DIR)/example_label.tif ]; then \
		echo "laptrack sample already in $(LAPTRACK_DIR)"; \
	else \
		tmp=$$(mktemp -d) && \
		$(BIN)/pip download -q --no-deps --no-binary :all: $(LAPTRACK) -d $$tmp && \
		tar -xzf $$tmp/laptrack-*.tar.gz -C $$tmp && \
		mkdir -p $(LAPTRACK_DIR) && \
		cp $$tmp/laptrack-*/$(LAPTRACK_SRC)/example_images.tif \
			$$tmp/laptrack-*/$(LAPTRACK_SRC)/example_label.tif \
			$$tmp/laptrack-*/$(LAPTRACK_SRC)/note.md $(LAPTRACK_DIR)/ && \
		rm -rf $$tmp && echo "laptrack sample extracted into $(LAPTRACK_DIR)"; \
	fi

run: $(VENV)/.installed
	$(BIN)/python -m trainer.task $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# A test file per worker (--dist loadfile): module fixtures (trained tiny models) are built once.
PYTEST_ARGS ?= -n auto --dist loadfile

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
