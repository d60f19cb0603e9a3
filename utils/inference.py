"""One interface over the inference backends (PyTorch, onnxruntime, DeepSparse) for letterboxed image batches.

Every backend takes a (B, 3, H, W) tensor, uint8 pixels (0-255) or floats in [0, 1], converts it to what the model
expects (quantized ONNX graphs take uint8, the others float), and returns the decoded predictions (B, N, 5 + nc) in
Ultralytics' layout: x, y, w, h in pixels of the input, objectness, class probabilities. detect.py and val.py then
need no backend-specific code.
"""

from __future__ import annotations

import abc
import argparse
import ast
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch

from utils.augment import letterbox
from utils.dataset import IMG_FORMATS, collect_image_files, read_image
from utils.device import select_device
from utils.sparsification.structure import has_quantization
from utils.sparsification.zoo import is_zoo_stub, resolve_weights
from utils.weights import load_weights

LOGGER = logging.getLogger(__name__)

RUNTIMES = ("pytorch", "onnxruntime", "deepsparse")
DEEPSPARSE_MISSING = "deepsparse is not installed: pip install deepsparse==1.8.0"

# ONNX tensor element types this project exports, as their onnxruntime type strings and torch dtypes.
_ORT_TYPES = {"tensor(uint8)": torch.uint8, "tensor(float)": torch.float32, "tensor(float16)": torch.float16}
_ONNX_ELEM_TYPES = {2: torch.uint8, 1: torch.float32, 10: torch.float16}


