"""Export a YOLOv5 checkpoint to ONNX, then check the file against the PyTorch model.

Usage:
    python export.py --weights runs/train/exp/weights/last.pt --include onnx --imgsz 640
    python export.py --weights last.pt --dynamic --simplify --opset 13
    python export.py --weights yolov5s.pt --one-shot recipes/prune.yaml --data data/coco128.yaml --calib-data 64
    python export.py --weights last.pt --int8-format qdq --data data/shapes.yaml   # quantized: onnxruntime file only

The ONNX file is written beside the weights (``last.pt`` -> ``last.onnx``). Input ``images`` (B, 3, H, W), output
``output0`` (B, anchors, 5 + nc) decoded as in Ultralytics YOLOv5. Dense and pruned models take float32 in [0, 1];
quantized (QAT or one-shot PTQ) models go through SparseML and take **uint8 pixels 0-255**. Every export is checked:
``onnx.checker``, then onnxruntime against the torch model on a real image (``--data``) or a random one, and a
summary (ops, conv weight sparsity, size, input) is printed.

Quantized models have two INT8 formats (``--int8-format``, default ``both``): ``integer`` (``last.onnx``) is SparseML's
ConvInteger graph that DeepSparse compiles natively; ``qdq`` (``last.qdq.onnx``) puts QuantizeLinear/DequantizeLinear
around the convolutions, which onnxruntime fuses into integer kernels (QLinearConv, ...) and TensorRT / OpenVINO take.
onnxruntime runs ConvInteger slower than float, and DeepSparse does not compile QDQ (it hands it to onnxruntime), so
both are written by default. ``utils/sparsification/qdq.py`` says which QDQ scales are learned and which calibrated.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.scripts.make_shapes import render
from utils.augment import letterbox
from utils.boxes import box_iou, non_max_suppression, xywh2xyxy
from utils.dataset_config import check_dataset
from utils.device import select_device
from utils.inference import list_images, load_backend, load_letterboxed
from utils.logs import setup_script_logging
from utils.sparsification.oneshot import apply_one_shot, recipe_has_quantization
from utils.sparsification.qat_export import export_quantized_onnx, pin_input_quantization
from utils.sparsification.qdq import integer_to_qdq, onnxruntime_ops
from utils.sparsification.structure import has_quantization
from utils.sparsification.zoo import is_zoo_stub, resolve_weights
from utils.weights import load_weights

LOGGER = logging.getLogger("export")
FORMATS = ("onnx",)
DEFAULT_OPSET = 13

# Tolerances of the onnxruntime-vs-torch check: (box atol px, box rtol, confidence atol), run on CHECK_IMAGES images.
# A box value passes when |diff| <= atol + rtol * |value|; a confidence is objectness x class probability, what NMS
# thresholds.
# float32: the same float math in another kernel library (measured ~1e-4 px, ~1e-7 on scores): every anchor's box
# and every confidence must agree.
# float16: half-precision rounding through ~60 layers: every anchor, as float32.
# quantized: integer rounding versus torch fake-quant, judged by what a user sees: the torch model's detections
# (NMS at DETECTION_CONF) must be found (DETECTION_MATCH over all images) with boxes within 3 px + 2%. Single anchors
# move more without changing a detection, so their largest confidence difference is reported, not fatal: on the demo's
# QAT yolov5n it reached 0.012 (ConvInteger file) and 0.033 (QDQ file, whose conv outputs are also quantized by
# post-training ranges), and a user's 10-class pruned_quant QDQ file at 192 px differed by 0.081 on one image with
# 4/4 detections matched and a validated mAP@0.5 of 0.469 against the torch model's 0.455. Objectness alone moves by
# up to 0.14 on anchors whose class probabilities are low, and w, h by a few % ((2 * sigmoid) ** 2 * anchor amplifies
# the head's quantization step; 18 px on 350 px boxes nobody would keep). Where detections are, the benchmark's
# trained pruned_quant yolov5n files at 320 px moved boxes by up to 2.4 px and found every detection (4/4, 5/5).
TOLERANCES = {"float32": (1e-2, 1e-4, 1e-4), "float16": (0.5, 1e-2, 1e-2), "quantized": (3.0, 2e-2, 5e-2)}
# Detections (NMS at confidence 0.25, IoU 0.45) of the torch model that onnxruntime must also find: same class, IoU
# >= 0.5, its confidence allowed to sit up to the confidence tolerance below 0.25. Fraction required of the torch ones.
DETECTION_CONF, DETECTION_IOU, DETECTION_MATCH = 0.25, 0.5, 0.9
# Images the check runs: validation images of --data, else built-in shapes images (random pixels detect nothing).
CHECK_IMAGES = 8
INT8_FORMATS = ("both", "integer", "qdq")


@dataclass
class OnnxSummary:
    """What is in an ONNX file: ops, conv weight sparsity (weights equal to their zero point), size, input."""

    path: Path
    ops: Counter
    conv_weights: int  # number of conv weight initializers
    conv_weight_elements: int
    conv_weight_zeros: int  # elements equal to 0 (float) or to the weight zero point (integer)
    layer_sparsity: dict[str, float]
    size_bytes: int
    input_name: str
    input_dtype: str
    input_shape: list
    output_shape: list
    metadata: dict[str, str]

    @property
    def sparsity(self) -> float:
        return self.conv_weight_zeros / max(self.conv_weight_elements, 1)

    def lines(self) -> list[str]:
        ops = ", ".join(f"{op} {n}" for op, n in self.ops.most_common())
        sparse_layers = sum(v >= 0.5 for v in self.layer_sparsity.values())
        return [f"ONNX {self.path} ({self.size_bytes / 1e6:.2f} MB)",
                f"  input  {self.input_name} {self.input_dtype} {self.input_shape}"
                + (" (feed uint8 pixels 0-255)" if self.input_dtype == "uint8" else " (float in [0, 1])"),
                f"  output output0 {self.output_shape}",
                f"  ops    {ops}",
                f"  conv weights: {self.conv_weights} tensors, {self.conv_weight_elements:,} values, "
                f"{self.sparsity:.1%} zero (or at zero point), {sparse_layers} layers at >= 50%"]


@dataclass
class OnnxCheck:
    """onnxruntime versus torch on the check images: max abs differences and the tolerances they were held to."""

    sample: str
    box_diff: float  # max |diff| over box coordinates in pixels, on the boxes compared
    box_allowance_used: float  # max of |diff| / (atol + rtol * |value|): <= 1 passes
    score_diff: float  # max |diff| of objectness x class probability, every anchor and class
    box_atol: float
    box_rtol: float
    score_tolerance: float
    model_zeros: int = 0  # zero conv weights in the torch model
    file_zeros: int = 0  # conv weights at zero (or at the zero point) in the file
    boxes_compared: int = 0  # float: every anchor's box; INT8: the boxes at the anchors of the torch detections
    detections: int = 0  # torch detections at DETECTION_CONF, over all check images
    detections_matched: int = 0  # of those, found by onnxruntime (same class, IoU >= DETECTION_IOU)
    scores_fatal: bool = True  # float files: every confidence within tolerance; INT8 files: reported only

    @property
    def zeros_kept(self) -> bool:
        return self.file_zeros >= self.model_zeros

    @property
    def detections_agree(self) -> bool:
        return self.detections_matched >= DETECTION_MATCH * self.detections

    def failures(self) -> list[str]:
        """Why the file fails its check, one phrase per reason (empty when it passes)."""
        reasons = []
        if not self.detections_agree:
            reasons.append(f"only {self.detections_matched}/{self.detections} of the torch model's detections found "
                           f"({DETECTION_MATCH:.0%} required)")
        if self.box_allowance_used > 1:
            reasons.append(f"boxes differ by up to {self.box_diff:.3g} px ({self.box_allowance_used:.0%} of the "
                           f"allowed {self.box_atol:g} px + {self.box_rtol:g} * |value|)")
        if self.scores_fatal and self.score_diff > self.score_tolerance:
            reasons.append(f"confidences differ by up to {self.score_diff:.3g} (tolerance {self.score_tolerance:g})")
        if not self.zeros_kept:
            reasons.append(f"{self.model_zeros - self.file_zeros:,} pruned weights are no longer zero in the file")
        return reasons

    @property
    def passed(self) -> bool:
        return not self.failures()

    def line(self) -> str:
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.failures())
        detections = f"detections {self.detections_matched}/{self.detections} matched"
        if not self.detections:
            detections += f" (the torch model detects nothing at confidence {DETECTION_CONF:g} on these images)"
        if self.scores_fatal:
            boxes = f"boxes max |diff| {self.box_diff:.3g} px on every anchor"
            confidences = f"confidences {self.score_diff:.3g} (tolerance {self.score_tolerance:g})"
        else:
            boxes = f"boxes of the {self.boxes_compared} detections max |diff| {self.box_diff:.3g} px"
            confidences = f"largest confidence difference on any anchor {self.score_diff:.3g} (reported, not judged)"
        return (f"  check  onnxruntime vs torch on {self.sample}: {detections}; {boxes} "
                f"({self.box_allowance_used:.0%} of the allowed {self.box_atol:g} px + {self.box_rtol:g} * |value|); "
                f"{confidences}; zero conv weights torch {self.model_zeros:,}, file {self.file_zeros:,}: {verdict}")


@dataclass
class ExportReport:
    path: Path
    quantized: bool
    summary: OnnxSummary
    check: OnnxCheck
    notes: list[str] = field(default_factory=list)
    others: list[ExportReport] = field(default_factory=list)  # the second INT8 format (--int8-format both)


class ExportCheckError(RuntimeError):
    """The written file failed its check (onnx.checker or the onnxruntime comparison)."""


def _elem_type_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def _dims(value_info: Any) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in
            value_info.type.tensor_type.shape.dim]


def summarize_onnx(path: str | Path) -> OnnxSummary:
    """Count ops and measure conv weight sparsity; integer weights count as zero where they equal the zero point."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    # (weight input index, weight zero-point input index or None) per convolution op
    weight_inputs = {"Conv": (1, None), "ConvInteger": (1, 3), "QLinearConv": (3, 5)}
    producers = {output: node for node in graph.node for output in node.output}
    elements = zeros = count = 0
    layers: dict[str, float] = {}
    for node in graph.node:
        if node.op_type not in weight_inputs:
            continue
        w_index, zp_index = weight_inputs[node.op_type]
        dequantize = producers.get(node.input[w_index]) if len(node.input) > w_index else None
        if dequantize is not None and dequantize.op_type == "DequantizeLinear":  # QDQ: int8 weight and zero point
            node, w_index, zp_index = dequantize, 0, 2
        if len(node.input) <= w_index or node.input[w_index] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[w_index]])
        zero_point = np.zeros((), dtype=weight.dtype)
        if zp_index is not None and len(node.input) > zp_index and node.input[zp_index] in initializers:
            zero_point = numpy_helper.to_array(initializers[node.input[zp_index]])
            if zero_point.ndim == 1 and zero_point.size == weight.shape[0]:  # per output channel
                zero_point = zero_point.reshape(-1, *([1] * (weight.ndim - 1)))
        layer_zeros = int((weight == zero_point).sum())
        layers[node.name or node.input[w_index]] = layer_zeros / weight.size
        elements, zeros, count = elements + weight.size, zeros + layer_zeros, count + 1
    graph_input = next(i for i in graph.input if i.name not in initializers)
    return OnnxSummary(path=path, ops=Counter(node.op_type for node in graph.node), conv_weights=count,
                       conv_weight_elements=elements, conv_weight_zeros=zeros, layer_sparsity=layers,
                       size_bytes=path.stat().st_size, input_name=graph_input.name,
                       input_dtype=_elem_type_name(graph_input.type.tensor_type.elem_type),
                       input_shape=_dims(graph_input), output_shape=_dims(graph.output[0]),
                       metadata={p.key: p.value for p in model.metadata_props})


