"""TensorBoard logging of a training run, on by default as in Ultralytics: ``tensorboard --logdir runs/train``.

Each epoch: the results.csv row (losses, P, R, mAPs, learning rate per parameter group), the phase (as its index in
``PHASES`` and as text when it changes), the conv weight sparsity overall and per pruned layer. At the end: the plots
and image grids the run wrote (validation batch with labels and predictions, curves, confusion matrix).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.sparsification import PHASES

LOGGER = logging.getLogger(__name__)


def conv_weight_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zeros of every conv weight (4-d ``*weight`` parameter), by parameter name."""
    return {name: float((p == 0).sum().item() / p.numel()) for name, p in model.named_parameters()
            if p.dim() == 4 and name.endswith("weight")}


class TensorBoardLogger:
    """Writes event files into a run folder; does nothing (after one log line) when tensorboard is not installed."""

    def __init__(self, log_dir: str | Path) -> None:
        self.writer = None
        self.phase: str | None = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            LOGGER.info("tensorboard is not installed: no event files (pip install tensorboard)")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))
        LOGGER.info("tensorboard: view with 'tensorboard --logdir %s'", Path(log_dir).parent)

    def log_epoch(self, epoch: int, row: dict, model: nn.Module) -> None:
        """One epoch's results.csv ``row`` plus the phase and the sparsity of ``model``'s conv weights."""
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float, np.floating)):
                self.writer.add_scalar(key, float(value), epoch)
        phase = row.get("phase")
        if phase in PHASES:
            self.writer.add_scalar("x/phase", PHASES.index(phase), epoch)
        if phase != self.phase:
            self.writer.add_text("phase", f"epoch {epoch}: {phase}", epoch)
            self.phase = phase
        layers = conv_weight_sparsity(model)
        for name, value in layers.items():
            if value > 0:
                self.writer.add_scalar(f"sparsity/{name}", value, epoch)
        if layers:
            self.writer.add_histogram("sparsity/conv_layers", torch.tensor(list(layers.values())), epoch)
        self.writer.flush()

    def log_images(self, folder: Path, epoch: int) -> None:
        """The run's plots and image grids (``*.png``, ``*.jpg`` in ``folder``) as images."""
        if self.writer is None:
            return
        import cv2

        for path in sorted([*Path(folder).glob("*.png"), *Path(folder).glob("*.jpg")]):
            image = cv2.imread(str(path))
            if image is not None:
                self.writer.add_image(path.stem, image[..., ::-1].copy(), epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
