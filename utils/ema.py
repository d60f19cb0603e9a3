"""Exponential moving average of model weights, as YOLOv5 keeps it for validation and saving."""

from __future__ import annotations

import math
from copy import deepcopy

import torch
from torch import nn

from utils.device import unwrap


class ModelEMA:
    """EMA whose decay ramps up over the first updates, so early noisy weights fade quickly."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0) -> None:
        self.ema = deepcopy(unwrap(model)).eval()
        self.updates = updates
        self.decay_at = lambda n: decay * (1 - math.exp(-n / tau))
        for parameter in self.ema.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay_at(self.updates)
        model_state = unwrap(model).state_dict()
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(model_state[name].detach(), alpha=1 - decay)
