"""utils/inference.py: one call interface over PyTorch and ONNX runtimes, input dtype handled by the backend."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import export
from models.yolo import DetectionModel
from utils.checkpoint import build_checkpoint, save_checkpoint
from utils.inference import (
    OnnxRuntimeBackend,
    TorchBackend,
    default_runtime,
    list_images,
    load_backend,
    load_letterboxed,
)

NAMES = ["a", "b"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny project checkpoint and its static 64x64 ONNX export."""
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", nc=len(NAMES))
    model.names = list(NAMES)
    checkpoint = build_checkpoint(model_yaml=model.yaml, names=NAMES, model_state=model.state_dict(), ema_state=None,
                                  ema_updates=0, optimizer_state=None, scaler_state=None, epoch=0, best_fitness=0.0,
                                  phase_best_fitness={}, options={}, hyp={}, sparsification={}, final=True)
    path = save_checkpoint(checkpoint, tmp_path_factory.mktemp("inference") / "tiny.pt")
    report = export.export_onnx(path, imgsz=64, device="cpu")
    return path, report.path


def test_pt_loads_fused_in_pytorch_and_takes_uint8_or_float(weights) -> None:
    backend = load_backend(weights[0])
    assert isinstance(backend, TorchBackend) and backend.runtime == "pytorch"
    assert backend.names == NAMES and backend.stride == 32 and backend.imgsz is None and not backend.is_quantized
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backend.model.modules())
    pixels = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    from_uint8, from_float = backend(pixels), backend(pixels.float() / 255)
    assert from_uint8.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 5 + len(NAMES))
    torch.testing.assert_close(from_uint8, from_float)


def test_onnx_backend_matches_pytorch_and_reads_metadata(weights) -> None:
    torch_backend, onnx_backend = load_backend(weights[0]), load_backend(weights[1], runtime="onnxruntime")
    assert isinstance(onnx_backend, OnnxRuntimeBackend) and onnx_backend.runtime == "onnxruntime"
    assert onnx_backend.names == NAMES and onnx_backend.stride == 32
    assert onnx_backend.imgsz == (64, 64) and onnx_backend.batch_size == 1 and not onnx_backend.is_quantized
    assert onnx_backend.input_dtype == torch.float32
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    # a static batch-1 graph still takes a batch of 3: the backend runs it image by image
    torch.testing.assert_close(onnx_backend(pixels), torch_backend(pixels), atol=1e-2, rtol=1e-4)


def test_static_onnx_refuses_another_image_size(weights) -> None:
    backend = load_backend(weights[1], runtime="onnxruntime")
    with pytest.raises(ValueError, match="takes 64x64 images"):
        backend(torch.zeros(1, 3, 96, 96, dtype=torch.uint8))


def test_default_runtime_and_missing_deepsparse(weights, monkeypatch) -> None:
    installed = importlib.util.find_spec("deepsparse") is not None
    assert default_runtime() == ("deepsparse" if installed else "onnxruntime")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "deepsparse" else real_find_spec(name, *args))
    assert default_runtime() == "onnxruntime"  # as on a machine without the optional extra
    assert load_backend(weights[1]).runtime == "onnxruntime"
    with pytest.raises(ImportError, match="deepsparse is not installed: pip install deepsparse==1.8.0"):
        load_backend(weights[1], runtime="deepsparse")


def test_bad_weights_are_refused(weights, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights not found"):
        load_backend(tmp_path / "missing.onnx")
    other = tmp_path / "model.tflite"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported weights format"):
        load_backend(other)
    with pytest.raises(ValueError, match="needs an .onnx file"):
        load_backend(weights[0], runtime="onnxruntime")


def test_list_images_and_letterbox(tmp_path: Path) -> None:
    for name, size in [("wide.jpg", (40, 100)), ("tall.png", (90, 30))]:
        cv2.imwrite(str(tmp_path / name), np.full((*size, 3), 200, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image list entry\n")
    assert [p.name for p in list_images(tmp_path)] == ["tall.png", "wide.jpg"]
    assert [p.name for p in list_images(str(tmp_path / "*.jpg"))] == ["wide.jpg"]
    image, original, (ratio, pad) = load_letterboxed(tmp_path / "wide.jpg", 64)
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and original.shape == (40, 100, 3)
    assert ratio == (0.64, 0.64) and pad[0] == 0
    with pytest.raises(FileNotFoundError, match="source not found"):
        list_images(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(str(tmp_path / "*.bmp"))


def test_deepsparse_matches_onnxruntime_when_installed(weights) -> None:
    pytest.importorskip("deepsparse", reason="DeepSparse runtime not tested: deepsparse is optional and not installed "
                                             "(pip install -r requirements-deploy.txt)")
    deepsparse_backend = load_backend(weights[1], runtime="deepsparse")
    assert deepsparse_backend.runtime == "deepsparse" and deepsparse_backend.names == NAMES
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    expected = load_backend(weights[1], runtime="onnxruntime")(pixels)
    torch.testing.assert_close(deepsparse_backend(pixels), expected, atol=1e-2, rtol=1e-4)
