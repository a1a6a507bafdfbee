# The two commands of the README. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(if $(VIRTUAL_ENV),python,$(VENV)/bin/python)

.PHONY: install test demo bench

$(if $(VIRTUAL_ENV),,$(VENV)/bin/python):
	$(PYTHON) -m venv $(VENV)

install: $(if $(VIRTUAL_ENV),,$(VENV)/bin/python)
	$(PY) -m pip install -q -r requirements-dev.txt

# Run the whole test suite (CPU only, about 5 minutes on 2 cores after the install: 604 tests).
test: install
	$(PY) -m pytest -q -n 2 tests

# The offline digits demo: train, evaluate, export to ONNX, run ONNX Runtime.
demo: install
	PYTHON=$(PY) bash scripts/run_demo.sh
