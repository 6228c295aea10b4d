# Quick start: `make demo` and `make test`. Both create .venv/ on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bootstrap-stamp

.PHONY: demo test bench setup clean-venv

$(STAMP): pyproject.toml tools/bootstrap.sh
	VENV=$(VENV) ./tools/bootstrap.sh
	@touch $@

setup: $(STAMP)

DEMO_DATA := data/demo/test.h5

demo: $(STAMP)
	$(PY) scripts/demo.py --out results/demo
	$(PY) scripts/build_operators.py --n 32 --seed 20261126 --out $(DEMO_DATA)
	$(PY) scripts/compare_baselines.py --data $(DEMO_DATA) --out results/demo

# pytest-xdist workers (auto: one per core); TEST_WORKERS=0 runs the suite in one process
TEST_WORKERS ?= auto

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

bench: $(STAMP)
	$(PY) benchmarks/operator_build.py

clean-venv:
	rm -rf $(VENV)
