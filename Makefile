# Two targets a newcomer needs; both create .venv and install what is missing first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test setup clean-store

setup: $(STAMP)

# torch==2.13.0 first: any other spec pulls a multi-GB CUDA build on CPU machines (see ENVIRONMENT notes)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# DEMO_ARGS: more options, e.g. `make demo DEMO_ARGS="--set seed=7"` (a second model for the gate to judge)
demo: $(STAMP)
	$(VENV)/bin/llmpipe run demo --summary runs/demo-summary.json $(DEMO_ARGS)

# two workers that steal work from each other: most tests wait on subprocesses and servers, CI has 2 cores
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist worksteal

clean-store:
	rm -rf store runs
