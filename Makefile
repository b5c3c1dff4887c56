# bnn_helpers — two commands: `make tutorial` and `make test` (see README.md).
# Both create .venv on first use and install the package with its extras.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: install test tutorial notebooks figures lab benchmark gpu-check reference-runs photos-grid portability clean

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
EXECUTED ?= executed
tutorial: $(STAMP)
	@if [ -z "$(NOTEBOOKS)" ]; then echo "no notebooks yet: nothing to run"; exit 0; fi
	@mkdir -p $(EXECUTED)
	@for nb in $(NOTEBOOKS); do \
	  echo "== $$nb"; start=$$(date +%s); \
	  SMOKE=0 $(VENV)/bin/papermill --cwd notebooks --kernel python3 $$nb $(EXECUTED)/$$(basename $$nb) || exit 1; \
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

# The reference runs the notebooks and README quote (results/digits_20ep): the three
# digits configs as committed (20 epochs per step), seeds 0-2, with --track-stats.
# Their logs (not weights) are copied into results/. ~5-7 min per run on one core.
reference-runs: $(STAMP)
	@for seed in 0 1 2; do for mode in bf none bn; do \
	  run=runs/reference/digits20_$${mode}_s$$seed; \
	  $(PY) -m bnn_helpers.train --config configs/digits/reactnet_a_$$mode.yaml --seed $$seed \
	    --run-dir $$run --threads 1 --track-stats true --progress log --overwrite true || exit 1; \
	  $(PY) -m bnn_helpers.results $$run $${mode}_s$$seed digits_20ep || exit 1; \
	done; done

# The search for a CPU-sized setting where deleting BN hurts (results/photos_grid, Figs/
# photos_grid.png): optimizers x learning rates x bn/none/bf x seeds on the photos task,
# two one-thread runs at a time; finished runs are kept, so rerunning continues.
photos-grid: $(STAMP)
	$(PY) -m bnn_helpers.sweep configs/sweeps/photos_grid.yaml

# Other machines pick other kernels and reduction orders. Run both README commands the
# way three of them would (ATEN_CPU_CAPABILITY=default / avx2, one OpenMP thread), each
# with empty caches; one line per run in portability/summary.txt. ~1.5 h on 2 cores.
# PORTABILITY_TARGETS="test" runs only the test suite; PORTABILITY_VARIANTS picks the machines.
PORTABILITY_TARGETS ?= test tutorial
PORTABILITY_VARIANTS ?= ATEN_CPU_CAPABILITY=default ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1
portability: $(STAMP)
	@mkdir -p portability; : > portability/summary.txt
	@for variant in $(PORTABILITY_VARIANTS); do \
	  for target in $(PORTABILITY_TARGETS); do \
	    tag=$$(echo $$variant | tr '=' '_')_$$target; scratch=$$(mktemp -d); start=$$(date +%s); \
	    env $$variant BNN_CHECKPOINTS_DIR=$$scratch/checkpoints BNN_RUNS_DIR=$$scratch/runs \
	      BNN_FIGS_DIR=$$scratch/figs $(MAKE) --no-print-directory $$target EXECUTED=$$scratch/executed \
	      > portability/$$tag.log 2>&1; rc=$$?; \
	    line="$$variant make $$target: $$( [ $$rc -eq 0 ] && echo passed || echo FAILED ) in $$(( ($$(date +%s) - start) / 60 )) min"; \
	    [ $$target = test ] && line="$$line ($$(grep -Eo '[0-9]+ (passed|failed)[^=]*' portability/$$tag.log | tail -1))"; \
	    echo "$$line" | tee -a portability/summary.txt; rm -rf $$scratch; \
	  done; \
	done; ! grep -q FAILED portability/summary.txt

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

benchmark: $(STAMP)
	$(PY) benchmarks/train_step.py --json benchmarks/results/train_step.json

# One GPU, about 5 minutes: the CUDA tests, GPU throughput (bf/bn/none, fp32/bf16/compile)
# and a 2-step, 2-epoch engine run at 224 px on a generated ImageFolder; one table at the end.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --json benchmarks/results/gpu_check.json

clean:
	rm -rf executed .pytest_cache
