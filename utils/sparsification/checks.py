"""Checks of a recipe against the model it will run on, before the first step: parameter names and regexes (with
the closest names when one matches nothing), quantization ``ignore`` entries, distillation and QAT schedules that
would silently do nothing on this run.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from torch import nn

from utils.device import unwrap
from utils.sparsification.recipes import RecipeError, format_number, is_number
from utils.sparsification.structure import (
    is_torch_layer_type,
    modifier_patterns,
    module_and_type_names,
    named_parameters_canonical,
    pattern_matches,
)


def closest_names(pattern: str, candidates: list[str], count: int = 5) -> list[str]:
    """Up to ``count`` candidates closest to ``pattern`` (regex syntax stripped), for error messages."""
    query = pattern[3:] if pattern.startswith("re:") else pattern
    query = re.sub(r"\\(.)", r"\1", query)
    query = re.sub(r"[\^$*+?()\[\]{}|]", "", query)
    close = difflib.get_close_matches(query, candidates, n=count, cutoff=0.3)
    return close or candidates[:count]


def check_recipe_against_model(manager: Any, model: nn.Module, source: str) -> None:
    """Every ``params`` name/regex and every quantization ``ignore``/``scheme_overrides``/``submodules`` entry must
    match something in the model; otherwise a ``RecipeError`` lists each miss with the closest names."""
    parameter_names = list(named_parameters_canonical(model))
    module_names, type_names = module_and_type_names(model)
    problems = []
    for modifier in manager.iter_modifiers():
        kind = type(modifier).__name__
        for pattern in modifier_patterns(modifier):
            if pattern in ("__ALL__", "__ALL_PRUNABLE__"):
                continue
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as error:
                    problems.append(f"{kind} params '{pattern}' is not a valid regex ({error})")
                    continue
            if not any(pattern_matches(pattern, name) for name in parameter_names):
                problems.append(f"{kind} params '{pattern}' matches no parameter; closest: "
                                f"{', '.join(closest_names(pattern, parameter_names))}")
        # An ``ignore`` entry naming a torch layer type the model lacks is harmless (the shipped recipes keep 'SiLU'
        # float; a ReLU model has none), so only names that are no type at all, typos, are errors there.
        entries = [entry for entry in getattr(modifier, "ignore", None) or [] if not is_torch_layer_type(entry)]
        entries += list((getattr(modifier, "scheme_overrides", None) or {}).keys())
        for entry in entries:
            if entry not in type_names and not any(name.startswith(entry) for name in module_names):
                problems.append(f"{kind} names '{entry}', which is neither a module type nor a submodule of this "
                                f"model; closest: {', '.join(closest_names(entry, sorted(type_names) + module_names))}")
        submodules = getattr(modifier, "submodules", None) if kind == "QuantizationModifier" else None
        for entry in submodules or []:
            if entry not in module_names:
                problems.append(f"{kind} submodules '{entry}' is not a submodule of this model; closest: "
                                f"{', '.join(closest_names(entry, module_names))}")
        # The legacy modifier compares these with type names: a misspelt one would silently change nothing.
        for option in ("exclude_module_types", "custom_quantizable_module_types"):
            entries = (getattr(modifier, option, None) or []) if kind == "QuantizationModifier" else []
            for entry in entries:
                if entry not in type_names and not is_torch_layer_type(entry):
                    problems.append(f"{kind} {option} '{entry}' is not a layer type of torch.nn or of this model; "
                                    f"closest: {', '.join(closest_names(entry, sorted(type_names)))}")
    if problems:
        raise RecipeError(f"{source} does not fit this model:\n  " + "\n  ".join(problems))


def check_distillation_schedule(manager: Any, model: nn.Module, source: str, quantized_base: bool = False,
                                teacher: nn.Module | None = None) -> None:
    """Distillation must end before quantization-aware training starts, and named layers must exist (student layers
    in the model, teacher layers in ``teacher``).

    Per-layer distillation hooks the model's Conv2d layers; QAT replaces them with fused fake-quantized modules, so a
    distillation window that overlaps QAT would silently compare stale features. (The NM recipes end it before QAT.)
    """
    distillers = list(manager.distillation_modifiers)
    if not distillers:
        return
    problems = []
    qat_starts = [float(m.start_epoch) for m in manager.quantization_modifiers]
    module_names, _ = module_and_type_names(model)
    for modifier in distillers:
        kind = type(modifier).__name__
        end = float(modifier.end_epoch)
        if quantized_base:
            problems.append(f"{kind}: the checkpoint is already quantized (QAT); distil before quantization, e.g. "
                            f"from the pruned checkpoint")
        elif qat_starts and (end < 0 or end > min(qat_starts)):
            problems.append(f"{kind} ends at epoch {'never (-1)' if end < 0 else format_number(end)}, after QAT "
                            f"starts at {format_number(min(qat_starts))}; set its end_epoch to the QAT start "
                            f"(e.g. end_epoch: eval(qat_start_epoch))")
        for name in getattr(modifier, "student_layer_names", None) or []:
            if name not in module_names:
                problems.append(f"{kind} student layer '{name}' is not a module of this model; closest: "
                                f"{', '.join(closest_names(name, module_names))}")
        if teacher is not None:
            teacher_names, _ = module_and_type_names(unwrap(teacher))
            for name in getattr(modifier, "teacher_layer_names", None) or []:
                if name not in teacher_names:
                    problems.append(f"{kind} teacher layer '{name}' is not a module of the --teacher-weights model; "
                                    f"closest: {', '.join(closest_names(name, teacher_names))}")
    if problems:
        raise RecipeError(f"{source}: distillation does not fit this model or schedule:\n  " + "\n  ".join(problems))


def check_quantization_steps(manager: Any, steps_per_epoch: int, start_epoch: int, source: str) -> None:
    """QAT observers must see at least one training step before ``disable_quantization_observer_epoch``.

    SparseML applies QAT and disables the observers at the first optimizer step at or after each epoch. When no step
    falls between the two (a short run of a long recipe: 250 epochs as 3 put QAT at 2.88 and the observers' end at
    2.904), every quantizer keeps its initial scale of 1 and nearly every weight rounds to zero. Refused with the
    step arithmetic instead of training and exporting such a model.
    """
    if steps_per_epoch <= 0:
        return
    for modifier in manager.quantization_modifiers:
        start = float(modifier.start_epoch)
        observers_off = getattr(modifier, "disable_quantization_observer_epoch", None)
        if not is_number(observers_off) or observers_off < 0 or start < 0 or start < start_epoch:
            continue
        first_step = math.ceil(start * steps_per_epoch - 1e-6) / steps_per_epoch  # epoch value of the first QAT step
        if first_step >= observers_off:
            raise RecipeError(
                f"{source}: QuantizationModifier disable_quantization_observer_epoch {observers_off:g} comes before "
                f"any training step with QAT on (start_epoch {start:g}; with {steps_per_epoch} steps per epoch the "
                f"first QAT step is at {first_step:g}): the quantizers would never see data and most weights would "
                f"round to zero. Fix: more steps per epoch (smaller --batch-size), more --epochs, or a later "
                f"disable_quantization_observer_epoch")
