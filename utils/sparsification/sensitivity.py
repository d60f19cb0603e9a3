"""Layer-wise pruning sensitivity: how much mAP each conv layer loses when it alone is magnitude-pruned (one shot,
no training), and a per-layer sparsity layout that reaches a total sparsity where it costs least.

A recipe that prunes every layer of a group to one sparsity spends accuracy where it is cheap and where it is dear
alike; the analysis measures which layers tolerate more (``sensitivity.py`` runs it and writes the recipe). Losses of
single layers are not additive and a fine-tune recovers much of them, so the layout is a ranking, not a prediction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

# Top-level recipe variables that only the template's pruning groups use; they are dropped with those groups.
_GROUP_VARIABLE = re.compile(r"^(final_sparsity_\w+)\s*:", re.MULTILINE)
_TOP_LEVEL_KEY = re.compile(r"^[A-Za-z_]\w*\s*:")


@dataclass
class LayerSensitivity:
    """One prunable conv weight: its size and the mAP@0.5:0.95 of the model with it alone pruned to each level."""

    name: str
    numel: int
    maps: dict[float, float]


def prunable_conv_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The conv weights the project's recipes prune: every ``model.N...conv.weight`` but the stem (the first layer,
    raw pixels) and Detect (the last layer, the outputs), as in recipes/yolov5n.pruned_quant.yaml."""
    indexed = [(name, int(match.group(1)), parameter) for name, parameter in model.named_parameters()
               if (match := re.match(r"model\.(\d+)\.(?:.*\.)?conv\.weight$", name)) and parameter.dim() == 4]
    if not indexed:
        raise ValueError("no conv weights named model.N....conv.weight: not a YOLOv5 DetectionModel")
    last = max(index for _, index, _ in indexed)
    detect = len(getattr(model, "model", [])) - 1
    excluded = {0, detect if detect > 0 else last}
    return [(name, parameter) for name, index, parameter in indexed if index not in excluded]


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A mask that zeroes the ``sparsity`` fraction of ``weight`` with the smallest magnitude (as GMP's
    unstructured magnitude pruning does at its final sparsity)."""
    count = int(round(sparsity * weight.numel()))
    mask = torch.ones_like(weight, dtype=torch.bool)
    if count > 0:
        smallest = torch.argsort(weight.detach().abs().flatten())[:count]
        mask.view(-1)[smallest] = False
    return mask


def layer_sensitivities(model: nn.Module, evaluate: Callable[[], float], levels: Sequence[float],
                        progress: Callable[[str], None] = lambda line: None,
                        known: dict[str, dict[float, float]] | None = None) -> tuple[float, list[LayerSensitivity]]:
    """Evaluate ``model`` dense (the baseline), then with each prunable conv weight alone pruned to each of
    ``levels``; every weight is restored after its measurements. ``evaluate`` returns mAP@0.5:0.95. Level 0 (the
    layer left dense) is the baseline, not measured; ``known`` (layer name -> level -> mAP, from an earlier analysis
    of the same model) is taken as measured, so adding levels measures only the new ones."""
    baseline = float(evaluate())
    results = []
    layers = prunable_conv_weights(model)
    for number, (name, parameter) in enumerate(layers, 1):
        original = parameter.detach().clone()
        earlier = (known or {}).get(name, {})
        maps = {}
        try:
            for level in levels:
                if level == 0 or float(level) in earlier:
                    maps[float(level)] = baseline if level == 0 else float(earlier[float(level)])
                    continue
                with torch.no_grad():
                    parameter.copy_(original * magnitude_mask(original, level))
                maps[float(level)] = float(evaluate())
        finally:
            with torch.no_grad():
                parameter.copy_(original)
        results.append(LayerSensitivity(name, parameter.numel(), maps))
        progress(f"{number}/{len(layers)} {name} ({parameter.numel()} weights): "
                 + ", ".join(f"{level:.2f} -> {value:.4f}" for level, value in maps.items()))
    return baseline, results


def conv_macs(model: nn.Module, imgsz: int) -> dict[str, int]:
    """Multiply-accumulates of each conv for one ``imgsz`` x ``imgsz`` image, by the name of its weight: weights x
    output positions. A weight of an early, high-resolution conv costs far more inference time than one of P5."""
    positions: dict[str, int] = {}

    def recorder(key: str) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            positions[key] = output.shape[-2] * output.shape[-1]
        return hook

    hooks = [module.register_forward_hook(recorder(f"{name}.weight"))
             for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    try:
        parameter = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, imgsz, imgsz, dtype=parameter.dtype, device=parameter.device))
    finally:
        for hook in hooks:
            hook.remove()
    weights = dict(model.named_parameters())
    return {name: weights[name].numel() * count for name, count in positions.items()}


def sparsity_layout(baseline: float, layers: Sequence[LayerSensitivity], target: float,
                    total_conv_weights: int, sizes: dict[str, float] | None = None) -> dict[str, float]:
    """Each layer's final sparsity, chosen among its measured levels so that at least ``target`` of
    ``total_conv_weights`` (every conv weight, the unpruned stem and Detect included) is zero, at the least summed
    mAP loss: every layer starts at the lowest level and the layer whose next level costs least mAP per zeroed weight
    steps up, until the target is reached; then steps that the target no longer needs are taken back, costliest
    first. A layer's loss at a level is the largest it showed at that level or below
    (one-shot measurements are noisy; a higher sparsity never counts as cheaper). ``sizes``: what a layer's zeros
    count for instead of its weights (its multiply-accumulates: ``conv_macs``), ``total_conv_weights`` then being
    the total in that unit."""
    if not layers:
        raise ValueError("no layers to lay out")
    levels = sorted(layers[0].maps)
    loss = {}
    for layer in layers:
        if sorted(layer.maps) != levels:
            raise ValueError(f"{layer.name} was measured at other levels than {levels}")
        worst = 0.0
        for level in levels:
            worst = max(worst, baseline - layer.maps[level])
            loss[layer.name, level] = worst
    chosen = {layer.name: 0 for layer in layers}  # index into levels
    size = {layer.name: (sizes[layer.name] if sizes else layer.numel) for layer in layers}

    def zeros() -> float:
        return sum(size[name] * levels[index] for name, index in chosen.items())

    needed = target * total_conv_weights
    while zeros() < needed - 0.5:
        steps = [((loss[name, levels[index + 1]] - loss[name, levels[index]])
                  / (size[name] * (levels[index + 1] - levels[index])), -size[name], name)
                 for name, index in chosen.items() if index + 1 < len(levels)]
        if not steps:
            raise ValueError(f"{target:.0%} of the conv weights cannot be zero with these levels (at most "
                             f"{zeros() / total_conv_weights:.1%}): add a higher level")
        _, _, name = min(steps)
        chosen[name] += 1
    while True:  # the last steps may overshoot: give back the costliest steps that the target does not need
        spare = [(loss[name, levels[index]] - loss[name, levels[index - 1]], size[name], name)
                 for name, index in chosen.items() if index > 0
                 and zeros() - size[name] * (levels[index] - levels[index - 1]) >= needed - 0.5]
        if not spare or max(spare)[0] <= 0:
            break
        chosen[max(spare)[2]] -= 1
    return {name: levels[index] for name, index in chosen.items()}


def layout_recipe(template: str, layout: dict[str, float], header: str) -> str:
    """``template`` (a pruning recipe's text) with its ``pruning_modifiers`` replaced by one GMPruningModifier per
    final sparsity of ``layout`` above 0 (exact parameter names; layers at 0 stay dense), the template's group
    variables (``final_sparsity_*``) that nothing else uses removed, and ``header`` (comment lines) on top. The
    schedule, distillation and quantization stay the template's."""
    lines = template.splitlines()
    start = next((i for i, line in enumerate(lines) if line.rstrip() == "pruning_modifiers:"), None)
    if start is None:
        raise ValueError("the template recipe has no top-level 'pruning_modifiers:' to replace")
    end = next((i for i in range(start + 1, len(lines)) if _TOP_LEVEL_KEY.match(lines[i])), len(lines))
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
        end -= 1  # keep the blank lines and comments that open the next block
    needed = ("init_sparsity", "pruning_start_epoch", "pruning_end_epoch", "pruning_update_frequency", "mask_type")
    missing = [name for name in needed if not re.search(rf"^{name}\s*:", template, re.MULTILINE)]
    if missing:
        raise ValueError(f"the template recipe does not define {', '.join(missing)} (the pruning schedule)")
    block = ["pruning_modifiers:"]
    for level in sorted(set(layout.values()) - {0}, reverse=True):  # layers at 0 stay dense: no modifier
        names = sorted((name for name, value in layout.items() if value == level), key=_layer_order)
        block += ["  - !GMPruningModifier",
                  "    params: [" + ", ".join(f"'{name}'" for name in names) + "]",
                  "    init_sparsity: eval(init_sparsity)",
                  f"    final_sparsity: {level}",
                  "    start_epoch: eval(pruning_start_epoch)",
                  "    end_epoch: eval(pruning_end_epoch)",
                  "    update_frequency: eval(pruning_update_frequency)",
                  "    inter_func: cubic",
                  "    mask_type: eval(mask_type)",
                  "    leave_enabled: True", ""]
    lines = [*lines[:start], *block, *lines[end:]]
    for variable in _GROUP_VARIABLE.findall("\n".join(lines)):
        used = [line for line in lines if re.search(rf"\b{variable}\b", line)
                and not line.lstrip().startswith("#") and not line.startswith(variable)]
        if not used:
            lines = [line for line in lines if not re.match(rf"{variable}\s*:", line)]
    return header.rstrip("\n") + "\n" + "\n".join(lines).rstrip("\n") + "\n"


def _layer_order(name: str) -> tuple[int, str]:
    match = re.match(r"model\.(\d+)\.", name)
    return (int(match.group(1)) if match else 0, name)