class Backend(abc.ABC):
    """A loaded model: call it on a batch, read ``stride``, ``names``, ``imgsz``, ``is_quantized``, ``runtime``."""

    runtime = "none"

    def __init__(self, weights: str | Path, *, names: list[str], stride: int, imgsz: tuple[int, int] | None,
                 batch_size: int | None, input_dtype: torch.dtype, is_quantized: bool,
                 device: torch.device) -> None:
        self.weights = str(weights)
        self.names = list(names)
        self.stride = int(stride)
        self.imgsz = imgsz  # (height, width) when the model only accepts that size, else None
        self.batch_size = batch_size  # fixed batch of a static graph, else None
        self.input_dtype = input_dtype
        self.is_quantized = is_quantized
        self.device = device

    @property
    def dynamic(self) -> bool:
        """True when any input size is accepted (PyTorch, or ONNX exported with --dynamic)."""
        return self.imgsz is None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
        if self.imgsz is not None and tuple(images.shape[2:]) != tuple(self.imgsz):
            raise ValueError(f"{self.weights} takes {self.imgsz[0]}x{self.imgsz[1]} images (exported without "
                             f"--dynamic), got {images.shape[2]}x{images.shape[3]}; letterbox to that size")
        inputs = self.convert_input(images)
        if self.batch_size is None or inputs.shape[0] == self.batch_size:
            return self.forward(inputs)
        return self._forward_in_fixed_batches(inputs)

    def convert_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels or [0, 1] floats -> the graph's input dtype (uint8 graphs get 0-255, float graphs [0, 1])."""
        if self.input_dtype == torch.uint8:
            if images.dtype == torch.uint8:
                return images
            return (images.float() * 255).round_().clamp_(0, 255).to(torch.uint8)
        if images.dtype == torch.uint8:
            return images.to(self.input_dtype) / 255
        return images.to(self.input_dtype)

    @abc.abstractmethod
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run one batch the runtime accepts as it is."""

    def _forward_in_fixed_batches(self, inputs: torch.Tensor) -> torch.Tensor:
        # A static graph runs exactly batch_size images: split the batch and pad the last chunk.
        outputs = []
        for start in range(0, inputs.shape[0], self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            count = chunk.shape[0]
            if count < self.batch_size:
                padding = chunk.new_zeros((self.batch_size - count, *chunk.shape[1:]))
                chunk = torch.cat((chunk, padding))
            outputs.append(self.forward(chunk)[:count])
        return torch.cat(outputs)

    def warmup(self, imgsz: tuple[int, int] = (640, 640)) -> None:
        """Run once on a blank image so that the first timed call does not include lazy setup."""
        height, width = self.imgsz or imgsz
        self(torch.zeros((self.batch_size or 1, 3, height, width), dtype=torch.uint8))

    def __repr__(self) -> str:
        size = f"{self.imgsz[0]}x{self.imgsz[1]}" if self.imgsz else "dynamic"
        return (f"{type(self).__name__}({self.weights}, runtime={self.runtime}, input={size} "
                f"{str(self.input_dtype).replace('torch.', '')}, quantized={self.is_quantized}, "
                f"classes={len(self.names)})")


class TorchBackend(Backend):
    """A project or official ``.pt`` checkpoint, fused (Conv+BN) unless it carries quantization."""

    runtime = "pytorch"

    def __init__(self, weights: str | Path, device: torch.device) -> None:
        model = load_weights(weights).model
        quantized = has_quantization(model)
        if not quantized:
            model.fuse()
        if next(model.parameters()).device != device:
            model = model.to(device)
        self.model = model.eval()
        super().__init__(weights, names=model.names, stride=int(model.stride.max()), imgsz=None, batch_size=None,
                         input_dtype=torch.float32, is_quantized=quantized, device=device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(inputs.to(self.device))[0]


def read_onnx_metadata(metadata: dict[str, str], output_channels: int | None) -> tuple[list[str], int, bool | None]:
    """``names``, ``stride`` and ``quantized`` as export.py stores them in the ONNX metadata_props."""
    names: list[str] = []
    if "names" in metadata:
        parsed = ast.literal_eval(metadata["names"])  # literal_eval: metadata is data, never code
        names = [str(parsed[k]) for k in sorted(parsed)] if isinstance(parsed, dict) else [str(n) for n in parsed]
    elif output_channels:
        names = [str(i) for i in range(output_channels - 5)]
    stride = int(metadata.get("stride", 32))
    quantized = metadata["quantized"] == "True" if "quantized" in metadata else None
    return names, stride, quantized


def _static_shape(shape: list) -> tuple[int | None, tuple[int, int] | None]:
    # ONNX dims are ints when fixed and strings (or None) when symbolic.
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    height, width = shape[2], shape[3]
    fixed = isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0
    return batch, ((height, width) if fixed else None)


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """``--runtime`` and ``--threads``, which val.py and detect.py take alike for .onnx weights."""
    parser.add_argument("--runtime", choices=("onnxruntime", "deepsparse"), default=None,
                        help="runtime for .onnx weights (default: deepsparse if installed, else onnxruntime)")
    parser.add_argument("--threads", type=_at_least_one, default=None,
                        help="for .onnx: onnxruntime intra-op threads / DeepSparse cores (default: every core; "
                             "use fewer on a machine other jobs share)")


def cpu_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def onnxruntime_options(threads: int | None = None, spinning: bool = False) -> object:
    """onnxruntime options: ``threads`` intra-op threads (default: every core), one inter-op thread, all optimizations.

    Spinning is off by default: idle worker threads that busy-wait for work measured 1.3-2x slower on a 2-core machine
    shared with other processes (BENCHMARKS.md); on a dedicated many-core server ``spinning=True`` may gain a little.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or cpu_cores()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


