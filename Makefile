# bnn_helpers — two commands: `make tutorial` and `make test` (see README.md).
# Both create .venv on first use and install the package with its extras.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: install test tutorial notebooks figures lab benchmark clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[notebooks,dev]"
	@touch $(STAMP)

install: $(STAMP)

# Unit tests, the benchmark in quick mode and a smoke run of every notebook.
# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
test: $(STAMP)
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests (tests/ missing or all deselected)"; exit 1; fi; \
	exit $$rc

# Run the series in order on the bundled CPU defaults. Executed copies go to
# executed/ (git-ignored) so following the tutorial never dirties the tree;
# figures land in Figs/.
tutorial: $(STAMP)
	@if [ -z "$(NOTEBOOKS)" ]; then echo "no notebooks yet: nothing to run"; exit 0; fi
	@mkdir -p executed
	@for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; start=$$(date +%s); \
	  SMOKE=0 $(VENV)/bin/papermill --cwd notebooks --kernel python3 $$nb executed/$$(basename $$nb) || exit 1; \
	  echo "   done in $$(( $$(date +%s) - start )) s"; \
	done

# Maintainers: refresh the committed notebooks' outputs in place (full mode).
notebooks: $(STAMP)
	@for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; start=$$(date +%s); \
	  SMOKE=0 $(VENV)/bin/papermill --cwd notebooks --kernel python3 $$nb $$nb || exit 1; \
	  echo "   done in $$(( $$(date +%s) - start )) s"; \
	done

# Figures that need no training (signal propagation at initialisation, STEs).
figures: $(STAMP)
	$(PY) -m bnn_helpers.figures

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

benchmark: $(STAMP)
	$(PY) benchmarks/train_step.py --json benchmarks/results/train_step.json

clean:
	rm -rf executed .pytest_cache
