"""Recipe-driven sparsification: SparseML's ``ScheduledModifierManager`` behind the ``Sparsifier`` hooks.

What this adds on top of SparseML, and why:

- The recipe is checked against the model before the first step (parameter names and regexes, quantization
  ``ignore`` names, unknown modifier tags, YAML syntax): a wrong recipe fails in seconds, naming the closest names.
- ``--epochs`` scales every epoch value of the recipe (literals and variables, see ``epochs.py``) proportionally
  instead of being silently overridden.
- Pruning masks and the schedule state of every modifier travel with each checkpoint, so a resumed run continues with
  the same masks as the uninterrupted run (SparseML alone re-derives masks by magnitude at the resumed epoch), and the
  masks are applied to the EMA weights as well, so ``best.pt`` saved from the EMA is exactly sparse.
- Each run's recipe is kept as a stage with the exact epoch its structure reached, so ``restore_structure`` rebuilds
  final and intermediate checkpoints alike (``best_pruned.pt`` saved mid-run included) for a strict state-dict load.
- A quantization recipe written as in the SparseML YOLOv5 guide (a bare ``!QuantizationModifier``) works as written:
  see ``apply_model_defaults``.

The schedule is advanced once at every epoch start, before the first batch (besides SparseML's own advance at every
optimizer step through the wrapped grad scaler): QAT modules and new masks then exist for the whole epoch, and the loop
learns about them from ``epoch_start`` before AMP or the EMA could touch a fake-quantized model.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from utils.device import unwrap
from utils.sparsification.checks import (
    check_distillation_schedule,
    check_quantization_steps,
    check_recipe_against_model,
)
from utils.sparsification.hooks import EpochDirectives, Sparsifier, TrainingPlan
from utils.sparsification.recipes import (
    RecipeError,
    compose_stages,
    event_epochs,
    is_number,
    load_recipe,
    manager_from_state_text,
    recipe_epochs,
)
from utils.sparsification.structure import (
    STATE_VERSION,
    apply_model_defaults,
    canonical_names,
    check_state,
    has_quantization,
    named_parameters_canonical,
    pack_mask,
    quiet_loggers,
    targeted_parameters,
    training_mode,
    unpack_mask,
)

LOGGER = logging.getLogger(__name__)

# Private SparseML modifier attributes that hold schedule progress (not configuration). Saved and restored verbatim so
# that a resumed manager takes the same decisions at the same steps as the uninterrupted one.
_SCHEDULE_ATTRIBUTES = (
    "_started", "_ended", "_last_update_epoch", "_last_log_epoch",  # every scheduled modifier
    "_applied_sparsity", "_init_sparsity",  # pruning (init_sparsity becomes a list with __FROM_PARAM__)
    "_qat_enabled", "_quantization_observer_disabled", "_bn_stats_frozen",  # quantization
    "_lr_set", "_applied", "_learning_rate", "_last_applied_lr",  # learning rate
    "_base_lr_set", "_last_scheduler_epoch", "_scheduler_steps", "_double_step",
)


def _projection_state(modifier: Any) -> dict:
    """Per-layer distillation's learned projections (1x1 convs from student to teacher features), on CPU."""
    from sparseml.pytorch.sparsification.distillation import DISTILL_PARAM_GROUP_KEY

    if not getattr(modifier, "_projection", None):
        return {}
    state = modifier.state_dict().get(DISTILL_PARAM_GROUP_KEY) or {}
    return {name: {key: value.detach().cpu() for key, value in layer.items()} for name, layer in state.items()}


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(is_number(v) for v in value)


# ------------------------------------------------------------------------------------------------------- sparsifier


