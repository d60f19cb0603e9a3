"""ONNX export of quantization-aware (QAT) models through SparseML, honouring --opset, --dynamic and --batch-size.

SparseML's ``ModuleExporter(convert_qat=True)`` folds fake-quantize + BatchNorm into integer convolutions
(ConvInteger / QLinearConv) that DeepSparse runs fast. The input QuantizeLinear is then removed, so the graph takes
**uint8 pixels 0-255** (not [0, 1] floats): that saves a float pass over every image. For that to be exact the
network's input quantizer is pinned to scale 1/255 and the zero point that maps pixel 0 to the lowest code
(``pin_input_quantization``). sparseml is imported inside the calls; the QDQ conversion for onnxruntime is in
``qdq.py``.
"""

from __future__ import annotations

import logging
import tempfile
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

LOGGER = logging.getLogger(__name__)

MIN_QAT_OPSET = 13  # SparseML refuses QAT export below 13 (quantize ops on per-channel/affine tensors)


@dataclass
class InputQuantization:
    """The input quantizer before and after pinning it to 0-255 pixel codes."""

    original_scale: float
    original_zero_point: int
    scale: float
    zero_point: int


def _find_input_quantizer(model: nn.Module, sample: torch.Tensor) -> FakeQuantizeBase | None:
    # The first fake-quantize whose input is the network input itself (whatever wrapper structure the recipe made).
    found: list[FakeQuantizeBase] = []

    def hook(module: nn.Module, args: tuple) -> None:
        if not found and args and isinstance(args[0], torch.Tensor) and args[0].shape == sample.shape \
                and torch.equal(args[0], sample):
            found.append(module)

    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    observer_states = [m.observer_enabled.clone() for m in quantizers]
    handles = [m.register_forward_pre_hook(hook) for m in quantizers]
    try:
        for m in quantizers:
            m.disable_observer()  # probing must not move any observer's range
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
        for m, state in zip(quantizers, observer_states):
            m.observer_enabled.copy_(state)
    return found[0] if found else None


