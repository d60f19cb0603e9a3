"""The narrow interface between the training loop and sparsification.

The loop holds a ``Sparsifier`` that is never None: without a recipe every hook does nothing. Hooks return what the
loop should change (epochs, learning-rate ownership, EMA/AMP off) instead of reaching into the loop's objects. This
module imports nothing from sparseml, so dense runs never pay for importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

PHASES = ("dense", "pruned", "quantized", "pruned_quantized")


@dataclass
class TrainingPlan:
    """What the recipe decides about the run, returned once the optimizer exists."""

    epochs: int  # total number of epochs to run
    owns_learning_rate: bool  # True: the recipe sets the LR, the YOLOv5 scheduler and warmup step aside
    scaler: Any  # the grad scaler the loop must call .step(optimizer)/.update() on (maybe wrapped by the recipe)
    notes: list[str] = field(default_factory=list)  # lines for the log, e.g. "recipe sets 30 epochs"


@dataclass
class EpochDirectives:
    """What changes at the start of an epoch."""

    phase: str = "dense"  # one of PHASES: the model's state during this epoch
    phase_changed: bool = False  # True on the first epoch of a new phase (per-phase best fitness restarts)
    disable_ema: bool = False  # QAT: EMA weights cannot follow fake-quantized training
    disable_amp: bool = False  # QAT: fake-quant runs in float32
    notes: list[str] = field(default_factory=list)


class Sparsifier:
    """No recipe: every hook is a no-op. Recipe-driven subclasses override the hooks."""

    enabled = False

    @property
    def is_quantized(self) -> bool:
        """Whether the model currently carries quantization (fake-quant) modules."""
        return False

    def model_built(self, model: nn.Module, checkpoint_state: dict | None, resume: bool = False) -> None:
        """The model exists (weights loaded, structure restored); check the recipe against it.

        ``resume``: ``checkpoint_state`` is this run's own state, so the schedule continues where it stopped.
        """

    def optimizer_built(self, model: nn.Module, optimizer: Optimizer, scaler: Any, steps_per_epoch: int,
                        start_epoch: int, default_epochs: int, teacher: nn.Module | None = None) -> TrainingPlan:
        """``teacher``: the frozen model the recipe's distillation modifiers distil from (``--teacher-weights``)."""
        if teacher is not None:
            raise ValueError("--teacher-weights needs a recipe with a distillation modifier (for example "
                             "recipes/yolov5n.pruned_quant.yaml); without a recipe nothing would use the teacher")
        return TrainingPlan(epochs=default_epochs, owns_learning_rate=False, scaler=scaler)

    def epoch_start(self, epoch: int) -> EpochDirectives:
        return EpochDirectives()

    def phase_reached(self, epoch: int) -> str:
        """The phase the model is really in after ``epoch``'s steps (labels results.csv and best_<phase>.pt)."""
        return "dense"

    def loss_computed(self, loss: Tensor, predictions: Any, images: Tensor, targets: Tensor) -> Tensor:
        """The loss to back-propagate: the task loss, plus the recipe's distillation loss while distillation runs."""
        return loss

    def skipped_step(self) -> None:
        """A batch ended without an optimizer step (gradient accumulation): keep the recipe's step count aligned."""

    def after_optimizer_step(self, model: nn.Module, ema_model: nn.Module | None) -> None:
        """The optimizer stepped; keep pruned weights at zero in the EMA too."""

    def checkpoint_state(self, epoch: int, final: bool) -> dict:
        """What a checkpoint must carry to rebuild and resume this run's sparsification exactly."""
        return {}

    def finalize(self, model: nn.Module) -> None:
        """Training finished: release the recipe's hooks."""