class RecipeSparsifier(Sparsifier):
    """Drives a SparseML recipe through the training loop's hooks (see ``hooks.Sparsifier`` for the call order)."""

    enabled = True

    def __init__(self, recipe: str, recipe_args: str | dict | None = None, requested_epochs: int | None = None) -> None:
        self._manager, self.source, self._load_notes = load_recipe(recipe, recipe_args, requested_epochs)
        self._model: nn.Module | None = None
        self._optimizer: Optimizer | None = None
        self._wrapped: Any = None
        self._steps_per_epoch = 0
        self._start_epoch = 0
        self._stage_text = ""
        self._composed_text = ""
        self._base_stages: list[dict] = []
        self._base_phase = "dense"
        self._base_masks: dict[str, dict] = {}
        self._resume_state: dict | None = None
        self._constant_sparsity = False
        self._distilling = False
        self._pre_update_epoch = -math.inf
        self._finalized_state: tuple[list[dict], dict[str, dict], float] | None = None
        self._snapshot_cache: tuple[tuple, tuple[list[dict], dict[str, dict], float]] | None = None
        self._notes: list[str] = list(self._load_notes)

    # ------------------------------------------------------------------------------------------- properties
    @property
    def manager(self) -> Any:
        """The SparseML ``ScheduledModifierManager`` running this stage."""
        return self._manager

    @property
    def is_quantized(self) -> bool:
        return self._model is not None and has_quantization(self._model)

    # ------------------------------------------------------------------------------------------- hooks
    def model_built(self, model: nn.Module, checkpoint_state: dict | None, resume: bool = False) -> None:
        """Check the recipe against the model and the checkpoint it starts from; on resume continue its last stage.

        Fine-tuning (``resume=False``) from a sparsified checkpoint adds this recipe as a new stage after the
        checkpoint's stages. Resuming takes the recipe text, masks and schedule state from the checkpoint's last stage.
        """
        module = unwrap(model)
        self._model = module
        state = checkpoint_state or {}
        if state:
            check_state(state)
        stages = list(state.get("stages") or [])
        if resume:
            if not stages:
                raise RecipeError("cannot resume with a recipe: the checkpoint holds no sparsification state (it was "
                                  "trained without one); start a new run with --weights instead")
            current = stages.pop()
            manager = manager_from_state_text(current["recipe"], f"{self.source} (resumed)")
            ours = self._normalized_text(self._manager, module)
            if ours != current["recipe"]:
                self._notes.append(f"resuming with the recipe as the run started it (stored in the checkpoint, "
                                   f"--epochs scaling included); {self.source} as read now differs and is not used")
            self._manager = manager
            self._resume_state = state
        self._base_stages = stages
        self._base_phase = stages[-1]["phase"] if stages else "dense"
        self._base_masks = dict(state.get("masks") or {}) if not resume else dict(state.get("base_masks") or {})
        self._notes += apply_model_defaults(self._manager, module)
        self._stage_text = str(self._manager)
        check_recipe_against_model(self._manager, module, self.source)
        if not resume and stages:
            self._check_against_checkpoint(module, state)
        self._constant_sparsity = self._pruned_parameters_sparse(module)
        try:
            self._composed_text = compose_stages([s["recipe"] for s in stages] + [self._stage_text])
        except Exception as error:  # noqa: BLE001 - composing is for display; the stages stay separate regardless
            self._composed_text = self._stage_text
            self._notes.append(f"could not compose the staged recipe ({error}); stages are stored separately")

    def optimizer_built(self, model: nn.Module, optimizer: Optimizer, scaler: Any, steps_per_epoch: int,
                        start_epoch: int, default_epochs: int, teacher: nn.Module | None = None) -> TrainingPlan:
        """Attach the recipe to the optimizer; the returned ``plan.scaler`` advances the recipe at every step.

        ``teacher`` goes to the recipe's distillation modifiers; without one they stay off (and the log says so).
        """
        if self._model is None:
            self.model_built(model, None)
        module = self._model
        distillers = sorted({type(m).__name__ for m in self._manager.distillation_modifiers})
        if teacher is not None and not distillers:
            raise RecipeError(f"--teacher-weights is set but {self.source} has no distillation modifier; add a "
                              f"!PerLayerDistillationModifier (as recipes/yolov5n.pruned_quant.yaml does) or drop "
                              f"--teacher-weights")
        if teacher is not None:  # without a teacher the modifiers stay off: nothing to check
            check_distillation_schedule(self._manager, module, self.source,
                                        quantized_base="quantized" in self._base_phase, teacher=teacher)
        self._distilling = teacher is not None
        self._optimizer = optimizer
        self._steps_per_epoch = int(steps_per_epoch)
        self._start_epoch = int(start_epoch)
        resume = self._resume_state
        if resume is None:  # before SparseML touches the model
            check_quantization_steps(self._manager, self._steps_per_epoch, self._start_epoch, self.source)
        else:
            self._restore_schedule(resume)
        with training_mode(module):
            self._wrapped = self._manager.modify(module, optimizer, self._steps_per_epoch, wrap_optim=scaler,
                                                 epoch=float(start_epoch), loggers=quiet_loggers(),
                                                 distillation_teacher=teacher if teacher is not None else "disable")
        if resume is not None:
            self._restore_masks(resume)
        epochs = recipe_epochs(self._manager)
        notes = list(self._notes)
        if epochs is None:
            epochs = default_epochs
            notes.append(f"recipe sets no epoch range: training runs the {epochs} epochs asked for")
        else:
            notes.append(f"recipe sets {epochs} epochs")
        notes += self._unreachable_events(epochs)
        if distillers and teacher is None:
            notes.append(f"{', '.join(distillers)} off: no --teacher-weights (pass the dense checkpoint the run starts "
                         f"from, or 'self', to distil)")
        elif distillers:
            notes.append(f"distillation ({', '.join(distillers)}) from the --teacher-weights model")
        owns_learning_rate = bool(self._manager.learning_rate_modifiers)
        if owns_learning_rate:
            kinds = sorted({type(m).__name__ for m in self._manager.learning_rate_modifiers})
            notes.append(f"recipe sets the learning rate ({', '.join(kinds)}): no YOLOv5 scheduler or warmup")
        if resume is not None:
            notes.append(f"resumed sparsification at epoch {start_epoch} with the checkpoint's masks and schedule")
        return TrainingPlan(epochs=int(epochs), owns_learning_rate=owns_learning_rate, scaler=self._wrapped,
                            notes=notes)

    def epoch_start(self, epoch: int) -> EpochDirectives:
        """Advance the recipe to the epoch start, then say the epoch's phase and whether EMA/AMP must be off."""
        module = self._model
        if self._wrapped is not None and self._manager.initialized:
            with training_mode(module):
                self._manager.update(module, self._optimizer, float(epoch), self._steps_per_epoch)
            self._pre_update_epoch = max(self._pre_update_epoch, float(epoch))
        phase = self.phase_for(epoch)
        previous = self.phase_for(epoch - 1) if epoch > 0 else self._base_phase
        quantized = "quantized" in phase
        notes = self._event_notes(epoch)
        if phase != previous:
            notes.append(f"phase {previous} -> {phase}")
            if quantized and "quantized" not in previous:
                notes.append("quantization-aware training: EMA and AMP are off from now on")
        return EpochDirectives(phase=phase, phase_changed=phase != previous, disable_ema=quantized,
                               disable_amp=quantized, notes=notes)

    def phase_reached(self, epoch: int) -> str:
        """The schedule's phase for ``epoch``, less quantization when QAT has not been applied yet.

        SparseML applies a modifier at the first optimizer step at or after its start epoch. With few steps per epoch
        a QAT start late in an epoch comes after that epoch's last step, so the epoch ends with a float model: it
        must not be labelled (or saved as best_<phase>.pt) as a quantized one.
        """
        phase = self.phase_for(epoch)
        if "quantized" in phase and not self.is_quantized:
            phase = "pruned" if "pruned" in phase else "dense"
        return phase

    def loss_computed(self, loss: Tensor, predictions: Any, images: Tensor, targets: Tensor) -> Tensor:
        """Add the distillation loss. The YOLOv5 loss is summed over the batch; SparseML's gains assume a mean."""
        if not self._distilling or self._wrapped is None:
            return loss
        batch = images.shape[0]
        total = self._manager.loss_update(loss / batch, self._model, self._optimizer, self._wrapped.wrapped_epoch,
                                          self._steps_per_epoch, student_outputs=predictions, student_inputs=images,
                                          student_labels=targets)
        return total * batch

    def skipped_step(self) -> None:
        if self._wrapped is not None:
            self._wrapped.emulated_step()

    def after_optimizer_step(self, model: nn.Module, ema_model: nn.Module | None) -> None:
        """Zero the EMA weights where the model's masks are zero (SparseML masks only the model)."""
        if ema_model is None:
            return
        masks = self._active_masks()
        if not masks:
            return
        ema_parameters = named_parameters_canonical(unwrap(ema_model))
        with torch.no_grad():
            for name, mask in masks.items():
                parameter = ema_parameters.get(name)
                if parameter is not None and parameter.shape == mask.shape:
                    parameter.mul_(mask.to(device=parameter.device, dtype=parameter.dtype))

    def checkpoint_state(self, epoch: int, final: bool) -> dict:
        """Plain data (str, numbers, lists, dicts, tensors) for a ``weights_only`` checkpoint.

        Keys: ``recipe`` (all stages composed), ``stages`` (each stage's recipe, the epoch value its schedule reached,
        its phase), ``epoch``, ``final``, ``phase``, ``is_quantized``, ``masks`` (packed bool masks by parameter name,
        see ``unpack_mask``), ``sparsity`` (of the masked parameters), ``modifiers`` (schedule state for resuming).
        """
        # train.py saves last.pt, best.pt and a per-phase best from the same epoch: snapshot the masks once.
        key = (int(epoch), self._wrapped.wrapped_steps if self._wrapped is not None else -1,
               self._finalized_state is not None)
        if self._snapshot_cache is None or self._snapshot_cache[0] != key:
            self._snapshot_cache = (key, self._finalized_state or self._snapshot_modifiers())
        modifiers, masks, sparsity = self._snapshot_cache[1]
        phase = self.phase_reached(epoch)
        quantized = self.is_quantized
        stage = {"recipe": self._stage_text, "applied_epoch": self._applied_epoch(), "epoch": int(epoch),
                 "phase": phase, "is_quantized": quantized, "final": bool(final)}
        return {
            "version": STATE_VERSION,
            "recipe": self._composed_text,
            "stages": [dict(s) for s in self._base_stages] + [stage],
            "epoch": int(epoch),
            "final": bool(final),
            "phase": phase,
            "is_quantized": quantized,
            "masks": masks,
            "base_masks": dict(self._base_masks),
            "sparsity": sparsity,
            "modifiers": modifiers,
            "steps_per_epoch": self._steps_per_epoch,
        }

    def finalize(self, model: nn.Module) -> None:
        """Keep the final masks for later checkpoints, then let SparseML remove its hooks."""
        if self._wrapped is None or not self._manager.initialized:
            return
        self._finalized_state = self._snapshot_modifiers()
        self._manager.finalize(self._model)

    # ------------------------------------------------------------------------------------------- phases
    def phase_for(self, epoch: int) -> str:
        """The model's phase at the end of ``epoch``, from the schedule alone (so a resumed run agrees)."""
        end = epoch + 1
        base_pruned = "pruned" in self._base_phase
        base_quantized = "quantized" in self._base_phase
        quantized = base_quantized or any(self._starts_before(m, end) for m in self._manager.quantization_modifiers)
        pruned = base_pruned or any(self._starts_before(m, end) and self._creates_sparsity(m)
                                    for m in self._manager.pruning_modifiers)
        if pruned and quantized:
            return "pruned_quantized"
        return "quantized" if quantized else "pruned" if pruned else "dense"

    @staticmethod
    def _starts_before(modifier: Any, end: float) -> bool:
        start = getattr(modifier, "start_epoch", -1)
        return start == -1 or start < end

    def _creates_sparsity(self, modifier: Any) -> bool:
        final = getattr(modifier, "_final_sparsity", None)
        if final is None:
            final = getattr(modifier, "final_sparsity", None)
        if isinstance(final, dict):
            final = list(final.keys())
        if isinstance(final, (list, tuple)):
            return any(is_number(v) and v > 0 for v in final)
        if is_number(final):
            return final > 0
        return self._constant_sparsity  # ConstantPruningModifier and the like keep what the weights already have

    # ------------------------------------------------------------------------------------------- internals
    @staticmethod
    def _normalized_text(manager: Any, module: nn.Module) -> str:
        apply_model_defaults(manager, module)
        return str(manager)

    def _pruned_parameters_sparse(self, module: nn.Module) -> bool:
        parameters = named_parameters_canonical(module)
        for modifier in self._manager.pruning_modifiers:
            for name in targeted_parameters(modifier, module):
                if name in parameters and bool((parameters[name] == 0).any()):
                    return True
        return False

    def _check_against_checkpoint(self, module: nn.Module, state: dict) -> None:
        """Rules for a new recipe on top of a sparsified checkpoint.

        - Quantization cannot be applied twice: a quantized checkpoint plus a QuantizationModifier is an error.
        - A pruning modifier whose ``init_sparsity`` is below the sparsity a parameter already has would first let the
          pruned weights regrow and then prune them again (the previous stage's ramp repeats): an error naming the
          parameters; ``init_sparsity: __FROM_PARAM__`` continues from the checkpoint's sparsity instead.
        - A pruned checkpoint with no pruning modifier on its pruned parameters loses its sparsity as weights regrow:
          a note (a ConstantPruningModifier keeps it).
        """
        stages = state.get("stages") or []
        if state.get("is_quantized") and self._manager.quantization_modifiers:
            stage = next((i for i, s in enumerate(stages) if s.get("is_quantized")), len(stages) - 1)
            raise RecipeError(f"{self.source}: checkpoint is already quantized (recipe stage {stage}); remove the "
                              f"QuantizationModifier or start from the pre-QAT checkpoint (recipes/"
                              f"transfer_quantized.yaml fine-tunes a quantized checkpoint as it is)")
        pruned = {name: 1.0 - float(unpack_mask(packed).float().mean()) for name, packed in self._base_masks.items()}
        pruned = {name: sparsity for name, sparsity in pruned.items() if sparsity > 0}
        covered: set[str] = set()
        for modifier in self._manager.pruning_modifiers:
            targets = targeted_parameters(modifier, module)
            covered.update(targets)
            init = getattr(modifier, "_init_sparsity", None)
            if not is_number(init):
                continue
            repeats = [name for name in targets if pruned.get(name, 0.0) > init + 1e-3]
            if repeats:
                worst = max(repeats, key=lambda n: pruned[n])
                stage = max((i for i, s in enumerate(stages) if "pruned" in s.get("phase", "")), default=0)
                raise RecipeError(
                    f"{type(modifier).__name__} starts at init_sparsity {init:g} on {len(repeats)} parameters the "
                    f"checkpoint already pruned (e.g. {worst} at {pruned[worst]:.1%}): the pruning step of recipe "
                    f"stage {stage} would repeat (its zeros regrow, then get pruned again). Use init_sparsity: "
                    f"__FROM_PARAM__ to continue from the checkpoint's sparsity, or a ConstantPruningModifier to "
                    f"keep it")
        uncovered = sorted(set(pruned) - covered)
        if uncovered:
            self._notes.append(f"warning: the checkpoint is pruned but no pruning modifier holds {len(uncovered)} of "
                               f"its pruned parameters (e.g. {uncovered[0]}); their zeros will regrow. Add a "
                               f"ConstantPruningModifier to keep the sparsity")

    def _unreachable_events(self, epochs: int) -> list[str]:
        notes = []
        for modifier in self._manager.iter_modifiers():
            kind = type(modifier).__name__
            for attribute, value in event_epochs(modifier).items():
                if kind == "EpochRangeModifier" or (attribute == "end_epoch" and kind.startswith("LearningRate")):
                    continue
                if math.floor(value) >= epochs:
                    notes.append(f"warning: {kind} {attribute} {value:g} is at or after the last epoch "
                                 f"({epochs} epochs: 0-{epochs - 1}); it never happens")
        return notes

    def _event_notes(self, epoch: int) -> list[str]:
        notes = []
        for modifier in self._manager.iter_modifiers():
            kind = type(modifier).__name__
            if kind == "EpochRangeModifier" or kind.startswith(("SetLearningRate", "LearningRate")):
                continue
            for attribute, value in event_epochs(modifier).items():
                if epoch <= value < epoch + 1:
                    notes.append(f"{kind} {attribute.removesuffix('_epoch')} at epoch {value:g}")
        return notes

    def _applied_epoch(self) -> float:
        """The latest epoch value the recipe was advanced to: restoring the structure there reproduces this model."""
        applied = max(float(self._start_epoch), self._pre_update_epoch)
        if self._wrapped is not None:
            steps = self._wrapped.wrapped_steps - 1  # the last step's epoch value, computed as SparseML does
            if steps >= 0:
                applied = max(applied, float(steps // self._steps_per_epoch)
                              + float(steps % self._steps_per_epoch) / float(self._steps_per_epoch))
        return applied

    def _pruning_masks(self, modifier: Any) -> list[tuple[str, torch.Tensor]]:
        """(float name, mask) for every parameter a pruning modifier masks, in the modifier's order."""
        module_masks = getattr(modifier, "module_masks", None)
        if module_masks is None:
            return []
        ids = canonical_names(self._model)
        result = []
        for layer, parameter_name, full_name, mask in zip(module_masks.layers, module_masks.param_names,
                                                          module_masks.names, module_masks.param_masks):
            parameter = getattr(layer, parameter_name)
            name = ids.get(id(parameter)) or re.sub(r"\.(module|forward_fn)(?=\.)", "", full_name)
            result.append((name, mask))
        return result

    def _active_masks(self) -> dict[str, torch.Tensor]:
        """Masks currently held at zero (enabled modifiers), combined per parameter."""
        combined: dict[str, torch.Tensor] = {}
        for modifier in self._manager.pruning_modifiers:
            module_masks = getattr(modifier, "module_masks", None)
            if module_masks is None or not module_masks.enabled:
                continue
            for name, mask in self._pruning_masks(modifier):
                combined[name] = mask if name not in combined else combined[name] * mask
        return combined

    def _snapshot_modifiers(self) -> tuple[list[dict], dict[str, dict], float]:
        """Schedule state of every modifier, and the effective mask of every pruned parameter (packed).

        The effective masks are the checkpoint's base masks overridden by this run's started modifiers (combined with
        AND). A modifier's own mask is stored only where it differs from the effective one (overlapping modifiers, or
        a modifier that has not started yet), so masks are normally stored once.
        """
        effective = {name: unpack_mask(packed) for name, packed in self._base_masks.items()}
        run: dict[str, torch.Tensor] = {}
        modifiers, per_modifier = [], []
        for modifier in self._manager.iter_modifiers():
            attributes = {key: (list(value) if isinstance(value, tuple) else value)
                          for key, value in vars(modifier).items() if key in _SCHEDULE_ATTRIBUTES and _plain(value)}
            entry: dict[str, Any] = {"type": type(modifier).__name__, "attributes": attributes}
            projection = _projection_state(modifier)
            if projection:
                entry["projection"] = projection
            masks = [(name, mask.detach().ne(0).cpu()) for name, mask in self._pruning_masks(modifier)]
            if getattr(modifier, "module_masks", None) is not None:
                entry["masks_enabled"] = bool(modifier.module_masks.enabled)
                entry["mask_names"] = [name for name, _ in masks]
                if getattr(modifier, "_started", False):
                    for name, keep in masks:
                        run[name] = keep if name not in run else run[name] & keep
            per_modifier.append(masks)
            modifiers.append(entry)
        effective.update(run)
        for entry, masks in zip(modifiers, per_modifier):
            if "mask_names" not in entry:
                continue
            entry["own_masks"] = {name: pack_mask(keep) for name, keep in masks
                                  if (name in effective and not torch.equal(effective[name], keep))
                                  or (name not in effective and not bool(keep.all()))}
        kept = sum(int(mask.sum()) for mask in effective.values())
        total = sum(mask.numel() for mask in effective.values())
        packed = {name: pack_mask(mask) for name, mask in effective.items()}
        return modifiers, packed, (1.0 - kept / total) if total else 0.0

    def _saved_modifiers(self, state: dict) -> list[dict]:
        saved = state.get("modifiers") or []
        current = list(self._manager.iter_modifiers())
        if [s["type"] for s in saved] != [type(m).__name__ for m in current]:
            raise RecipeError("the checkpoint's modifier state does not match its recipe (modifiers "
                              f"{[s['type'] for s in saved]} vs {[type(m).__name__ for m in current]})")
        return saved

    def _restore_schedule(self, state: dict) -> None:
        """Schedule flags go back before the manager initializes, so QAT is not applied a second time."""
        for modifier, saved in zip(self._manager.iter_modifiers(), self._saved_modifiers(state)):
            for key, value in saved["attributes"].items():
                setattr(modifier, key, list(value) if isinstance(value, list) else value)
            if saved.get("projection"):
                from sparseml.pytorch.sparsification.distillation import DISTILL_PARAM_GROUP_KEY

                # applied when the modifier creates its projections, at the first distillation step
                modifier.load_state_dict({DISTILL_PARAM_GROUP_KEY: dict(saved["projection"])})

    def _restore_masks(self, state: dict) -> None:
        effective = state.get("masks") or {}
        for modifier, saved in zip(self._manager.iter_modifiers(), self._saved_modifiers(state)):
            if "mask_names" not in saved:
                continue
            masks = self._pruning_masks(modifier)
            names = [name for name, _ in masks]
            if sorted(names) != sorted(saved["mask_names"]):
                raise RecipeError(f"{type(modifier).__name__}: the checkpoint masks {len(saved['mask_names'])} "
                                  f"parameters but the model has {len(names)} matching ones; cannot resume exactly")
            restored = []
            for name, current in masks:
                packed = saved["own_masks"].get(name) or effective.get(name)
                mask = unpack_mask(packed) if packed is not None else torch.ones(current.shape, dtype=torch.bool)
                restored.append(mask.to(device=current.device, dtype=current.dtype))
            modifier.module_masks.enabled = bool(saved["masks_enabled"])
            modifier.module_masks.set_param_masks(restored)
