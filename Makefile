# make demo   - set up .venv, build the built-in dataset, train + sparsify, validate, export, detect
# make test   - set up .venv and run the test suite
# make bench  - run the benchmarks and write BENCHMARKS.md
VENV ?= .venv
PYTHON_BIN ?= python3.11
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-deploy.txt
	$(PYTHON_BIN) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q -r requirements-deploy.txt || echo "warning: optional DeepSparse runtime not installed; onnxruntime is used"
	touch $(STAMP)

demo: setup
	$(PY) demo.py

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs datasets/shapes .pytest_cache
