"""Optimizer with YOLOv5's three parameter groups, and its learning-rate schedules."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)


def build_optimizer(model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.9,
                    weight_decay: float = 1e-5) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only; BatchNorm weights and all biases are left undecayed."""
    decayed, no_decay_norm, biases = [], [], []
    norm_types = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for parameter_name, parameter in module.named_parameters(recurse=False):
            if parameter_name == "bias":
                biases.append(parameter)
            elif parameter_name == "weight" and isinstance(module, norm_types):
                no_decay_norm.append(parameter)
            else:
                decayed.append(parameter)
    if name == "Adam":
        optimizer = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "SGD":
        optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    else:
        raise ValueError(f"optimizer '{name}' is not supported; use SGD, Adam or AdamW")
    optimizer.add_param_group({"params": decayed, "weight_decay": weight_decay})
    optimizer.add_param_group({"params": no_decay_norm, "weight_decay": 0.0})
    LOGGER.info("optimizer: %s(lr=%s) with parameter groups %d weight(decay=0.0), %d weight(decay=%s), %d bias",
                name, lr, len(no_decay_norm), len(decayed), weight_decay, len(biases))
    return optimizer


def lr_lambda(epochs: int, final_lr_fraction: float, cosine: bool) -> Callable[[int], float]:
    """Learning-rate multiplier per epoch: linear or cosine from 1 down to ``final_lr_fraction``."""
    if cosine:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (final_lr_fraction - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - final_lr_fraction) + final_lr_fraction
