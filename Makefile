# The README's commands. Each installs what it needs first, into .venv unless a virtual environment is active.
#   make install   everything the tests need (requirements-dev.txt: runtime + demo + pytest + references)
#   make demo      the offline digits demo (installs requirements-demo.txt: runtime + scikit-learn)
#   make test      the whole test suite on the CPU
PYTHON ?= python3
VENV ?= .venv
PY := $(if $(VIRTUAL_ENV),python,$(VENV)/bin/python)

.PHONY: install install-demo test demo

$(if $(VIRTUAL_ENV),,$(VENV)/bin/python):
	$(PYTHON) -m venv $(VENV)

install: $(if $(VIRTUAL_ENV),,$(VENV)/bin/python)
	$(PY) -m pip install -q -r requirements-dev.txt

install-demo: $(if $(VIRTUAL_ENV),,$(VENV)/bin/python)
	$(PY) -m pip install -q -r requirements-demo.txt

# Run the whole test suite (CPU only, about 6 minutes on 2 cores after the install: 793 tests).
test: install
	$(PY) -m pytest -q -n 2 tests

# The offline digits demo: train, evaluate, export to ONNX, run ONNX Runtime.
demo: install-demo
	PYTHON=$(PY) bash scripts/run_demo.sh