def write_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Store ``names``, ``stride`` and friends in metadata_props so that detect/val read them back from the file."""
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def simplify_onnx(path: str | Path) -> bool:
    """Simplify with onnxsim when it is installed; warn and keep the file as is otherwise."""
    try:
        import onnxsim
    except ImportError:
        LOGGER.warning("--simplify skipped: onnxsim is not installed (pip install onnxsim)")
        return False
    import onnx

    simplified, ok = onnxsim.simplify(onnx.load(str(path)))
    if not ok:
        LOGGER.warning("--simplify: onnxsim could not validate the simplified graph; keeping the original")
        return False
    onnx.save(simplified, str(path))
    return True


def export_dense_onnx(model: torch.nn.Module, path: str | Path, sample: torch.Tensor, opset: int = DEFAULT_OPSET,
                      dynamic: bool = False) -> Path:
    """``torch.onnx.export`` (TorchScript exporter; the dynamo one needs onnxscript) of a fused float model."""
    detect = model.detect
    detect.export = True  # instance attributes: the class defaults stay untouched for other models
    detect.dynamic = dynamic  # rebuild grids from the traced input shape
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}} if dynamic \
        else None
    torch.onnx.export(model, sample, str(path), opset_version=opset, input_names=["images"],
                      output_names=["output0"], dynamic_axes=axes, do_constant_folding=True, dynamo=False)
    return Path(path)


def check_onnx(path: str | Path, model: torch.nn.Module, images: torch.Tensor, sample_name: str, kind: str,
               device: torch.device) -> OnnxCheck:
    """Run onnxruntime and the torch model on the same uint8 images; compare outputs and zero conv weights."""
    import onnx


    onnx.checker.check_model(str(path))
    try:
        backend = load_backend(path, device=device, runtime="onnxruntime")
        onnx_output = backend(images).float()
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
        if kind != "float16":
            raise
        # onnxruntime's CPU provider lacks float16 kernels for some ops; onnxruntime-gpu runs them
        LOGGER.warning("float16 check skipped: onnxruntime could not run the graph here (%s); onnx.checker passed",
                       str(error).splitlines()[0][:200])
        return OnnxCheck(sample=f"{sample_name} (skipped: no float16 onnxruntime)", box_diff=0.0,
                         box_allowance_used=0.0, score_diff=0.0, box_atol=0.0, box_rtol=0.0, score_tolerance=0.0)
    parameter = next(model.parameters())
    with torch.inference_mode():
        torch_output = model(images.to(parameter.device).to(parameter.dtype) / 255)[0].float().cpu()
    box_atol, box_rtol, score_tolerance = TOLERANCES[kind]
    confidences = (onnx_output[..., 4:5] * onnx_output[..., 5:] - torch_output[..., 4:5] * torch_output[..., 5:]).abs()
    matches = match_detections(torch_output, onnx_output, score_tolerance)
    scores_fatal = kind != "quantized"
    if scores_fatal:  # float: every anchor's box
        reference, candidate = torch_output[..., :4].reshape(-1), onnx_output[..., :4].reshape(-1)
    else:  # INT8: the box each torch detection's anchor has in the file
        reference, candidate = torch_output[matches.anchors][:, :4].reshape(-1), onnx_output[matches.anchors][:, :4]
        candidate = candidate.reshape(-1)
    box_difference = (candidate - reference).abs()
    allowance = box_difference / (box_atol + box_rtol * reference.abs())
    model_zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return OnnxCheck(sample=sample_name, box_diff=float(box_difference.max()) if box_difference.numel() else 0.0,
                     box_allowance_used=float(allowance.max()) if allowance.numel() else 0.0,
                     score_diff=float(confidences.max()), box_atol=box_atol, box_rtol=box_rtol,
                     score_tolerance=score_tolerance, model_zeros=model_zeros,
                     file_zeros=summarize_onnx(path).conv_weight_zeros, boxes_compared=reference.numel() // 4,
                     detections=matches.total, detections_matched=matches.matched, scores_fatal=scores_fatal)


@dataclass
class DetectionMatches:
    """The torch model's detections, how many another output also detects, and the anchor of each detection."""

    total: int
    matched: int
    anchors: tuple[torch.Tensor, torch.Tensor]  # (image index, anchor index) of every torch detection


