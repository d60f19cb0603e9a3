"""Facts about a model's sparsification structure: quantization present, parameter names through QAT wrappers,
pruning masks, the targets of a modifier, and rebuilding the structure a checkpoint records.

Cheap to import (torch only): loading weights, choosing a backend or building a teacher never pulls SparseML or ONNX
in; the functions that need SparseML import it when called.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

from utils.device import unwrap
from utils.sparsification.recipes import RecipeError, manager_from_state_text

LOGGER = logging.getLogger(__name__)

STATE_VERSION = 1  # of the sparsification state checkpoints carry


# Modules whose forward takes a list of tensors: SparseML's QuantWrapper (one tensor in) around them breaks the forward
# pass, and Detect's decode must stay float anyway. Detect's 1x1 convs are its children and are still quantized.
ALWAYS_FLOAT_MODULES = ("Concat", "Detect")
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)



def has_quantization(model: nn.Module) -> bool:
    """Whether the model carries fake-quantize modules (a QAT model); such models export through SparseML."""
    return any(isinstance(m, FakeQuantizeBase) for m in model.modules())


def _is_wrapper(module: nn.Module) -> str | None:
    """The child name a quantization wrapper keeps the wrapped module under (None for other modules)."""
    from torch.ao.quantization import QuantWrapper

    if isinstance(module, QuantWrapper):
        return "module"
    if type(module).__name__ == "QATWrapper":
        return "forward_fn"
    return None


def canonical_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in the float model, looking through quantization wrappers.

    QAT renames ``model.1.conv.weight`` to ``model.1.conv.module.weight``; masks are stored under the float name so that
    a checkpoint saved before QAT and one saved during QAT (and the EMA, which stays float) agree.
    """
    names: dict[int, str] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        for name, parameter in module.named_parameters(recurse=False):
            names.setdefault(id(parameter), f"{prefix}{name}")
        skip = _is_wrapper(module)
        for name, child in module.named_children():
            walk(child, prefix if name == skip else f"{prefix}{name}.")

    walk(model, "")
    return names


