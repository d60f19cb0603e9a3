"""The integer-to-QDQ rewrite of an exported INT8 ONNX file, for onnxruntime, TensorRT and OpenVINO.

Pure ONNX work (onnx, numpy, onnxruntime for calibration): importable and testable without SparseML.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ QDQ (onnxruntime)
#
# SparseML writes each quantized convolution as ConvInteger(x_q, W_u8, x_zp, 128) -> Add(int32 bias) -> Cast -> Mul(s).
# onnxruntime runs ConvInteger with slow u8u8 kernels, and TensorRT / OpenVINO do not take it. The QDQ form of the
# same convolution is DequantizeLinear(x_q) + DequantizeLinear(W_s8) + DequantizeLinear(bias_s32) -> Conv, which is the
# QAT model's arithmetic exactly (the same learned input scale, weight codes and bias). onnxruntime fuses DQ -> op ->
# Q into integer kernels (QLinearConv, QLinearSigmoid, QLinearMul, QLinearConcat, ...) only when the op's *output* is
# quantized too, and QAT quantizes conv inputs only. So the float tensors between quantized convolutions get Q/DQ pairs:
# - a tensor that already feeds a QAT quantizer reuses it (its other consumers read the learned 8-bit value);
# - MaxPool / nearest Resize outputs take their input's scale (exact);
# - Sigmoid outputs take the fixed range [0, 1] (scale 1/255);
# - conv outputs (before SiLU) and the rest are calibrated on images: post-training quantization of those tensors only.
# The Detect head's convolutions keep a float output (their logits feed the box decode; 8 bits there costs pixels);
# every other integer conv gets a quantized output, also where only float layers read it (before a float Detect).

_QDQ_PASSTHROUGH = ("MaxPool", "Resize")  # outputs lie within the input's range: reuse its quantization exactly
_QDQ_QUANTIZED_OPS = ("Conv", "Sigmoid", "Mul", "Add", "Concat", *_QDQ_PASSTHROUGH)
_ACTIVATION_OPS = ("Sigmoid", "Relu", "LeakyRelu", "HardSwish", "Clip")  # SiLU's Sigmoid, or the YAML's activation


@dataclass
class QdqConversion:
    """What ``integer_to_qdq`` did: how many quantization points of each origin the QDQ graph has."""

    convolutions: int
    learned: int  # activation quantizers from QAT, as in the integer graph (conv inputs, residual adds)
    reused: int  # float branches now read through an existing QAT quantizer
    passthrough: int  # MaxPool / Resize outputs at their input's scale
    fixed: int  # Sigmoid outputs at scale 1/255
    calibrated: int  # ranges measured on calibration images (post-training)
    calibration_images: int

    def note(self) -> str:
        return (f"QDQ: {self.convolutions} convolutions with the QAT scales and int8 weights; {self.learned} learned "
                f"activation quantizers, {self.reused} reused by float branches, {self.passthrough} pass-through, "
                f"{self.fixed} sigmoid at 1/255, {self.calibrated} calibrated on {self.calibration_images} images "
                f"(post-training, so onnxruntime can fuse integer kernels)")


class _Graph:
    """Producer / consumer lookups over an ONNX graph that is edited in place (nodes are kept in order)."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.initializers = {i.name: i for i in self.graph.initializer}
        self._to_array = numpy_helper.to_array
        self._from_array = numpy_helper.from_array
        self.new_initializers: list[Any] = []
        self.refresh(list(self.graph.node))

    def refresh(self, nodes: list[Any]) -> None:
        self.nodes = nodes
        self.producer = {output: node for node in nodes for output in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def array(self, name: str) -> Any:
        return self._to_array(self.initializers[name])

    def constant(self, name: str, value: Any) -> str:
        tensor = self._from_array(value, name)
        self.initializers[name] = tensor
        self.new_initializers.append(tensor)
        return name

    def single_consumer(self, name: str, op_type: str) -> Any | None:
        consumers = self.consumers.get(name, [])
        return consumers[0] if len(consumers) == 1 and consumers[0].op_type == op_type else None

    def save(self, path: str | Path) -> None:
        import onnx

        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        used = {name for node in self.nodes for name in node.input}
        kept = [i for i in self.graph.initializer if i.name in used]
        kept += [i for i in self.new_initializers if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        onnx.save(self.model, str(path))


def _integer_conv_to_qdq(graph: _Graph, node: Any, input_scale: float) -> tuple[list[Any], list[Any], str]:
    """(new nodes, replaced nodes, float output) for one ConvInteger -> Add(bias) -> Cast -> Mul(scale) block."""
    import numpy as np
    from onnx import helper

    name = node.name or node.output[0]
    add = graph.single_consumer(node.output[0], "Add")
    cast = graph.single_consumer((add or node).output[0], "Cast")
    mul = graph.single_consumer(cast.output[0], "Mul") if cast is not None else None
    if cast is None or mul is None:
        raise ValueError(f"ConvInteger {name}: expected (Add bias) -> Cast -> Mul(scale) after it, as SparseML writes")
    combined_name = next((i for i in mul.input if i in graph.initializers), None)
    if combined_name is None:
        raise ValueError(f"ConvInteger {name}: the output scale is not a constant")
    x_q, w_name = node.input[0], node.input[1]
    x_zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
    w_zero_point = graph.array(node.input[3]) if len(node.input) > 3 and node.input[3] else np.zeros((), np.int64)
    quantizer = graph.producer.get(x_q)
    if quantizer is not None and quantizer.op_type == "QuantizeLinear":
        x_scale_name = quantizer.input[1]
    elif quantizer is None:  # the graph input (uint8 pixels): the pinned input scale
        x_scale_name = graph.constant(f"{name}.input_scale", np.array(input_scale, np.float32))
    else:
        raise ValueError(f"ConvInteger {name}: its input comes from {quantizer.op_type}, not a QuantizeLinear")
    if x_zero_point is None:
        x_zero_point = graph.constant(f"{name}.input_zero_point", np.array(0, np.uint8))
    x_scale = float(graph.array(x_scale_name))
    combined = graph.array(combined_name).astype(np.float64).reshape(-1)  # x_scale * w_scale (per tensor or channel)
    weight = graph.array(w_name).astype(np.int32)
    if w_zero_point.ndim == 1 and w_zero_point.size > 1:
        w_zero_point = w_zero_point.reshape(-1, *([1] * (weight.ndim - 1)))
    weight = weight - w_zero_point.astype(np.int32)
    if weight.min() < -128 or weight.max() > 127:
        raise ValueError(f"ConvInteger {name}: weights do not fit int8 around their zero point (not symmetric)")
    axis = [helper.make_attribute("axis", 0)] if combined.size > 1 else []
    w_scale = (combined / x_scale).astype(np.float32)
    shape = (-1,) if combined.size > 1 else ()
    inputs = [graph.constant(f"{name}.weight_int8", weight.astype(np.int8)),
              graph.constant(f"{name}.weight_scale", w_scale.reshape(shape)),
              graph.constant(f"{name}.weight_zero_point", np.zeros(combined.size if axis else (), np.int8))]
    dq_x = helper.make_node("DequantizeLinear", [x_q, x_scale_name, x_zero_point], [f"{name}.input_dq"],
                            name=f"{name}.input_dq")
    dq_w = helper.make_node("DequantizeLinear", inputs, [f"{name}.weight_dq"], name=f"{name}.weight_dq")
    dq_w.attribute.extend(axis)
    conv_inputs = [dq_x.output[0], dq_w.output[0]]
    new_nodes = [dq_x, dq_w]
    replaced = [node, cast, mul]
    if add is not None:
        bias_name = next((i for i in add.input if i in graph.initializers), None)
        if bias_name is None:
            raise ValueError(f"ConvInteger {name}: the bias is not a constant")
        bias = [graph.constant(f"{name}.bias_int32", graph.array(bias_name).reshape(-1).astype(np.int32)),
                graph.constant(f"{name}.bias_scale", combined.astype(np.float32).reshape(shape)),
                graph.constant(f"{name}.bias_zero_point", np.zeros(combined.size if axis else (), np.int32))]
        dq_b = helper.make_node("DequantizeLinear", bias, [f"{name}.bias_dq"], name=f"{name}.bias_dq")
        dq_b.attribute.extend(axis)
        new_nodes.append(dq_b)
        conv_inputs.append(dq_b.output[0])
        replaced.append(add)
    conv = helper.make_node("Conv", conv_inputs, [mul.output[0]], name=f"{name}.conv")
    conv.attribute.extend(node.attribute)
    return [*new_nodes, conv], replaced, mul.output[0]


def _quantized_region(graph: _Graph, conv_outputs: list[str]) -> list[str]:
    """Float tensors on the paths into QAT quantizers (the body between quantized convolutions), in graph order.

    Also the outputs of integer convolutions that an activation follows: onnxruntime fuses a conv only with a quantized
    output, and where float layers alone read the activation (the last C3 before a float Detect head) no path leads
    into a quantizer. Detect's own convs (no activation: their logits feed the decode) stay float-output."""
    hidden = [t for t in conv_outputs if any(c.op_type in _ACTIVATION_OPS for c in graph.consumers.get(t, []))]
    region: set[str] = set()
    stack = [node.input[0] for node in graph.nodes if node.op_type == "QuantizeLinear"] + hidden
    while stack:
        tensor = stack.pop()
        producer = graph.producer.get(tensor)
        if tensor in region or producer is None or producer.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        region.add(tensor)
        stack.extend(i for i in producer.input if i and i not in graph.initializers)
    return [output for node in graph.nodes for output in node.output
            if output in region and node.op_type in _QDQ_QUANTIZED_OPS]


def _calibrate_ranges(model: Any, tensors: list[str], images: Any) -> dict[str, tuple[float, float]]:
    """Per-tensor (min, max) in onnxruntime: the mean over images of each image's extremes, widened to hold 0."""
    import numpy as np
    import onnx
    import onnxruntime

    LOGGER.info("QDQ: calibrating %d activation ranges on %d images...", len(tensors), images.shape[0])
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_meta = session.get_inputs()[0]
    batch = input_meta.shape[0] if isinstance(input_meta.shape[0], int) and input_meta.shape[0] > 0 else 1
    lows, highs = np.zeros(len(tensors)), np.zeros(len(tensors))
    count = 0
    for start in range(0, images.shape[0] - batch + 1, batch):
        outputs = session.run(tensors, {input_meta.name: np.ascontiguousarray(images[start:start + batch])})
        lows += [float(o.min()) for o in outputs]
        highs += [float(o.max()) for o in outputs]
        count += 1
    if not count:
        raise ValueError(f"QDQ calibration needs at least {batch} images (the graph's batch size)")
    return {t: (min(0.0, lo / count), max(0.0, hi / count)) for t, lo, hi in zip(tensors, lows, highs)}


def integer_to_qdq(source: str | Path, destination: str | Path, calibration_images: Any,
                   input_scale: float = 1 / 255) -> QdqConversion:
    """Rewrite SparseML's integer graph (``source``) as a QDQ graph that onnxruntime fuses into integer kernels.

    ``calibration_images``: uint8 (N, 3, H, W) pixels of the graph's input size, N >= its batch size. Weights stay the
    QAT model's int8 codes (pruned weights stay exactly 0), conv inputs keep their learned scales; see the comment
    above for the quantization points added and where their scales come from.
    """
    import numpy as np
    import onnx
    from onnx import helper

    graph = _Graph(onnx.load(str(source)))
    replacements: dict[int, list[Any]] = {}
    removed: set[int] = set()
    conv_outputs: list[str] = []
    for node in graph.nodes:
        if node.op_type == "ConvInteger":
            new_nodes, replaced, output = _integer_conv_to_qdq(graph, node, input_scale)
            replacements[id(node)] = new_nodes
            removed.update(id(n) for n in replaced)
            conv_outputs.append(output)
    convolutions = len(conv_outputs)
    if not convolutions:
        raise ValueError(f"{source} has no ConvInteger nodes: not a SparseML integer export")
    nodes: list[Any] = []
    for node in graph.nodes:
        if id(node) in replacements:
            nodes.extend(replacements[id(node)])
        elif id(node) not in removed:
            nodes.append(node)
    graph.refresh(nodes)
    learned = sum(node.op_type == "QuantizeLinear" for node in nodes)

    region = _quantized_region(graph, conv_outputs)
    plan: dict[str, tuple[str, Any]] = {}  # tensor -> (origin, QuantizeLinear to reuse or (scale, zero point))
    for tensor in region:
        consumers = graph.consumers.get(tensor, [])
        quantizers = [c for c in consumers if c.op_type == "QuantizeLinear"]
        if len(quantizers) == len(consumers):
            continue  # only ever read through its QAT quantizer
        producer = graph.producer[tensor]
        if quantizers:
            plan[tensor] = ("reused", quantizers[0])
        elif producer.op_type in _QDQ_PASSTHROUGH and producer.input[0] in plan:
            plan[tensor] = ("passthrough", producer.input[0])
        elif producer.op_type == "Sigmoid":
            plan[tensor] = ("fixed", (1 / 255, 0))
        else:
            plan[tensor] = ("calibrated", None)
    to_calibrate = [t for t, (origin, _) in plan.items() if origin == "calibrated"]
    if to_calibrate:
        ranges = _calibrate_ranges(_model_with_nodes(graph, nodes),
                                   to_calibrate, calibration_images)
        for tensor, (low, high) in ranges.items():
            scale = max((high - low) / 255, 1e-8)
            plan[tensor] = ("calibrated", (scale, int(np.clip(round(-low / scale), 0, 255))))

    names: dict[str, tuple[str, str]] = {}

    def quantization_of(tensor: str) -> tuple[str, str]:
        origin, value = plan[tensor]
        if origin == "reused":
            return value.input[1], value.input[2]
        if origin == "passthrough":
            return quantization_of(value)
        if tensor not in names:
            scale, zero_point = value
            names[tensor] = (graph.constant(f"{tensor}.scale", np.array(scale, np.float32)),
                             graph.constant(f"{tensor}.zero_point", np.array(zero_point, np.uint8)))
        return names[tensor]

    inserted: dict[int, list[Any]] = {}
    for tensor, (origin, value) in plan.items():
        scale_name, zero_point_name = quantization_of(tensor)
        dequantized = f"{tensor}.dq"
        if origin == "reused":
            after = value
            new_nodes = [helper.make_node("DequantizeLinear", [value.output[0], scale_name, zero_point_name],
                                          [dequantized], name=dequantized)]
        else:
            after = graph.producer[tensor]
            new_nodes = [helper.make_node("QuantizeLinear", [tensor, scale_name, zero_point_name], [f"{tensor}.q"],
                                          name=f"{tensor}.q"),
                         helper.make_node("DequantizeLinear", [f"{tensor}.q", scale_name, zero_point_name],
                                          [dequantized], name=dequantized)]
        inserted.setdefault(id(after), []).extend(new_nodes)
        for consumer in graph.consumers[tensor]:
            if consumer.op_type != "QuantizeLinear":
                for index, name in enumerate(consumer.input):
                    if name == tensor:
                        consumer.input[index] = dequantized
    ordered: list[Any] = []
    for node in nodes:
        ordered.append(node)
        ordered.extend(inserted.get(id(node), []))
    graph.refresh(ordered)
    graph.save(destination)
    origins = [origin for origin, _ in plan.values()]
    return QdqConversion(convolutions=convolutions, learned=learned, reused=origins.count("reused"),
                         passthrough=origins.count("passthrough"), fixed=origins.count("fixed"),
                         calibrated=origins.count("calibrated"),
                         calibration_images=int(calibration_images.shape[0]) if to_calibrate else 0)


def _model_with_nodes(graph: _Graph, nodes: list[Any]) -> Any:
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(graph.new_initializers)
    return model


def onnxruntime_ops(path: str | Path) -> Counter:
    """The ops onnxruntime actually runs after its graph optimizations (fused integer kernels show up here)."""
    import onnx
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="ort-optimized-") as folder:
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3  # the "hardware specific optimizations" warning of serializing level 3
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