def match_detections(reference: torch.Tensor, candidate: torch.Tensor, score_tolerance: float) -> DetectionMatches:
    """Detections of ``reference`` that ``candidate`` also detects: same class, IoU >= DETECTION_IOU."""
    wanted = non_max_suppression(reference, conf_thres=DETECTION_CONF, iou_thres=0.45)
    found = non_max_suppression(candidate, conf_thres=max(DETECTION_CONF - score_tolerance, 0.0), iou_thres=0.45)
    total = matched = 0
    images, anchors = [], []
    for image, (ours, theirs) in enumerate(zip(wanted, found)):
        total += len(ours)
        if len(ours) and len(theirs):
            same_class = ours[:, 5:6] == theirs[:, 5].unsqueeze(0)
            matched += int(((box_iou(ours[:, :4], theirs[:, :4]) >= DETECTION_IOU) & same_class).any(1).sum())
        if len(ours):  # NMS keeps anchors' boxes unchanged: find each detection's anchor by its box
            anchors.append(torch.cdist(ours[:, :4], xywh2xyxy(reference[image, :, :4])).argmin(1))
            images.append(torch.full_like(anchors[-1], image))
    empty = torch.zeros(0, dtype=torch.long)
    return DetectionMatches(total=total, matched=matched, anchors=(torch.cat(images) if images else empty,
                                                                   torch.cat(anchors) if anchors else empty))