def named_parameters_canonical(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters by their float name (``canonical_names``): the names recipes and masks use."""
    by_id = {id(p): p for p in model.parameters()}
    return {name: by_id[key] for key, name in canonical_names(model).items()}


def module_and_type_names(model: nn.Module) -> tuple[list[str], set[str]]:
    """Module names (float names and actual ones) and the module type names present."""
    names, types = set(), set()
    for name, module in model.named_modules():
        names.add(name)
        types.add(type(module).__name__)
    canonical = set()
    for name in names:
        canonical.add(re.sub(r"\.(module|forward_fn)(?=\.|$)", "", name))
    return sorted(names | canonical), types


def pack_mask(mask: torch.Tensor) -> dict:
    """A mask as bits (8 per byte): pruning masks of yolov5x would otherwise add 86 MB to every checkpoint."""
    flat = mask.detach().reshape(-1).ne(0).cpu()
    padding = (-flat.numel()) % 8
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    packed = (flat.view(-1, 8).to(torch.uint8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)
    return {"shape": list(mask.shape), "bits": packed}


def unpack_mask(packed: dict) -> torch.Tensor:
    """Inverse of the packing in checkpoints: a bool tensor, True where the weight is kept."""
    shape = [int(s) for s in packed["shape"]]
    count = math.prod(shape)
    bits = packed["bits"].to(device="cpu", dtype=torch.uint8).unsqueeze(1).bitwise_and(_BIT_WEIGHTS).ne(0).reshape(-1)
    return bits[:count].reshape(shape)


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether a recipe's parameter entry (a name, or ``re:`` and a regex) names ``name``."""
    return bool(re.match(pattern[3:], name)) if pattern.startswith("re:") else pattern == name


def modifier_patterns(modifier: Any) -> list[str]:
    """The parameter entries of a pruning-style modifier, as a list of strings."""
    raw = getattr(modifier, "_params", None) or getattr(modifier, "params", None)
    if raw is None:
        return []
    return [raw] if isinstance(raw, str) else [str(p) for p in raw]


def targeted_parameters(modifier: Any, model: nn.Module) -> list[str]:
    """Float names of the parameters a pruning-style modifier would act on."""
    from sparseml.pytorch.utils import get_prunable_layers

    patterns = modifier_patterns(modifier)
    names = list(named_parameters_canonical(model))
    if "__ALL__" in patterns:
        return names
    if "__ALL_PRUNABLE__" in patterns:
        ids = canonical_names(model)
        return [ids[id(layer.weight)] for _, layer in get_prunable_layers(model) if id(layer.weight) in ids]
    return [name for name in names if any(pattern_matches(p, name) for p in patterns)]


def is_torch_layer_type(name: Any) -> bool:
    """Whether ``name`` is a ``torch.nn`` layer class name (e.g. 'SiLU'), as a quantization ``ignore`` entry may be."""
    return isinstance(getattr(nn, str(name), None), type)


def apply_model_defaults(manager: Any, model: nn.Module) -> list[str]:
    """Make every QuantizationModifier run on YOLOv5, including a bare one as in the SparseML YOLOv5 guide.

    SparseML's current QuantizationModifier quantizes the input of every leaf module that its ``ignore`` list does
    not name by wrapping the module in a ``QuantWrapper``, whose forward takes one tensor. ``Concat`` and ``Detect``
    take a list of tensors, so they are added to ``ignore`` when missing (Concat is a leaf and would be wrapped;
    Detect would be wrapped only if a ``scheme_overrides`` entry targeted its type, and its decode must stay float).
    Nothing else changes: SiLU, Upsample and MaxPool2d (single-tensor modules) are quantized or not as the recipe
    says, so a recipe means the same here as in SparseML; the project recipes list them in ``ignore`` themselves.
    An ``ignore`` entry naming a torch layer type the model does not have is dropped (SparseML rejects it): the
    shipped recipes keep 'SiLU' float, and a model built with ``activation: nn.ReLU()`` has none.
    Residual adds quantize through ``models.common.Add``'s ``wrap_qat`` (a ``QATWrapper`` with two inputs).
    The legacy modifier (chosen by SparseML when a recipe uses its options, e.g. ``submodules``) quantizes through
    qconfig propagation and never wraps these modules, so it is left alone. Idempotent: the normalized recipe is the
    text that checkpoints store.
    """
    from sparseml.pytorch.sparsification.quantization.modifier_quantization import QuantizationModifier

    present = {type(module).__name__ for module in model.modules()}
    notes = []
    for modifier in manager.quantization_modifiers:
        if not isinstance(modifier, QuantizationModifier):
            continue
        ignore = list(modifier.ignore or [])
        absent = [name for name in ignore if name not in present and is_torch_layer_type(name)]
        if absent:
            ignore = [name for name in ignore if name not in absent]
            modifier.ignore = ignore
            notes.append(f"QuantizationModifier: ignore {', '.join(absent)} dropped (no such layer in this model)")
        added = [name for name in ALWAYS_FLOAT_MODULES if name in present and name not in ignore]
        if added:
            modifier.ignore = ignore + added
            notes.append(f"QuantizationModifier: {' and '.join(added)} left float (their input is a list of tensors)")
    return notes


def check_state(state: dict) -> None:
    """Refuse a sparsification state written by newer code than this."""
    version = state.get("version", 0)
    if version > STATE_VERSION:
        raise RecipeError(f"checkpoint sparsification state version {version} is newer than this code "
                          f"({STATE_VERSION}); update the repository")


def restore_structure(model: nn.Module, state: dict) -> None:
    """Rebuild the structure a checkpoint's sparsification state records (QAT wrappers, fused ConvBn, fake-quant,
    frozen BN), stage by stage at the exact epoch each stage reached, so ``load_state_dict(strict=True)`` works.

    Masks are not needed here: the checkpoint's weights already hold the zeros; training restores masks itself.
    """
    if not state or not state.get("stages"):
        return
    check_state(state)
    module = unwrap(model)
    apply_stages(module, state["stages"])
    if bool(state.get("is_quantized")) != has_quantization(module):
        raise RecipeError(f"checkpoint records is_quantized={state.get('is_quantized')} but its recipe "
                          f"{'did not rebuild' if state.get('is_quantized') else 'rebuilt'} a quantized model; "
                          f"the checkpoint's sparsification state is inconsistent")



def apply_stages(module: nn.Module, stages: list[dict]) -> None:
    """Apply each stage's recipe structure at the epoch it reached (``applied_epoch``; ``inf`` for all of it)."""
    for index, stage in enumerate(stages):
        manager = manager_from_state_text(stage["recipe"], f"checkpoint recipe stage {index}")
        if not manager.structured_modifiers:
            continue
        apply_model_defaults(manager, module)
        with training_mode(module):
            manager.apply_structure(module, epoch=float(stage["applied_epoch"]), loggers=quiet_loggers())


def masks_from_zeros(model: nn.Module, recipes: list[str], source: str) -> tuple[dict[str, dict], float]:
    """Packed keep-masks (weight != 0) of every parameter the recipes' pruning modifiers target, by float name, and
    their overall sparsity: the masks a checkpoint written elsewhere would have carried had it been trained here."""
    parameters = named_parameters_canonical(model)
    masks: dict[str, torch.Tensor] = {}
    for index, text in enumerate(recipes):
        manager = manager_from_state_text(text, f"{source} recipe {index}")
        for modifier in manager.pruning_modifiers:
            for name in targeted_parameters(modifier, model):
                if name in parameters:
                    masks[name] = parameters[name].detach().ne(0).cpu()
    total = sum(mask.numel() for mask in masks.values())
    sparsity = 1.0 - sum(int(mask.sum()) for mask in masks.values()) / total if total else 0.0
    return {name: pack_mask(mask) for name, mask in masks.items()}, sparsity

@contextlib.contextmanager
def training_mode(module: nn.Module) -> Iterator[None]:
    """SparseML fuses Conv+BN for QAT (``ConvBn2d``) only in training mode; in eval mode it folds BN into the conv,
    which gives a different state dict. Structure changes therefore always run in training mode."""
    was_training = module.training
    module.train()
    try:
        yield
    finally:
        module.train(was_training)


def quiet_loggers() -> Any:
    """Modifier logs go to our logger, at debug level, and only when someone listens.

    SparseML's default logger writes ./sparse_logs/*.log into the working directory, and its per-layer sparsity logs
    cost a pass over every pruned tensor at each step; without a listener our logger stays disabled.
    """
    from sparseml.pytorch.utils import LoggerManager, PythonLogger

    logger = logging.getLogger(f"{__name__}.sparseml")
    # Never an empty manager: SparseML treats an empty one as "no loggers given" and builds its default file logger.
    return LoggerManager([PythonLogger(logger=logger, enabled=logger.isEnabledFor(logging.DEBUG))], log_python=False)
