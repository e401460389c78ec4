# The README's two commands. Each creates or reuses .venv and installs the project (with its dev
# extras) only when its sources changed, so a second run is quick.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.n6onnx-installed
SOURCES := pyproject.toml $(shell find n6onnx custom_ops cmake -type f -not -path '*/__pycache__/*' 2>/dev/null)

.PHONY: demo test install bench clean

# Through the installed console script: `python -m` would import the source tree (no built library).
demo: $(STAMP)
	$(VENV)/bin/n6onnx demo build/demo

test: $(STAMP)
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) benchmarks/activation_cpu.py

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is pinned to the CPU build (2.13.0) and installed first, so that nothing pulls CUDA wheels.
$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q ".[dev]"
	@touch $@

clean:
	rm -rf build dist *.egg-info