def check_images(data: str | None, imgsz: tuple[int, int], stride: int = 32,
                 count: int = CHECK_IMAGES) -> tuple[torch.Tensor, str]:
    """Letterboxed uint8 images for the check: up to ``count`` of ``data``'s val split, else built-in shapes images."""
    if data:
        files = list_images(check_dataset(data)["val"])[:count]
        images = torch.stack([load_letterboxed(f, imgsz, stride=stride)[0] for f in files])
        return images, files[0].name if len(files) == 1 else f"{len(files)} images of {data}"
    images = []
    for index in range(count):
        image, _ = render(320, np.random.default_rng(index))  # as data/shapes.yaml draws them
        boxed = letterbox(image, imgsz, stride=stride)[0]
        images.append(torch.from_numpy(np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1))))
    return torch.stack(images), f"{count} built-in shapes images (pass --data for images of your own)"


def sample_images(data: str | None, imgsz: tuple[int, int], count: int, stride: int = 32,
                  seed: int = 0) -> tuple[torch.Tensor, str, list[Path]]:
    """``count`` letterboxed uint8 images of ``data``'s val split, else random pixels: (images, description, files)."""
    if not data:
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (count, 3, *imgsz), dtype=torch.uint8, generator=generator)
        return images, "random pixels", []

    files = list_images(check_dataset(data)["val"])[:count]
    images = torch.stack([load_letterboxed(f, imgsz, stride=stride)[0] for f in files])
    if images.shape[0] < count:  # a tiny val split: repeat it
        images = images.repeat((count + images.shape[0] - 1) // images.shape[0], 1, 1, 1)[:count]
    description = files[0].name if count == 1 else f"{len(files)} images of {data}"
    return images, description, files


def _check_image_size(imgsz: list[int] | tuple[int, ...] | int, stride: int) -> tuple[int, int]:
    sizes = [imgsz] * 2 if isinstance(imgsz, int) else list(imgsz) * (2 if len(imgsz) == 1 else 1)
    fixed = tuple(max(stride, int(np.ceil(x / stride)) * stride) for x in sizes[:2])
    if list(fixed) != sizes[:2]:
        LOGGER.warning("--imgsz %s is not a multiple of the stride %d; using %s", sizes[:2], stride, list(fixed))
    return fixed


def export_onnx(weights: str | Path, imgsz: int | tuple[int, ...] = (640, 640), batch_size: int = 1,
                opset: int = DEFAULT_OPSET, dynamic: bool = False, simplify: bool = False, half: bool = False,
                device: str = "", one_shot: str | None = None, data: str | None = None,
                calib_data: int = 64, int8_format: str = "both", recipe_args: str | dict | None = None) -> ExportReport:
    """Load, optionally one-shot sparsify, export, check and summarize (``report.check.passed`` says if it matched).

    A quantized model is written as ``int8_format``: ``integer`` (``W.onnx``), ``qdq`` (``W.qdq.onnx``) or ``both``
    (the QDQ report is then in ``report.others``).
    """
    if is_zoo_stub(str(weights)):
        weights = resolve_weights(str(weights))
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights not found: {weights}")
    if int8_format not in INT8_FORMATS:
        raise ValueError(f"unknown --int8-format {int8_format}: choose {', '.join(INT8_FORMATS)}")
    device = select_device(device)
    if half and device.type != "cuda":
        raise ValueError("--half needs a CUDA device (--device 0); float16 export is not supported on the CPU")
    started = time.time()
    model = load_weights(weights).model.float().eval()
    stride = int(model.stride.max())
    imgsz = _check_image_size(imgsz, stride)
    notes: list[str] = []
    if one_shot:
        calibration = None
        if one_shot_needs_calibration(one_shot):
            if not data:
                raise ValueError("--one-shot with a quantization recipe needs --data for calibration images")
            calibration, _, _ = sample_images(data, imgsz, calib_data, stride)
        result = apply_one_shot(model, one_shot, calibration_images=calibration, recipe_args=recipe_args)
        notes.extend(result.notes)
    quantized = has_quantization(model)
    if quantized and half:
        raise ValueError("--half does not apply to a quantized model (it is already 8-bit)")
    path = weights.with_suffix(".onnx")
    files: list[tuple[Path, str, list[str]]] = []  # (file, int8 format or "", notes of that file)
    if quantized:
        original = pin_input_quantization(model, imgsz)
        if original is None:
            raise ValueError("quantized model without an 8-bit input quantizer; cannot export uint8 input")
        notes.append(f"input quantizer pinned to 0-255 pixels (scale 1/255) from scale {original.original_scale:.6g}"
                     f" zero point {original.original_zero_point}")
        with tempfile.TemporaryDirectory(dir=weights.parent, prefix=".export-") as folder:
            integer_path = path if int8_format != "qdq" else Path(folder) / path.name  # qdq alone: an intermediate
            export_quantized_onnx(model, integer_path, imgsz, batch_size=batch_size, opset=opset, dynamic=dynamic)
            if int8_format != "qdq":
                files.append((path, "integer", notes))
            if int8_format != "integer":
                qdq_path = weights.with_suffix(".qdq.onnx")
                qdq_notes = _write_qdq(integer_path, qdq_path, data, imgsz, max(calib_data, batch_size), stride)
                files.append((qdq_path, "qdq", qdq_notes if int8_format == "both" else notes + qdq_notes))
        kind = "quantized"
    else:
        model = model.fuse()
        if device.type != "cpu":
            model = model.to(device)
        if half:
            model = model.half()
        sample = torch.zeros(batch_size, 3, *imgsz, device=device, dtype=torch.float16 if half else torch.float32)
        export_dense_onnx(model, path, sample, opset=opset, dynamic=dynamic)
        kind = "float16" if half else "float32"
        files.append((path, "", notes))
    model.detect.export = False  # the check reads the (decoded, raw) tuple like any caller
    names = {i: str(n) for i, n in enumerate(model.names)}
    images, description = check_images(data, imgsz, stride)
    reports = []
    for file, file_format, file_notes in files:
        if simplify and file_format != "qdq" and simplify_onnx(file):  # onnxsim would fold the weights' Q/DQ away
            file_notes.append("simplified with onnxsim")
        metadata = {"stride": stride, "names": names, "quantized": quantized, "imgsz": list(imgsz),
                    "batch": "dynamic" if dynamic else batch_size, "source": weights.name,
                    "input": "uint8 0-255" if quantized else f"{kind} 0-1",
                    "description": "YOLOv5 (yolov5-sparse export.py)"}
        write_metadata(file, {**metadata, "int8_format": file_format} if file_format else metadata)
        check = check_onnx(file, model, images, description, kind, device)
        reports.append(ExportReport(path=file, quantized=quantized, summary=summarize_onnx(file), check=check,
                                    notes=file_notes))
    reports[0].notes.append(f"exported in {time.time() - started:.1f}s")
    reports[0].others = reports[1:]
    return reports[0]


def _write_qdq(integer_path: Path, qdq_path: Path, data: str | None, imgsz: tuple[int, int], count: int,
               stride: int) -> list[str]:
    """Write the QDQ file from the integer graph (ranges QAT did not learn calibrated on ``data``); its notes."""
    if not data:
        LOGGER.warning("QDQ export without --data: the activation ranges that QAT did not learn are calibrated on "
                       "random pixels; pass --data for real images")
    images, description, _ = sample_images(data, imgsz, count, stride, seed=1)
    conversion = integer_to_qdq(integer_path, qdq_path, images.numpy())
    fused = onnxruntime_ops(qdq_path)
    integer_ops = {op: n for op, n in fused.most_common() if op.startswith("QLinear") or op == "ConvInteger"}
    return [f"{conversion.note()} ({description})",
            "onnxruntime runs it as " + (", ".join(f"{op} {n}" for op, n in integer_ops.items())
                                         or "float ops only (no integer kernels fused)")]


def one_shot_needs_calibration(recipe: str) -> bool:
    """Whether the recipe quantizes (then post-training calibration images are needed)."""
    return recipe_has_quantization(recipe)


def run(weights: str | Path = "yolov5s.pt", include: tuple[str, ...] | list[str] = ("onnx",),
        imgsz: int | tuple[int, ...] = (640, 640), batch_size: int = 1, opset: int = DEFAULT_OPSET,
        dynamic: bool = False, simplify: bool = False, half: bool = False, device: str = "",
        one_shot: str | None = None, data: str | None = None, calib_data: int = 64,
        int8_format: str = "both", recipe_args: str | None = None) -> list[Path]:
    """Python entry point; returns the exported files (two for a quantized model with ``int8_format="both"``)."""
    unsupported = [x for x in include if x.lower() not in FORMATS]
    if unsupported:
        raise ValueError(f"unsupported --include {', '.join(unsupported)}: this repository exports "
                         f"{', '.join(FORMATS)} only")
    report = export_onnx(weights, imgsz=imgsz, batch_size=batch_size, opset=opset, dynamic=dynamic,
                         simplify=simplify, half=half, device=device, one_shot=one_shot, data=data,
                         calib_data=calib_data, int8_format=int8_format, recipe_args=recipe_args)
    reports = [report, *report.others]
    for each in reports:
        for line in [*each.summary.lines(), each.check.line(), *(f"  note   {n}" for n in each.notes)]:
            print(line)
    failed = [each for each in reports if not each.check.passed]
    if failed:
        raise ExportCheckError(" ".join(check_failure_message(each) for each in failed))
    return [each.path for each in reports]


def check_failure_message(report: ExportReport) -> str:
    """Name the file, say how it differs from the torch model, and what to do about it."""
    if report.path.name.endswith(".qdq.onnx"):
        fix = ("its added activation ranges come from calibration: re-export with --data and more --calib-data "
               "images, or deploy the integer file (--int8-format integer)")
    elif report.quantized:
        fix = "re-export from the checkpoint; if it fails again, report it with the checkpoint"
    else:
        fix = "try another --opset or drop --simplify; if it fails again, report it with the checkpoint"
    return (f"{report.path} was written but does not reproduce the torch model in onnxruntime "
            f"({'; '.join(report.check.failures())}): do not deploy it; {fix}.")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export a YOLOv5 checkpoint to ONNX (checked with onnxruntime)")
    parser.add_argument("--weights", type=str, required=True, help="checkpoint .pt (project or official YOLOv5)")
    parser.add_argument("--include", nargs="+", default=["onnx"], help="formats: onnx")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="image (h, w)")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size of a static graph")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0, or cpu")
    parser.add_argument("--half", action="store_true", help="float16 export (CUDA only)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument("--simplify", action="store_true", help="simplify with onnxsim when installed")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (quantized export: >= 13)")
    parser.add_argument("--one-shot", type=str, default=None, help="recipe to apply without training before export")
    parser.add_argument("--recipe-args", type=str, default=None,
                        help="--one-shot recipe variables, JSON or key=value,... e.g. '{\"mask_type\": [1, 4]}'")
    parser.add_argument("--data", type=str, default=None, help="dataset YAML: check image, one-shot calibration")
    parser.add_argument("--calib-data", type=int, default=64,
                        help="number of val images to calibrate one-shot PTQ and the QDQ file's added ranges")
    parser.add_argument("--int8-format", choices=INT8_FORMATS, default="both",
                        help="quantized models: integer (W.onnx, for DeepSparse), qdq (W.qdq.onnx, for onnxruntime, "
                             "TensorRT, OpenVINO) or both")
    opt = parser.parse_args(argv)

    unsupported = [x for x in opt.include if x.lower() not in FORMATS]
    if unsupported:
        parser.error(f"unsupported --include {', '.join(unsupported)}: this repository exports {', '.join(FORMATS)}")
    if not Path(opt.weights).is_file() and not is_zoo_stub(opt.weights):
        parser.error(f"--weights {opt.weights} not found")
    if opt.half and (opt.device.strip().lower() == "cpu" or not torch.cuda.is_available()):
        parser.error("--half needs a CUDA device (--device 0); float16 export is not supported on the CPU")
    if opt.one_shot and not Path(opt.one_shot).is_file() and not is_zoo_stub(opt.one_shot):
        parser.error(f"--one-shot recipe {opt.one_shot} not found")
    if opt.one_shot and not opt.data and Path(opt.one_shot).is_file() and one_shot_needs_calibration(opt.one_shot):
        parser.error("--one-shot with a quantization recipe needs --data for calibration images")
    if opt.recipe_args and not opt.one_shot:
        parser.error("--recipe-args sets variables of the --one-shot recipe; pass --one-shot RECIPE too")
    if opt.batch_size < 1 or opt.calib_data < 1:
        parser.error("--batch-size and --calib-data must be positive")
    return opt


def main(opt: argparse.Namespace) -> None:
    setup_script_logging()
    try:
        run(**vars(opt))
    except (ExportCheckError, ValueError, FileNotFoundError, RuntimeError) as error:
        raise SystemExit(f"export.py: error: {error}") from error


if __name__ == "__main__":
    main(parse_opt(sys.argv[1:]))