def pin_input_quantization(model: nn.Module, imgsz: tuple[int, int] = (64, 64)) -> InputQuantization | None:
    """Set the input quantizer (in place) to scale 1/255 and the zero point of pixel 0, observer off.

    Then quantizing an image in [0, 1] gives exactly its 8-bit pixel codes, so the exported graph that takes uint8
    0-255 computes what the torch model computes on ``pixels / 255``. Returns None when no 8-bit input quantizer
    exists (the graph then keeps a float input).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sample = torch.rand(1, 3, *imgsz, device=device)
    quantizer = _find_input_quantizer(model, sample)
    model.train(was_training)
    if quantizer is None:
        return None
    quant_min, quant_max = int(quantizer.quant_min), int(quantizer.quant_max)
    if quant_max - quant_min != 255:
        LOGGER.warning("input quantizer is not 8-bit (range %d..%d); not pinned", quant_min, quant_max)
        return None
    original = InputQuantization(float(quantizer.scale.flatten()[0]), int(quantizer.zero_point.flatten()[0]),
                                 1 / 255, quant_min)
    with torch.no_grad():
        quantizer.scale.copy_(torch.full_like(quantizer.scale, 1 / 255))
        quantizer.zero_point.copy_(torch.full_like(quantizer.zero_point, quant_min))
        observer = getattr(quantizer, "activation_post_process", None)
        if observer is not None and hasattr(observer, "min_val") and hasattr(observer, "max_val"):
            observer.min_val.copy_(torch.zeros_like(observer.min_val))  # keep the observer consistent with the pin
            observer.max_val.copy_(torch.ones_like(observer.max_val))
    quantizer.disable_observer()
    return original


def export_quantized_onnx(model: nn.Module, path: str | Path, imgsz: tuple[int, int], batch_size: int = 1,
                          opset: int = 13, dynamic: bool = False) -> Path:
    """Write a QAT model as an integer ONNX graph with input ``images`` (uint8 0-255) and output ``output0``.

    Call ``pin_input_quantization`` first so that uint8 input is exact. ``dynamic`` makes batch, height and width
    symbolic; otherwise the input is fixed to ``[batch_size, 3, *imgsz]`` (SparseML always exports batch dynamic,
    so the static shape is written back afterwards).
    """
    import onnx
    from sparseml.pytorch.sparsification.quantization import skip_onnx_input_quantize
    from sparseml.pytorch.utils import ModuleExporter

    if opset < MIN_QAT_OPSET:
        raise ValueError(f"quantized export needs --opset {MIN_QAT_OPSET} or higher (got {opset})")
    path = Path(path)
    model = deepcopy(model).cpu().eval()
    detect = model.detect
    detect.export = True
    detect.dynamic = dynamic
    sample = torch.rand(batch_size, 3, *imgsz)
    with torch.no_grad():
        _, anchors, outputs = model(sample)[0].shape  # (batch, anchors, 5 + number of classes)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}} if dynamic \
        else {}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as folder:
        ModuleExporter(model, folder).export_onnx(
            sample, name="model.onnx", opset=opset, convert_qat=True, dynamo=False,
            input_names=["images"], output_names=["output0"], dynamic_axes=axes)
        graph = onnx.load(str(Path(folder) / "model.onnx"))
    skip_onnx_input_quantize(graph)  # input becomes uint8; raises when no single input quantize exists
    _scalar_weight_zero_points(graph)
    if dynamic:
        _set_shape(graph.graph.input[0], ["batch", 3, "height", "width"])
        _set_shape(graph.graph.output[0], ["batch", "anchors", outputs])
    else:
        _set_shape(graph.graph.input[0], [batch_size, 3, *imgsz])
        _set_shape(graph.graph.output[0], [batch_size, anchors, outputs])
    onnx.save(graph, str(path))
    return path


def _scalar_weight_zero_points(graph: Any) -> None:
    """Write each ConvInteger's per-channel weight zero point as one scalar when its entries are equal.

    Per-channel weight scales (``strategy: channel``) make SparseML write a zero point per output channel, all equal
    for symmetric weights; onnxruntime's ConvInteger rejects any zero point that is not a scalar ("Non per-tensor
    quantization is not supported") while per-channel *scales* live in the rescale Mul, so one scalar is exact.
    Unequal zero points (asymmetric weights) are an error.
    """
    import numpy as np
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    scalars: dict[str, str] = {}
    for node in graph.graph.node:
        if node.op_type != "ConvInteger" or len(node.input) < 4 or node.input[3] not in initializers:
            continue
        zero_point = numpy_helper.to_array(initializers[node.input[3]])
        if zero_point.size <= 1:
            continue
        if not (zero_point == zero_point.flat[0]).all():
            raise ValueError(f"{node.name}: per-channel weight zero points differ (asymmetric weights); "
                             "onnxruntime's ConvInteger takes one zero point: quantize weights with symmetric: true")
        name = scalars.get(node.input[3])
        if name is None:
            name = scalars[node.input[3]] = f"{node.input[3]}.scalar"
            graph.graph.initializer.append(numpy_helper.from_array(np.array(zero_point.flat[0], zero_point.dtype),
                                                                   name))
        node.input[3] = name
    used = {name for node in graph.graph.node for name in node.input}
    kept = [tensor for tensor in graph.graph.initializer if tensor.name in used or tensor.name not in scalars]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)  # the replaced per-channel zero points are gone, everything else stays


def _set_shape(value_info: Any, dims: list) -> None:
    # SparseML leaves batch (and the output) symbolic with generated names; write the shape export.py promises.
    shape = value_info.type.tensor_type.shape
    shape.ClearField("dim")
    for value in dims:
        dim = shape.dim.add()
        if isinstance(value, int):
            dim.dim_value = value
        else:
            dim.dim_param = value
