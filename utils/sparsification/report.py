"""What a recipe actually did to a model: per-layer sparsity and quantization, global numbers, size estimates.

Pure torch (matplotlib only for the plot): it reads the weights, so it works the same on a dense model, a pruned
one, a QAT model in training and a checkpoint rebuilt for validation or export, with or without sparseml.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

BYTES_FP32 = 4
BYTES_INT8 = 1
_MB = 1e6
_QUANT_WRAPPER_NAMES = ("QuantWrapper", "QATWrapper")


@dataclass(frozen=True)
class LayerSparsity:
    """One conv/linear weight tensor."""

    name: str  # parameter name, as recipes' ``params`` spell it, e.g. model.2.m.0.cv1.conv.weight
    kind: str  # "conv" or "linear"
    shape: tuple[int, ...]
    params: int
    zeros: int
    quantized: bool  # trained with a weight fake-quant (QAT) or already a quantized-aware module

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0


@dataclass
class SparsityReport:
    """Per-layer rows plus global numbers; ``table()`` for the log, ``to_dict()`` for results files."""

    layers: list[LayerSparsity] = field(default_factory=list)
    total_params: int = 0  # every parameter of the model (biases and BatchNorm included)
    total_zeros: int = 0
    fake_quantize_modules: int = 0

    @property
    def conv_params(self) -> int:
        """Parameters in the rows (conv and linear weights): what pruning recipes target."""
        return sum(layer.params for layer in self.layers)

    @property
    def conv_zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers)

    @property
    def conv_sparsity(self) -> float:
        return self.conv_zeros / self.conv_params if self.conv_params else 0.0

    @property
    def global_sparsity(self) -> float:
        return self.total_zeros / self.total_params if self.total_params else 0.0

    @property
    def quantized_layers(self) -> int:
        return sum(layer.quantized for layer in self.layers)

    @property
    def dense_size_mb(self) -> float:
        return self.total_params * BYTES_FP32 / _MB

    @property
    def compressed_size_mb(self) -> float:
        """Lower bound: non-zero conv/linear weights only (int8 when quantized), every other parameter fp32.

        Sparse formats add an index or bitmask (about 1 bit per weight), not counted here.
        """
        weights = sum((layer.params - layer.zeros) * (BYTES_INT8 if layer.quantized else BYTES_FP32)
                      for layer in self.layers)
        return (weights + (self.total_params - self.conv_params) * BYTES_FP32) / _MB

    def summary_line(self) -> str:
        return (f"sparsity {self.conv_sparsity:.1%} of conv/linear weights ({_count(self.conv_zeros)}/"
                f"{_count(self.conv_params)} zero), {self.global_sparsity:.1%} of all params; "
                f"quantized {self.quantized_layers}/{len(self.layers)} layers, {self.fake_quantize_modules} "
                f"FakeQuantize; {_count(self.total_params)} params, {self.dense_size_mb:.2f} MB dense fp32 -> "
                f"~{self.compressed_size_mb:.2f} MB compressed")

    def table(self, max_rows: int | None = None, name_width: int = 40) -> str:
        """Fixed-width table, one row per layer; with ``max_rows``, the first and last rows around a gap line."""
        rows = list(enumerate(self.layers))
        hidden = 0
        if max_rows is not None and len(rows) > max_rows:
            head = max(1, max_rows // 2)
            tail = max(0, max_rows - head)
            hidden = len(rows) - head - tail
            rows = rows[:head] + [(-1, None)] + (rows[-tail:] if tail else [])
        width = min(name_width, max((len(layer.name) for layer in self.layers), default=5))
        width = max(width, len("layer"))
        header = f"{'#':>3} {'layer':<{width}} {'shape':<18} {'params':>9} {'zeros':>9} {'sparsity':>8} {'quant':>5}"
        lines = [header, "-" * len(header)]
        for index, layer in rows:
            if layer is None:
                lines.append(f"{'':>3} ... {hidden} more layers ...")
                continue
            shape = "x".join(str(s) for s in layer.shape)
            lines.append(f"{index:>3} {_fit(layer.name, width):<{width}} {shape:<18} {layer.params:>9,} "
                         f"{layer.zeros:>9,} {layer.sparsity:>8.1%} {'yes' if layer.quantized else 'no':>5}")
        lines.append("-" * len(header))
        lines.append(f"{'':>3} {'conv/linear weights':<{width}} {'':<18} {self.conv_params:>9,} "
                     f"{self.conv_zeros:>9,} {self.conv_sparsity:>8.1%} {self.quantized_layers:>2}/{len(self.layers)}")
        lines.append(f"{'':>3} {'all params':<{width}} {'':<18} {self.total_params:>9,} {self.total_zeros:>9,} "
                     f"{self.global_sparsity:>8.1%}")
        lines.append(self.summary_line())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable."""
        return {
            "layers": [{"name": layer.name, "kind": layer.kind, "shape": list(layer.shape), "params": layer.params,
                        "zeros": layer.zeros, "sparsity": layer.sparsity, "quantized": layer.quantized}
                       for layer in self.layers],
            "conv_params": self.conv_params,
            "conv_zeros": self.conv_zeros,
            "conv_sparsity": self.conv_sparsity,
            "total_params": self.total_params,
            "total_zeros": self.total_zeros,
            "global_sparsity": self.global_sparsity,
            "quantized_layers": self.quantized_layers,
            "fake_quantize_modules": self.fake_quantize_modules,
            "dense_size_mb": self.dense_size_mb,
            "compressed_size_mb": self.compressed_size_mb,
        }


