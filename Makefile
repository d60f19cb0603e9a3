# make demo   - set up .venv, sparsify the shipped dense yolov5n (weights/yolov5n-shapes.pt), export, compare, detect
# make demo-model - retrain that dense yolov5n (300 epochs on data/shapes_tiny.yaml, about 45 min on 2 CPU cores)
# make test   - set up .venv and run the test suite
# make test-fast - the suite without the slow end-to-end runs (edit-test loop; make test runs everything)
# make bench  - run the benchmarks and write BENCHMARKS.md
VENV ?= .venv
PYTHON_BIN ?= python3.11
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-model test test-fast bench lint clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-deploy.txt
	$(PYTHON_BIN) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q -r requirements-deploy.txt || echo "warning: optional DeepSparse runtime not installed; onnxruntime is used"
	touch $(STAMP)

demo: setup
	$(PY) demo.py

demo-model: setup
	$(PY) train.py --cfg yolov5n.yaml --weights '' --optimizer AdamW --hyp data/hyps/hyp.short.yaml \
		--data data/shapes_tiny.yaml --imgsz 160 --batch-size 32 --workers 2 --epochs 300 --name yolov5n-shapes --exist-ok
	$(PY) -c "from utils.checkpoint import release_checkpoint as r; \
		r('runs/train/yolov5n-shapes/weights/best.pt', 'weights/yolov5n-shapes.pt')"

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
