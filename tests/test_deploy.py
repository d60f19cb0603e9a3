"""Deployment files of a quantization-aware model: the QDQ file for onnxruntime (integer kernels fused, pruned zeros
kept, parity with torch), the integer file for DeepSparse (agrees with onnxruntime), and val.py on both runtimes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from test_export import (
    PER_CHANNEL_QAT_RECIPE,
    QAT_RECIPE,
    assert_compared,
    detecting,
    prune_by_magnitude,
    qat_checkpoint,
)

import export
import val
from benchmarks.runtime import condition_batchnorm
from models.yolo import DetectionModel
from utils.dataset_config import check_dataset
from utils.inference import deepsparse_engine, default_runtime, is_qdq_onnx, load_backend
from utils.sparsification.qdq import onnxruntime_ops

HAS_DEEPSPARSE = importlib.util.find_spec("deepsparse") is not None
NEEDS_DEEPSPARSE = pytest.mark.skipif(not HAS_DEEPSPARSE, reason="DeepSparse runtime not tested: deepsparse is "
                                      "optional and not installed (pip install -r requirements-deploy.txt)")
HEAD_CONVS = 3  # Detect's 1x1 convs keep a float output (their logits feed the box decode), so no QLinearConv


def pruned_qat_checkpoint(data: Path, folder: Path, recipe_text: str = QAT_RECIPE, cfg: str = "yolov5n.yaml") -> Path:
    """A pruned (80%) yolov5n QAT checkpoint that detects, made by the training path: recipe manager, one step,
    strict save."""
    names = check_dataset(str(data))["names"]
    images, _, _ = export.sample_images(str(data), (64, 64), 8)
    torch.manual_seed(4)
    model = DetectionModel(cfg, nc=len(names))
    model.names = [names[i] for i in sorted(names)]
    model = condition_batchnorm(model, images)
    prune_by_magnitude(model, 0.8)
    return qat_checkpoint(detecting(model), images, folder / "last.pt", recipe_text)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shapes_dataset: Path) -> export.ExportReport:
    """``export.py --int8-format both`` of the QAT checkpoint: report of last.onnx, QDQ report in ``others``."""
    weights = pruned_qat_checkpoint(shapes_dataset, tmp_path_factory.mktemp("deploy"))
    return export.export_onnx(weights, imgsz=64, data=str(shapes_dataset), calib_data=8, device="cpu",
                              int8_format="both")


@pytest.mark.slow
def test_both_int8_formats_are_written_side_by_side(exported: export.ExportReport) -> None:
    integer, (qdq,) = exported, exported.others
    assert integer.path.name == "last.onnx" and qdq.path.name == "last.qdq.onnx"
    assert integer.summary.ops["ConvInteger"] == 60 and integer.summary.metadata["int8_format"] == "integer"
    assert qdq.summary.metadata["int8_format"] == "qdq" and is_qdq_onnx(qdq.path) and not is_qdq_onnx(integer.path)
    assert default_runtime(qdq.path) == "onnxruntime"  # DeepSparse does not compile QDQ


@pytest.mark.slow
def test_qdq_file_is_quantize_dequantize_around_convolutions(exported: export.ExportReport) -> None:
    qdq = exported.others[0]
    onnx.checker.check_model(str(qdq.path))
    graph = onnx.load(str(qdq.path)).graph
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == 60 and "ConvInteger" not in qdq.summary.ops and "BatchNormalization" not in qdq.summary.ops
    for conv in convs:
        activation, weight = producers[conv.input[0]], producers[conv.input[1]]
        assert activation.op_type == weight.op_type == "DequantizeLinear", conv.name
        assert initializers[weight.input[0]].dtype == np.int8 and initializers[weight.input[2]] == 0  # symmetric
        activation_zero_point = initializers.get(activation.input[2])
        assert activation_zero_point is not None and activation_zero_point.dtype == np.uint8
    assert qdq.summary.input_dtype == "uint8" and qdq.summary.input_shape == [1, 3, 64, 64]
    # onnxruntime fuses every DQ -> Conv -> Q into an integer kernel (all but Detect's float-output head convs)
    fused = onnxruntime_ops(qdq.path)
    assert fused["QLinearConv"] == 60 - HEAD_CONVS and fused["Conv"] == HEAD_CONVS


@pytest.mark.slow
def test_qdq_file_keeps_pruned_zeros_and_matches_torch(exported: export.ExportReport) -> None:
    qdq = exported.others[0]
    print(qdq.check.line(), *qdq.notes, sep="\n")  # pytest -s shows the observed differences
    for each in (exported, qdq):  # both INT8 files compared real detections and their boxes
        assert each.check.passed, each.check.line()
        assert_compared(each.check)
    assert (qdq.check.box_atol, qdq.check.box_rtol, qdq.check.score_tolerance) == export.TOLERANCES["quantized"]
    # every weight pruned in torch is an int8 0 in the file (symmetric weights: zero point 0)
    assert qdq.check.zeros_kept and qdq.check.model_zeros > 0.7 * qdq.summary.conv_weight_elements
    assert qdq.summary.conv_weight_zeros == exported.summary.conv_weight_zeros  # same codes as the integer file


@NEEDS_DEEPSPARSE
@pytest.mark.slow
def test_deepsparse_runs_the_integer_file_like_onnxruntime(exported: export.ExportReport,
                                                           shapes_dataset: Path) -> None:
    images, _, _ = export.sample_images(str(shapes_dataset), (64, 64), 2)
    sparse = load_backend(exported.path, runtime="deepsparse", threads=1)
    reference = load_backend(exported.path, runtime="onnxruntime", threads=1)
    assert sparse.runtime == "deepsparse" and sparse.is_quantized and sparse.input_dtype == torch.uint8
    ours, theirs = sparse(images), reference(images)
    assert ours.shape == theirs.shape == (2, 3 * (8 * 8 + 4 * 4 + 2 * 2), 11)
    assert_within_int8_tolerance(ours, theirs)


def assert_within_int8_tolerance(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Two runtimes' outputs of one INT8 file agree within export.py's quantized tolerances."""
    box_atol, box_rtol, score_tolerance = export.TOLERANCES["quantized"]
    difference = (ours - theirs).abs()
    print(f"deepsparse vs onnxruntime: boxes {float(difference[..., :4].max()):.3g} px, "
          f"scores {float(difference[..., 4:].max()):.3g}")
    assert (difference[..., :4] <= box_atol + box_rtol * theirs[..., :4].abs()).all()
    assert difference[..., 4:].max() <= score_tolerance


