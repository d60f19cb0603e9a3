"""The YOLOv5 detection model, built from an architecture YAML.

``DetectionModel`` (alias ``Model``) and ``Detect`` keep the Ultralytics names and module path so that official
``yolov5*.pt`` pickles resolve their classes here. Layer routing (which earlier outputs feed a layer) is kept on the
model, not on the layers, so wrapping a layer (as quantization does) never breaks the forward pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from models.common import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus

MODELS_DIR = Path(__file__).resolve().parent

# The activations a model YAML may name in its ``activation`` key, as Ultralytics writes it (``nn.LeakyReLU(0.1)``).
# Parsed, not evaluated: a YAML is data. ReLU matters for deployment: DeepSparse runs a quantized ReLU network in
# about 25% less time than the same network with SiLU on the 2-core benchmark CPU (BENCHMARKS.md).
ACTIVATIONS: dict[str, type[nn.Module]] = {"SiLU": nn.SiLU, "ReLU": nn.ReLU, "ReLU6": nn.ReLU6,
                                           "LeakyReLU": nn.LeakyReLU, "Hardswish": nn.Hardswish}
_ACTIVATION = re.compile(r"^(?:nn\.)?(\w+)\(\s*([-+0-9.eE]*)\s*\)$")


class Detect(nn.Module):
    """Detection head: one 1x1 conv per scale, decoded to (x, y, w, h, objectness, class scores) in pixels."""

    stride: torch.Tensor | None = None
    dynamic = False  # rebuild grids at every call (dynamic input shapes at export)
    export = False  # return only the decoded tensor
    raw_outputs = False  # in eval mode too, return the per-scale raw outputs as in training (distillation teachers)

    def __init__(self, nc: int = 80, anchors: list[list[int]] = (), ch: list[int] = (), inplace: bool = True) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x: list[torch.Tensor]) -> Any:
        decoded = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training and not self.raw_outputs:
                if self.dynamic or self.grid[i].shape[2:4] != x[i].shape[2:4] or self.grid[i].device != x[i].device:
                    self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + self.grid[i]) * self.stride[i]
                wh = (wh * 2) ** 2 * self.anchor_grid[i]
                decoded.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        if self.training or self.raw_outputs:
            return x
        return (torch.cat(decoded, 1),) if self.export else (torch.cat(decoded, 1), x)

    def _make_grid(self, nx: int, ny: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        device, dtype = self.anchors[i].device, self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        yv, xv = torch.meshgrid(torch.arange(ny, device=device, dtype=dtype),
                                torch.arange(nx, device=device, dtype=dtype), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5  # offset so that xy * 2 - 0.5 spans (-0.5, 1.5)
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


# The only modules a model YAML may name. No eval(): a YAML is data, never code.
MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPPF": SPPF,
    "SPP": SPP,
    "Focus": Focus,
    "Concat": Concat,
    "Detect": Detect,
    "nn.Upsample": nn.Upsample,
    "Upsample": nn.Upsample,
}
_CHANNEL_MODULES = (Conv, Bottleneck, C3, SPPF, SPP, Focus)


def make_divisible(x: float, divisor: int) -> int:
    return int(math.ceil(x / divisor) * divisor)


def load_model_yaml(cfg: str | Path | dict) -> dict:
    """Read a model YAML given as a dict, a path, or a bare name such as ``yolov5s.yaml`` / ``yolov5s``."""
    if isinstance(cfg, dict):
        return deepcopy(cfg)
    path = Path(cfg)
    if not path.exists():
        candidate = MODELS_DIR / (path.name if path.suffix else f"{path.name}.yaml")
        if candidate.exists():
            path = candidate
        else:
            known = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.yaml")))
            raise FileNotFoundError(f"model config '{cfg}' not found; pass a path to a YAML or one of: {known}")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or "backbone" not in data or "head" not in data:
        raise ValueError(f"{path}: not a YOLOv5 model YAML (needs 'backbone' and 'head' lists)")
    data.setdefault("yaml_file", path.name)
    return data


def parse_activation(text: str | None) -> Callable[[], nn.Module] | None:
    """A factory for the activation a model YAML's ``activation`` names (None when it names none: SiLU stays)."""
    if text is None:
        return None
    match = _ACTIVATION.match(str(text).strip())
    if not match or match.group(1) not in ACTIVATIONS or (match.group(2) and match.group(1) != "LeakyReLU"):
        known = ", ".join(f"nn.{name}()" for name in ACTIVATIONS).replace("LeakyReLU()", "LeakyReLU(0.1)")
        raise ValueError(f"activation '{text}' is not supported; use one of {known}")
    cls = ACTIVATIONS[match.group(1)]
    if match.group(2):
        slope = float(match.group(2))
        return lambda: cls(slope)
    return cls


def set_activation(model: nn.Module, factory: Callable[[], nn.Module] | None) -> None:
    """Replace the SiLU of every ``Conv`` block with ``factory()`` (the YAML's ``activation``)."""
    if factory is None:
        return
    for module in model.modules():
        if isinstance(module, Conv) and isinstance(module.act, nn.SiLU):
            module.act = factory()


