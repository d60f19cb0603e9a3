"""A recipe as users write it (SparseML's YOLOv5 guide layout) trains, validates and exports end to end (resume with a
recipe: conftest's shared resumed run, tests/test_interruptions.py and the in-process loop of test_sparsification)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import export
import train
import val
from utils.checkpoint import load_checkpoint
from utils.weights import load_weights

pytestmark = pytest.mark.slow

GUIDE = str(train.ROOT / "recipes" / "sparseml_guide_example.yaml")


def test_guide_recipe_trains_validates_and_exports(tmp_path, shapes_dataset):
    options = {"data": str(shapes_dataset), "cfg": "yolov5n.yaml", "weights": "", "imgsz": 64, "batch_size": 4,
               "workers": 0, "noplots": True, "project": str(tmp_path / "runs"), "name": "guide",
               "sparsification_recipe": GUIDE}
    summary = train.run(**options)
    assert summary["epochs"] == 4  # the recipe, not --epochs, decides the length
    weights_dir = tmp_path / "runs" / "guide" / "weights"
    assert load_checkpoint(weights_dir / "last.pt")["sparsification"]["is_quantized"]
    assert {p.name for p in weights_dir.glob("best_*.pt")} >= {"best_pruned.pt", "best_pruned_quantized.pt"}

    model = load_weights(weights_dir / "last.pt").model  # strict load of the quantized structure
    conv_weights = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 4]
    zeros = sum((p == 0).sum().item() for p in conv_weights) / sum(p.numel() for p in conv_weights)
    assert zeros > 0.75  # __ALL_PRUNABLE__ to 80% (a few convs are not prunable)

    metrics, _, _ = val.run(data=str(shapes_dataset), weights=str(weights_dir / "last.pt"), imgsz=64,
                            batch_size=4, project=str(tmp_path / "val"), plots=False)
    assert len(metrics) == 7 and all(np.isfinite(metrics))

    onnx_path = export.run(weights=str(weights_dir / "last.pt"), imgsz=(64, 64), data=str(shapes_dataset))[0]
    graph = onnx.load(str(onnx_path))
    onnx.checker.check_model(graph)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = np.random.default_rng(0).integers(0, 255, (1, 3, 64, 64), dtype=np.uint8)
    (output,) = session.run(None, {session.get_inputs()[0].name: feed})
    assert output.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 11)
