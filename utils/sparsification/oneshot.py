"""One-shot sparsification (``export.py --one-shot RECIPE``): a recipe's end state without training.

Pruning modifiers are applied at their end epoch (magnitude pruning straight to the final sparsity). A
QuantizationModifier wraps the model for quantization exactly as in QAT; instead of training, the observers are
calibrated on real images (post-training quantization) and then frozen. Accuracy is lower than after the recipe's
training, but the exported graph has the same structure, which is what deployment tests and speed checks need.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

from utils.sparsification.checks import check_recipe_against_model
from utils.sparsification.recipes import load_recipe
from utils.sparsification.report import sparsity_report
from utils.sparsification.structure import apply_model_defaults, has_quantization, quiet_loggers
from utils.sparsification.zoo import is_zoo_stub, resolve_recipe

LOGGER = logging.getLogger(__name__)

_QUANTIZATION_MODIFIER = re.compile(r"!\s*QuantizationModifier\b")


@dataclass
class OneShotResult:
    """What the one-shot application did."""

    recipe: str
    quantized: bool
    conv_sparsity: float  # fraction of conv/linear weights at zero after pruning
    calibration_images: int  # 0 without quantization
    notes: list[str] = field(default_factory=list)


def _local_recipe(recipe: str) -> str:
    if is_zoo_stub(recipe):
        return resolve_recipe(recipe)
    if not Path(recipe).is_file():
        raise FileNotFoundError(f"recipe not found: {recipe}")
    return recipe


def recipe_has_quantization(recipe: str) -> bool:
    """Whether the recipe contains a QuantizationModifier (one-shot then needs calibration images)."""
    return bool(_QUANTIZATION_MODIFIER.search(Path(_local_recipe(recipe)).read_text(encoding="utf-8")))


def calibrate(model: nn.Module, images: torch.Tensor, batch_size: int = 8) -> int:
    """Post-training calibration: observe float activations of ``images`` (uint8, N x 3 x H x W) in eval mode.

    Each observer ends at the mean of the per-batch ranges (its moving-average constant is set to 1/(k+1) at batch
    k), so one unusual batch cannot dominate; then observers are frozen. Returns the number of images seen.
    """
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    observers = [q.activation_post_process for q in quantizers if hasattr(q, "activation_post_process")]
    constants = [getattr(o, "averaging_constant", None) for o in observers]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for quantizer in quantizers:
        quantizer.enable_observer()
        quantizer.disable_fake_quant()  # observe the float network, as post-training quantization does
    for observer in observers:
        if hasattr(observer, "reset_min_max_vals"):
            observer.reset_min_max_vals()
    try:
        with torch.no_grad():
            for index, start in enumerate(range(0, images.shape[0], batch_size)):
                for observer in observers:
                    if hasattr(observer, "averaging_constant"):
                        observer.averaging_constant = 1 / (index + 1)
                batch = images[start:start + batch_size].to(device)
                model(batch.float() / 255 if batch.dtype == torch.uint8 else batch.float())
    finally:
        for observer, constant in zip(observers, constants):
            if constant is not None:
                observer.averaging_constant = constant
        for quantizer in quantizers:
            quantizer.disable_observer()
            quantizer.enable_fake_quant()
        model.train(was_training)
    return int(images.shape[0])


def apply_one_shot(model: nn.Module, recipe: str, calibration_images: torch.Tensor | None = None,
                   recipe_args: str | dict | None = None, batch_size: int = 8) -> OneShotResult:
    """Apply ``recipe`` to ``model`` in place at its end epoch; calibrate quantization on ``calibration_images``."""
    # the training path's checks and model defaults (recipe syntax and names, Concat/Detect kept float)
    manager, source, notes = load_recipe(_local_recipe(recipe), recipe_args)
    notes += apply_model_defaults(manager, model)
    check_recipe_against_model(manager, model, source)
    LOGGER.info("one-shot: applying %s at its end state...", Path(source).name)
    model.train()  # QAT wrapping fuses Conv+BN into ConvBn2d only in training mode
    manager.apply(model, loggers=quiet_loggers())  # every modifier at its end state (epoch = inf)
    model.eval()
    quantized = has_quantization(model)
    seen = 0
    if quantized:
        if calibration_images is None or calibration_images.shape[0] == 0:
            raise ValueError(f"recipe {recipe} quantizes: one-shot needs calibration images (--data, --calib-data)")
        LOGGER.info("one-shot: calibrating INT8 ranges on %d images...", calibration_images.shape[0])
        seen = calibrate(model, calibration_images, batch_size=batch_size)
        notes.append(f"one-shot post-training quantization calibrated on {seen} images")
    sparsity = sparsity_report(model).conv_sparsity
    notes.append(f"one-shot {Path(source).name}: conv weight sparsity {sparsity:.1%}")
    return OneShotResult(recipe=recipe, quantized=quantized, conv_sparsity=sparsity, calibration_images=seen,
                         notes=notes)