def parse_model(cfg: dict, ch: int) -> tuple[nn.Sequential, list[int], list[int | list[int]]]:
    """Build the layer sequence from YAML rows ``[from, number, module, args]``.

    Returns the layers, the sorted indices whose outputs later layers reuse, and each layer's ``from``.
    """
    anchors, nc = cfg["anchors"], cfg["nc"]
    depth, width = cfg.get("depth_multiple", 1.0), cfg.get("width_multiple", 1.0)
    activation = parse_activation(cfg.get("activation"))
    num_anchors = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    num_outputs = num_anchors * (nc + 5)
    names = {"nc": nc, "anchors": anchors, "None": None}  # the only names an argument may refer to

    layers, save, froms, channels = [], set(), [], [ch]
    for i, (source, number, module_name, args) in enumerate(cfg["backbone"] + cfg["head"]):
        if module_name not in MODULES:
            raise ValueError(f"layer {i}: unknown module '{module_name}'; known: {', '.join(sorted(MODULES))}")
        module = MODULES[module_name]
        args = [names.get(a, a) if isinstance(a, str) else a for a in args]
        number = max(round(number * depth), 1) if number > 1 else number
        if module in _CHANNEL_MODULES:
            c1, c2 = channels[source], args[0]
            if c2 != num_outputs:
                c2 = make_divisible(c2 * width, 8)
            args = [c1, c2, *args[1:]]
            if module is C3:
                args.insert(2, number)
                number = 1
        elif module is Concat:
            c2 = sum(channels[x] for x in source)
        elif module is Detect:
            args.append([channels[x] for x in source])
            if isinstance(args[1], int):
                args[1] = [list(range(args[1] * 2))] * len(source)
        else:
            c2 = channels[source]
        layer = nn.Sequential(*(module(*args) for _ in range(number))) if number > 1 else module(*args)
        set_activation(layer, activation)
        save.update(x % i for x in ([source] if isinstance(source, int) else source) if x != -1)
        layers.append(layer)
        froms.append(source)
        if i == 0:
            channels = []
        channels.append(c2)
    return nn.Sequential(*layers), sorted(save), froms


def initialize_weights(model: nn.Module) -> None:
    """YOLOv5's BatchNorm settings and in-place activations."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True


class DetectionModel(nn.Module):
    """YOLOv5 detector: backbone and head from a YAML, a ``Detect`` layer last."""

    def __init__(self, cfg: str | Path | dict = "yolov5s.yaml", ch: int = 3, nc: int | None = None,
                 anchors: list | None = None) -> None:
        super().__init__()
        self.yaml = load_model_yaml(cfg)
        self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml["nc"]:
            self.yaml["nc"] = nc
        if anchors:
            self.yaml["anchors"] = round(anchors) if isinstance(anchors, float) else anchors
        self.model, self.save, self.froms = parse_model(deepcopy(self.yaml), ch=self.yaml["ch"])
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self.inplace = self.yaml.get("inplace", True)
        self.hyp: dict = {}

        detect = self.model[-1]
        if not isinstance(detect, Detect):
            raise ValueError("the last layer of a YOLOv5 model YAML must be Detect")
        detect.inplace = self.inplace
        probe = 256
        detect.stride = torch.tensor([probe / x.shape[-2] for x in self.forward(torch.zeros(1, ch, probe, probe))])
        _check_anchor_order(detect)
        detect.anchors /= detect.stride.view(-1, 1, 1)
        self.stride = detect.stride
        self._initialize_biases()
        initialize_weights(self)

    @property
    def detect(self) -> Detect:
        """The Detect layer, looking through a wrapper (quantization may wrap layers)."""
        last = self.model[-1]
        return last if isinstance(last, Detect) else last.module

    @property
    def nc(self) -> int:
        return self.yaml["nc"]

    def forward(self, x: torch.Tensor) -> Any:
        outputs: list[torch.Tensor | None] = []
        for index, (layer, source) in enumerate(zip(self.model, self.froms)):
            if source != -1:
                x = outputs[source] if isinstance(source, int) else [x if j == -1 else outputs[j] for j in source]
            x = layer(x)
            outputs.append(x if index in self.save else None)
        return x

    def _initialize_biases(self) -> None:
        # Priors: about 8 objects per 640x640 image, classes equally likely (arXiv:1708.02002 section 3.3).
        detect = self.model[-1]
        for conv, stride in zip(detect.m, detect.stride):
            bias = conv.bias.view(detect.na, -1)
            bias.data[:, 4] += math.log(8 / (640 / stride) ** 2)
            bias.data[:, 5:5 + detect.nc] += math.log(0.6 / (detect.nc - 0.99999))
            conv.bias = nn.Parameter(bias.view(-1), requires_grad=True)

    def fuse(self) -> DetectionModel:
        """Fold BatchNorm into the preceding convolution for faster inference (zeros in weights stay zero)."""
        for module in self.modules():
            if isinstance(module, Conv) and hasattr(module, "bn"):
                module.conv = fuse_conv_and_bn(module.conv, module.bn)
                delattr(module, "bn")
                module.forward = module.forward_fuse
        return self

    def info(self) -> str:
        params = sum(p.numel() for p in self.parameters())
        grads = sum(p.numel() for p in self.parameters() if p.requires_grad)
        layers = len(list(self.modules()))
        return f"{self.yaml.get('yaml_file', 'model')}: {layers} layers, {params:,} parameters, {grads:,} gradients"


Model = DetectionModel  # the name used by Ultralytics checkpoints before v7.0


def _check_anchor_order(detect: Detect) -> None:
    """Anchor sizes must grow with stride; flip them when a YAML lists them the other way round."""
    area = detect.anchors.prod(-1).mean(-1).view(-1)
    delta_area = area[-1] - area[0]
    delta_stride = detect.stride[-1] - detect.stride[0]
    if delta_area and (delta_area.sign() != delta_stride.sign()):
        detect.anchors[:] = detect.anchors.flip(0)


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True)
    fused = fused.requires_grad_(False).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.eps + bn.running_var)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv_bias = conv.bias if conv.bias is not None else torch.zeros(conv.weight.shape[0], device=conv.weight.device)
    fused.bias.copy_((conv_bias - bn.running_mean) * scale + bn.bias)
    return fused