@pytest.mark.slow
@NEEDS_DEEPSPARSE
@pytest.mark.parametrize("cfg, recipe_text", [
    ("yolov5n-relu.yaml", QAT_RECIPE),  # a ReLU model, QAT with a recipe written for SiLU
    ("yolov5n.yaml", PER_CHANNEL_QAT_RECIPE),  # weight_strategy: channel, Detect quantized too
], ids=["relu", "per_channel_weights"])
def test_deepsparse_compiles_the_whole_integer_file_and_agrees_with_onnxruntime(cfg: str, recipe_text: str,
                                                                                shapes_dataset: Path,
                                                                                tmp_path: Path) -> None:
    """QAT by the training path, exported as the integer file: DeepSparse compiles all of it (none left to its
    bundled onnxruntime) and agrees with onnxruntime."""
    weights = pruned_qat_checkpoint(shapes_dataset, tmp_path, recipe_text, cfg=cfg)
    report = export.export_onnx(weights, imgsz=64, data=str(shapes_dataset), calib_data=8, device="cpu",
                                int8_format="integer")
    assert report.check.passed, report.check.line()
    assert_compared(report.check)
    images, _, _ = export.sample_images(str(shapes_dataset), (64, 64), 2)
    sparse = load_backend(report.path, runtime="deepsparse", threads=1)
    ours, theirs = sparse(images), load_backend(report.path, runtime="onnxruntime", threads=1)(images)
    assert sparse.runtime == "deepsparse"
    assert deepsparse_engine(report.path, tuple(images.shape), 1).fraction_of_supported_ops == 1.0
    assert_within_int8_tolerance(ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("file, runtime", [
    ("integer", "onnxruntime"),
    ("qdq", "onnxruntime"),
    pytest.param("integer", "deepsparse", marks=NEEDS_DEEPSPARSE),
])
def test_val_runs_an_onnx_file_in_each_runtime(exported: export.ExportReport, shapes_dataset: Path, tmp_path: Path,
                                               file: str, runtime: str) -> None:
    weights = exported.path if file == "integer" else exported.others[0].path
    result = val.run(data=str(shapes_dataset), weights=str(weights), imgsz=64, runtime=runtime, device="cpu",
                     workers=0, project=tmp_path, name="val", plots=False)
    metrics = result.metrics
    assert len(metrics) == 7 and all(np.isfinite(metrics))
    assert 0 <= metrics.map <= metrics.map50 <= 1 and (metrics.precision, metrics.recall) == metrics[:2]
    assert len(result.maps) == 6 and result.speeds_ms[1] > 0


@pytest.mark.slow
def test_a_float_detect_head_exports_in_both_formats(shapes_dataset: Path, tmp_path: Path) -> None:
    """The shipped recipes keep Detect's output convs float (float_modules): both files hold 57 integer convs and 3
    float ones, and each matches the torch model."""
    recipe = QAT_RECIPE.replace("ignore: ['SiLU'", "ignore: ['model.24', 'SiLU'")
    assert recipe != QAT_RECIPE
    weights = pruned_qat_checkpoint(shapes_dataset, tmp_path, recipe)
    integer = export.export_onnx(weights, imgsz=64, data=str(shapes_dataset), calib_data=8, device="cpu",
                                 int8_format="both")
    qdq = integer.others[0]
    assert integer.check.passed and qdq.check.passed, (integer.check.line(), qdq.check.line())
    assert_compared(integer.check)
    assert_compared(qdq.check)
    assert integer.summary.ops["ConvInteger"] == 60 - HEAD_CONVS and integer.summary.ops["Conv"] == HEAD_CONVS
    fused = onnxruntime_ops(qdq.path)
    assert fused["QLinearConv"] == 60 - HEAD_CONVS and fused["Conv"] == HEAD_CONVS
    assert integer.check.zeros_kept and qdq.check.zeros_kept


def test_int8_format_flag(tmp_path: Path, capsys) -> None:
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"")  # parse_opt only checks that the file exists
    assert export.parse_opt(["--weights", str(weights)]).int8_format == "both"
    assert export.parse_opt(["--weights", str(weights), "--int8-format", "qdq"]).int8_format == "qdq"
    with pytest.raises(SystemExit):
        export.parse_opt(["--weights", str(weights), "--int8-format", "qlinear"])
    assert "invalid choice: 'qlinear'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown --int8-format"):
        export.export_onnx(weights, int8_format="qlinear")
