# mnc-teach: `make lab` opens the course, `make test` runs every test. Both create the environment when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# JupyterLab listens here; override e.g. `make lab LAB_ARGS="--no-browser --port 8899"`.
LAB_ARGS ?=
# `make assignments` lays out the nbgrader course folder here (the student version in release/mnc)
COURSE_DIR ?= build/course
# Jupyter refuses to run as root unless told; containers and cloud machines often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help venv lab test test-fast lint shapes html html-fast assignments clean

help:
	@echo "make lab        create the environment if missing and open the course in JupyterLab"
	@echo "make test       create the environment if missing and run every test (notebooks included)"
	@echo "make test-fast  unit tests only (skips executing the notebooks and the browser test)"
	@echo "make lint       ruff over the package and tests"
	@echo "make shapes     generate the synthetic shapes dataset into data/shapes"
	@echo "make html       execute every notebook in full mode and render it to build/*.html, readable offline (open build/index.html)"
	@echo "make html-fast  the same in fast mode (small data, a few training steps; also: make html FAST=1)"
	@echo "make assignments  the course as an nbgrader assignment in $(COURSE_DIR) (instructors; see its README.md)"
	@echo "make clean      remove caches (keeps the environment and data)"

venv: $(STAMP)

# Re-installs when pyproject.toml changes. pip finds torch/torchvision wheels already on disk where they are.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "mnc-teach needs Python >= 3.10; set PYTHON=python3.x")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# JupyterLab settings for this environment only: no news pop-up, no update check (both go online).
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
		> $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG) $(LAB_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not notebook and not browser"

lint: $(STAMP)
	$(BIN)/ruff check mnc_teach tests

shapes: $(STAMP)
	$(BIN)/python -m mnc_teach shapes --root data/shapes

# Executes into build/ (datasets and runs in build/full/, fast mode: build/fast/); data/ and notebooks/ stay
# untouched. npm fetches the pages' scripts once (scripts/offline_pages.py); without it they use CDNs.
FAST ?= 0
html: $(STAMP)
	$(BIN)/python scripts/render_course.py --build-dir build $(if $(filter 1,$(FAST)),--fast,)

html-fast: $(STAMP)
	$(BIN)/python scripts/render_course.py --build-dir build --fast

assignments: $(STAMP)
	$(BIN)/python -m mnc_teach assignments build --out $(COURSE_DIR)

clean:
	rm -rf .pytest_cache .ruff_cache build
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
