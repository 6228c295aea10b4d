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

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/operator_build.py

clean-venv:
	rm -rf $(VENV)
