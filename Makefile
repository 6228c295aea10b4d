# Quick start: `make demo` and `make test`. Both create .venv/ on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bootstrap-stamp

.PHONY: demo test bench setup clean-venv

$(STAMP): pyproject.toml tools/bootstrap.sh
	VENV=$(VENV) ./tools/bootstrap.sh
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py --out results/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/operator_build.py

clean-venv:
	rm -rf $(VENV)