class OnnxRuntimeBackend(Backend):
    """An ONNX file run by onnxruntime (CUDA provider when a GPU device is asked for and available)."""

    runtime = "onnxruntime"

    def __init__(self, weights: str | Path, device: torch.device, threads: int | None = None,
                 spinning: bool = False) -> None:
        import onnxruntime

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = onnxruntime.InferenceSession(str(weights), onnxruntime_options(threads, spinning),
                                                    providers=providers)
        model_input = self.session.get_inputs()[0]
        if model_input.type not in _ORT_TYPES:
            raise ValueError(f"{weights}: unsupported input type {model_input.type}")
        self.input_name = model_input.name
        output_shape = self.session.get_outputs()[0].shape
        output_channels = output_shape[-1] if isinstance(output_shape[-1], int) else None
        metadata = self.session.get_modelmeta().custom_metadata_map
        names, stride, quantized = read_onnx_metadata(metadata, output_channels)
        input_dtype = _ORT_TYPES[model_input.type]
        batch, imgsz = _static_shape(model_input.shape)
        super().__init__(weights, names=names, stride=stride, imgsz=imgsz, batch_size=batch,
                         input_dtype=input_dtype, is_quantized=quantized if quantized is not None
                         else input_dtype == torch.uint8, device=device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(inputs.cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


class DeepSparseBackend(Backend):
    """An ONNX file compiled by DeepSparse (optional, CPU only); one engine per input shape, compiled on first use."""

    runtime = "deepsparse"

    def __init__(self, weights: str | Path, device: torch.device, threads: int | None = None) -> None:
        if importlib.util.find_spec("deepsparse") is None:
            raise ImportError(DEEPSPARSE_MISSING)
        if device.type != "cpu":
            raise ValueError("DeepSparse runs on the CPU only; use --device cpu or --runtime onnxruntime")
        import onnx

        model = onnx.load(str(weights), load_external_data=False)
        graph_input = next(i for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer})
        tensor_type = graph_input.type.tensor_type
        if tensor_type.elem_type not in _ONNX_ELEM_TYPES:
            raise ValueError(f"{weights}: unsupported input element type {tensor_type.elem_type}")
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        output_shape = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
        output_channels = output_shape[-1] if output_shape and output_shape[-1] > 0 else None
        names, stride, quantized = read_onnx_metadata({p.key: p.value for p in model.metadata_props},
                                                      output_channels)
        input_dtype = _ONNX_ELEM_TYPES[tensor_type.elem_type]
        batch, imgsz = _static_shape(shape)
        self._engines: dict[tuple[int, ...], object] = {}
        self.num_cores = threads or cpu_cores()
        super().__init__(weights, names=names, stride=stride, imgsz=imgsz, batch_size=batch,
                         input_dtype=input_dtype, is_quantized=quantized if quantized is not None
                         else input_dtype == torch.uint8, device=device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        shape = tuple(inputs.shape)
        engine = self._engines.get(shape)
        if engine is None:
            engine = deepsparse_engine(self.weights, shape, self.num_cores)
            self._engines[shape] = engine
        return torch.from_numpy(engine.run([np.ascontiguousarray(inputs.numpy())])[0])


def deepsparse_engine(weights: str | Path, input_shape: tuple[int, ...], num_cores: int | None = None) -> object:
    """A DeepSparse ``Engine`` compiled for ``input_shape``, leaving the file untouched.

    DeepSparse 1.8's own ``input_shapes=`` override rewrites the ONNX file in place (a --dynamic export would become
    static for every later reader), so a file whose input shape differs is compiled from a temporary copy instead.
    """
    import tempfile

    import onnx
    from deepsparse import Engine

    model = onnx.load(str(weights))
    graph_input = next(i for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer})
    dims = graph_input.type.tensor_type.shape.dim
    if [d.dim_value if d.HasField("dim_value") else None for d in dims] == list(input_shape):
        return Engine(model=str(weights), batch_size=input_shape[0], num_cores=num_cores or cpu_cores())
    for dim, value in zip(dims, input_shape):
        dim.Clear()
        dim.dim_value = int(value)
    with tempfile.TemporaryDirectory(prefix="deepsparse-") as folder:
        path = Path(folder) / Path(weights).name
        onnx.save(model, str(path))
        return Engine(model=str(path), batch_size=input_shape[0], num_cores=num_cores or cpu_cores())


def is_qdq_onnx(weights: str | Path) -> bool:
    """Whether the file is export.py's QDQ INT8 format (QuantizeLinear/DequantizeLinear around float convolutions)."""
    import onnx

    model = onnx.load(str(weights), load_external_data=False)
    metadata = {p.key: p.value for p in model.metadata_props}
    if "int8_format" in metadata:
        return metadata["int8_format"] == "qdq"
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    return any(node.op_type == "Conv" and producers.get(node.input[1]) == "DequantizeLinear"
               for node in model.graph.node)


def default_runtime(weights: str | Path | None = None) -> str:
    """The fastest ONNX runtime installed for ``weights``: DeepSparse when importable, else onnxruntime.

    QDQ files always go to onnxruntime: DeepSparse does not compile them (it hands the whole graph to the onnxruntime
    it bundles, measured 0% of ops supported).
    """
    if weights is not None and is_qdq_onnx(weights):
        return "onnxruntime"
    return "deepsparse" if importlib.util.find_spec("deepsparse") is not None else "onnxruntime"


def load_backend(weights: str | Path, device: str | torch.device = "cpu", runtime: str | None = None,
                 threads: int | None = None) -> Backend:
    """``.pt`` or ``zoo:`` stub -> PyTorch; ``.onnx`` -> onnxruntime or DeepSparse (``runtime``; default: the fastest
    installed).

    ``threads``: intra-op threads (onnxruntime) or cores (DeepSparse); default every core this process may use.
    """
    if is_zoo_stub(str(weights)):  # SparseZoo stub (or its $YOLOV5_SPARSE_ZOO_DIR mirror): its model.pt
        weights = resolve_weights(str(weights))
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    device = device if isinstance(device, torch.device) else _device(device)
    suffix = path.suffix.lower()
    if suffix == ".pt":
        if runtime not in (None, "pytorch"):
            raise ValueError(f"--runtime {runtime} needs an .onnx file; export one with export.py --include onnx")
        return TorchBackend(path, device)
    if suffix != ".onnx":
        raise ValueError(f"unsupported weights format '{path.suffix}': pass a .pt checkpoint or an .onnx file")
    runtime = runtime or default_runtime(path)
    if runtime == "onnxruntime":
        qdq = path.with_suffix(".qdq.onnx")
        if not path.name.endswith(".qdq.onnx") and qdq.is_file():
            LOGGER.info("%s beside %s is the INT8 format onnxruntime runs fastest (integer kernels)", qdq.name,
                        path.name)
        return OnnxRuntimeBackend(path, device, threads=threads)
    if runtime == "deepsparse":
        return DeepSparseBackend(path, device, threads=threads)
    raise ValueError(f"unknown runtime '{runtime}' for an ONNX file; choose onnxruntime or deepsparse")


def _device(spec: str) -> torch.device:
    return select_device(spec)


def list_images(source: str | Path | list) -> list[Path]:
    """Image files of a file, a folder, a glob pattern or a ``.txt`` list (one path a line), sorted.

    Raises ``FileNotFoundError`` naming the source when nothing matches, so a typo never passes silently.
    """
    sources = source if isinstance(source, (list, tuple)) else [source]
    for entry in sources:
        text = str(entry)
        path = Path(text).expanduser()
        if not path.exists() and not any(c in text for c in "*?["):
            raise FileNotFoundError(f"source not found: {text} (pass an image, a folder, a glob or a .txt list)")
        if path.is_file() and path.suffix.lower() != ".txt" and path.suffix.lower().lstrip(".") not in IMG_FORMATS:
            raise ValueError(f"{path} is not an image ({', '.join(sorted(IMG_FORMATS))}); videos and streams are "
                             f"not supported")
    files = collect_image_files(sources)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMG_FORMATS))}) found in {source}")
    return [Path(f) for f in files]


def load_letterboxed(path: str | Path, imgsz: int | tuple[int, int], stride: int = 32,
                     auto: bool = False) -> tuple[torch.Tensor, np.ndarray, tuple]:
    """Read an image and letterbox it: ((3, H, W) uint8 RGB tensor, the original BGR image, (ratio, (dw, dh)))."""
    original = read_image(str(path))
    if original is None:
        raise ValueError(f"cannot read image {path} (corrupt or not an image)")
    boxed, ratio, pad = letterbox(original, imgsz, auto=auto, stride=stride)
    tensor = torch.from_numpy(np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1)))
    return tensor, original, (ratio, pad)
