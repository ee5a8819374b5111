# paulkit: two commands on a fresh machine: `make tutorial` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The torch build to install first. On this project's CPU machines these two
# versions install from local disk; override e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Size of the embedded synthetic data made by `make data`: tiny, small or market.
# SYNTH=... is its old name, read with a deprecation message until the next release.
SYNTH_SIZE ?= $(if $(SYNTH),$(SYNTH),tiny)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
NBVAL := --nbval-lax --nbval-current-env --nbval-sanitize-with tests/sanitize.cfg --nbval-cell-timeout 900

.PHONY: help venv data test unit nbval lint tutorial notebooks lab bench clean browser-deps site

help:
	@echo "make tutorial  - set up .venv, make the embedded data, run every notebook into build/"
	@echo "make test      - set up .venv, run the unit tests and nbval over every notebook"
	@echo "make lab       - open JupyterLab on notebooks/"
	@echo "make site      - build the website (notebooks as committed + docs) into build/site/"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(VENV)/.installed

data: venv
	$(if $(SYNTH),@echo "make data: SYNTH= is deprecated and goes in the next release: use SYNTH_SIZE=" >&2)
	$(PY) -m paulkit synth --size $(SYNTH_SIZE)

lint: venv
	$(VENV)/bin/ruff check paulkit tests bench notebooks docs/site
	$(VENV)/bin/ruff format --check paulkit tests bench docs/site

# The browser test (tests/test_browser.py) drives Debian's Chromium with Playwright's Python
# package; nothing downloads a browser (never `playwright install`).
browser-deps: venv
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || \
	  (echo "browser-deps: chromium is missing and apt-get could not install it; run 'apt-get install chromium' as root" >&2; exit 1)
	$(PY) -m pip install -q playwright

# tests/test_site.py (in `unit`) builds the site from scratch and reads it in Chromium.
unit: venv data browser-deps
	$(PY) -m pytest -q tests

nbval: venv data
	$(PY) -m pytest -q -p no:cacheprovider $(NBVAL) notebooks

test: lint unit nbval

# Executes every notebook in order, headless, into build/ (notebooks and HTML).
tutorial: venv data
	mkdir -p build/notebooks build/html
	for nb in $(NOTEBOOKS); do \
	  $(VENV)/bin/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=1800 \
	    --output-dir build/notebooks "$$nb" || exit 1; \
	  $(VENV)/bin/jupyter nbconvert --to html --output-dir build/html "build/notebooks/$$(basename $$nb)" || exit 1; \
	done
	@echo "Executed notebooks: build/notebooks/  HTML: build/html/"

# Maintainers: re-execute the committed notebooks in place (CPU preset) and clean them.
notebooks: venv data
	for nb in $(NOTEBOOKS); do \
	  $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 "$$nb" || exit 1; \
	done
	$(VENV)/bin/nbstripout --keep-output --keep-count $(NOTEBOOKS)

# The website: the notebooks with their committed outputs (nothing is executed) and docs/*.md,
# with Sphinx + MyST-NB (docs/site/conf.py). Offline; incremental (--clean: from scratch).
site: venv
	$(PY) docs/site/build.py
	@echo "open build/site/index.html"

lab: venv data
	$(VENV)/bin/jupyter lab notebooks/

bench: venv data
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build outputs
