# make demo   - set up .venv, build the built-in dataset, train + sparsify, validate, export, detect
# make test   - set up .venv and run the test suite
# make test-fast - the suite without the slow end-to-end runs (edit-test loop; make test runs everything)
# make bench  - run the benchmarks and write BENCHMARKS.md
VENV ?= .venv
PYTHON_BIN ?= python3.11
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast bench lint clean

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

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs datasets/shapes .pytest_cache
