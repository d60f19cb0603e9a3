"""Sparsification (SparseML recipes: pruning and quantization-aware training) behind one narrow interface.

This package is the only code that imports ``sparseml`` or ``sparsezoo``, and its modules import them inside the
functions that need them: importing the package, or training dense, never loads them.
"""

from __future__ import annotations

from torch import nn

from utils.sparsification.hooks import PHASES, EpochDirectives, Sparsifier, TrainingPlan
from utils.sparsification.neuralmagic import convert_neuralmagic
from utils.sparsification.sparsifier import RecipeSparsifier
from utils.sparsification.structure import restore_structure as _restore

__all__ = ["PHASES", "EpochDirectives", "Sparsifier", "TrainingPlan", "convert_neuralmagic", "create_sparsifier",
           "restore_structure"]


def create_sparsifier(recipe: str | None, recipe_args: str | dict | None = None,
                      requested_epochs: int | None = None) -> Sparsifier:
    """A no-op ``Sparsifier`` without a recipe, else one driven by SparseML's ``ScheduledModifierManager``."""
    if not recipe:
        return Sparsifier()
    return RecipeSparsifier(recipe, recipe_args=recipe_args, requested_epochs=requested_epochs)


def restore_structure(model: nn.Module, state: dict) -> None:
    """Re-apply the structure (quantization wrappers, masks) that a checkpoint's sparsification state records."""
    if not state:
        return
    _restore(model, state)