@torch.no_grad()
def sparsity_report(model: nn.Module) -> SparsityReport:
    """Count zeros in every conv/linear weight and every parameter, and find the quantized layers."""
    modules = dict(model.named_modules())
    report = SparsityReport()
    seen: set[int] = set()
    for name, module in modules.items():
        kind = _kind(module)
        weight = getattr(module, "weight", None)
        if kind is None or not isinstance(weight, torch.Tensor) or id(weight) in seen:
            continue
        seen.add(id(weight))
        report.layers.append(LayerSparsity(
            name=f"{name}.weight" if name else "weight", kind=kind, shape=tuple(weight.shape),
            params=weight.numel(), zeros=int((weight == 0).sum()), quantized=_is_quantized(name, module, modules)))
    for parameter in model.parameters():  # parameters() already skips shared tensors
        report.total_params += parameter.numel()
        report.total_zeros += int((parameter == 0).sum())
    fake_quantize = torch.ao.quantization.FakeQuantizeBase
    report.fake_quantize_modules = sum(isinstance(m, fake_quantize) for m in modules.values())
    return report


def plot_sparsity(report: SparsityReport, path: Path) -> Path:
    """Bar chart of per-layer sparsity (quantized layers in another colour), written as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = max(1, len(report.layers))
    figure = Figure(figsize=(max(6.0, 0.18 * count + 2), 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    labels = [_short(layer.name) for layer in report.layers]
    colours = ["tab:orange" if layer.quantized else "tab:blue" for layer in report.layers]
    axes.bar(range(len(labels)), [layer.sparsity for layer in report.layers], color=colours, width=0.8)
    axes.axhline(report.conv_sparsity, color="black", linestyle="--", linewidth=1,
                 label=f"all conv/linear weights: {report.conv_sparsity:.1%}")
    axes.set_ylim(0, 1)
    axes.set_xlim(-0.6, max(len(labels), 1) - 0.4)
    axes.set_ylabel("sparsity (fraction of zero weights)")
    axes.set_title(f"Per-layer sparsity ({report.quantized_layers}/{len(report.layers)} layers quantized)")
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels(labels, rotation=90, fontsize=6)
    handles = [axes.get_lines()[0], Patch(color="tab:blue", label="float weights")]
    if report.quantized_layers:
        handles.append(Patch(color="tab:orange", label="quantized (QAT) weights"))
    axes.legend(handles=handles, loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


# ---------------------------------------------------------------------------------------------------------- internals
def _kind(module: nn.Module) -> str | None:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


@cache
def _qat_types() -> tuple[type, ...]:
    """Every module class of torch's eager QAT namespaces (Conv2d, ConvBn2d, ConvBnReLU2d, Linear, ...)."""
    import torch.ao.nn.intrinsic.qat as intrinsic_qat
    import torch.ao.nn.qat as plain_qat

    found = []
    for namespace in (plain_qat, intrinsic_qat):
        found += [obj for _, obj in inspect.getmembers(namespace, inspect.isclass) if issubclass(obj, nn.Module)]
    return tuple(found)


def _carries_weight_fake_quant(module: nn.Module) -> bool:
    return hasattr(module, "weight_fake_quant") or isinstance(module, _qat_types())


def _is_quantized(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> bool:
    """The module, or the wrapper right above it, fake-quantizes the weight; or it sits in a QuantWrapper."""
    if _carries_weight_fake_quant(module):
        return True
    parts = name.split(".") if name else []
    parent = modules.get(".".join(parts[:-1])) if parts else None
    if parent is not None and parent is not module and _carries_weight_fake_quant(parent):
        return True
    for depth in range(len(parts) - 1, 0, -1):  # "<wrapper>.module.<...>": a wrapper quantizing what it holds
        if parts[depth] != "module":
            continue
        wrapper = modules.get(".".join(parts[:depth]))
        if wrapper is not None and (isinstance(wrapper, torch.ao.quantization.QuantWrapper)
                                    or type(wrapper).__name__ in _QUANT_WRAPPER_NAMES):
            return True
    return False


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def _short(name: str) -> str:
    name = name.removesuffix(".weight")
    return name.removeprefix("model.")


def _count(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1e6:.2f}M"
    if value >= 10_000:
        return f"{value / 1e3:.1f}k"
    return str(value)
