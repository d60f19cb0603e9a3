"""Sparsification (SparseML recipes: pruning and quantization-aware training) behind one narrow interface.

This package is the only code that imports ``sparseml`` or ``sparsezoo``, and it imports them lazily: the dense
path never loads them.
"""

from __future__ import annotations

from torch import nn

from utils.sparsification.hooks import PHASES, EpochDirectives, Sparsifier, TrainingPlan

__all__ = ["PHASES", "EpochDirectives", "Sparsifier", "TrainingPlan", "convert_neuralmagic", "create_sparsifier",
           "restore_structure"]


def create_sparsifier(recipe: str | None, recipe_args: str | dict | None = None,
                      requested_epochs: int | None = None) -> Sparsifier:
    """A no-op ``Sparsifier`` without a recipe, else one driven by SparseML's ``ScheduledModifierManager``."""
    if not recipe:
        return Sparsifier()
    from utils.sparsification.sparsifier import RecipeSparsifier

    return RecipeSparsifier(recipe, recipe_args=recipe_args, requested_epochs=requested_epochs)


def restore_structure(model: nn.Module, state: dict) -> None:
    """Re-apply the structure (quantization wrappers, masks) that a checkpoint's sparsification state records."""
    if not state:
        return
    from utils.sparsification.structure import restore_structure as _restore

    _restore(model, state)


def convert_neuralmagic(checkpoint: dict, path: str = "", prefer_ema: bool = True) -> tuple[nn.Module, dict]:
    """A Neural Magic / SparseZoo sparse checkpoint rebuilt from its recipe: (loaded model, project checkpoint)."""
    from utils.sparsification.neuralmagic import convert_neuralmagic as _convert

    return _convert(checkpoint, path, prefer_ema=prefer_ema)
