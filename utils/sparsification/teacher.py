"""The teacher of knowledge distillation (``train.py --teacher-weights PATH|zoo:STUB|self``).

A recipe's distillation modifiers (``!PerLayerDistillationModifier``, ``!DistillationModifier``) add a loss that pulls
the model being sparsified towards a teacher: usually the dense model it starts from. Pruning and QAT then recover
more of the dense accuracy in the same number of epochs. The teacher only runs forward passes, in eval mode (its
BatchNorm statistics stay fixed), and returns Detect's raw per-scale outputs as the student does in training, so
output distillation compares like with like.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from utils.checkpoint import CheckpointError, model_checkpoint, save_checkpoint
from utils.sparsification.structure import has_quantization
from utils.sparsification.zoo import is_zoo_stub, resolve_weights
from utils.weights import load_weights

LOGGER = logging.getLogger(__name__)

SELF = "self"  # the teacher is a frozen copy of the model as this run starts


def _freeze(teacher: nn.Module, device: torch.device) -> nn.Module:
    teacher = teacher.to(device).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    for module in teacher.modules():
        if hasattr(module, "raw_outputs"):
            module.raw_outputs = True
    return teacher


def load_teacher(spec: str | None, student: nn.Module, device: torch.device) -> nn.Module | None:
    """The frozen teacher for ``spec`` (a .pt path, a ``zoo:`` stub or ``self``), or None when ``spec`` is empty.

    A teacher must predict the student's classes (the outputs are compared class by class) and be a float model: the
    fake-quantized layers of a QAT checkpoint are not the Conv2d layers that per-layer distillation pairs up.
    """
    if not spec:
        return None
    if spec == SELF:
        return _freeze(copy.deepcopy(student), device)
    path = spec
    if is_zoo_stub(spec):
        path = resolve_weights(spec)
    teacher = load_weights(path).model
    if int(teacher.nc) != int(student.nc):
        raise CheckpointError(f"--teacher-weights {spec}: the teacher predicts {teacher.nc} classes and the model "
                              f"being trained {student.nc}; use a teacher trained on the same dataset (for example "
                              f"the dense run's best.pt)")
    if has_quantization(teacher):
        raise CheckpointError(f"--teacher-weights {spec} is a quantization-aware (QAT) checkpoint; distil from a float "
                              f"model instead: the dense run's best.pt, or best_pruned.pt of a pruning run")
    LOGGER.info("distillation teacher: %s (%d parameters)", spec, sum(p.numel() for p in teacher.parameters()))
    return _freeze(teacher, device)


def save_teacher(teacher: nn.Module, names: list[str], path: str | Path) -> Path:
    """Write a ``self`` teacher as a checkpoint, so that ``--resume`` distils from the model the run started from.

    Without it a resumed run would copy the model as resumed (already partly pruned) and train towards it.
    """
    return save_checkpoint(model_checkpoint(teacher, names), path)
