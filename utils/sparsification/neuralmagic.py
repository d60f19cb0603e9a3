"""Neural Magic's sparse YOLOv5 checkpoints (the NM fork's ``last.pt``, SparseZoo's ``training/model.pt``) as ours.

Those files hold a state dict of the fork's model *after* its recipe changed the structure (QAT wrappers, fused
ConvBn, fake-quant), the model YAML and the recipe (``checkpoint_recipe``; ``intermediate_recipe`` at ``epoch`` for a
file saved mid-training). They load the way Neural Magic's own loader does it: build the model from the YAML, apply
the recipe's structure, load the state dict strictly. The result is one of this project's checkpoints: the recipe
becomes its first sparsification stage and the file's zeros its masks, so fine-tuning, resume, val and export treat it
like any checkpoint trained here.

The fork differs from our model in one name: its residual add is ``Bottleneck.add_node`` (a module holding a
``FloatFunctional``), ours ``Bottleneck.add_op``. Both are wrapped the same way by SparseML's QAT (a ``QATWrapper``
with two input quantizers), so the state dict entries map one to one.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from models.yolo import DetectionModel
from utils.checkpoint import CheckpointError, build_checkpoint, plain
from utils.sparsification.recipes import RecipeError
from utils.sparsification.structure import STATE_VERSION, apply_stages, has_quantization, masks_from_zeros

_NAME_MAP = ((re.compile(r"\.add_node(?=\.|$)"), ".add_op"),)  # fork name -> our name
_DERIVED = re.compile(r"\.anchor_grid$")  # older forks registered the anchor grid (derived from anchors) as a buffer
_QUANTIZATION_ENTRY = re.compile(r"(fake_quant|activation_post_process|\.quant\.|input_quant_stubs|output_quant_stubs)")


def _stages(checkpoint: dict) -> list[tuple[str, str, float]]:
    """(key, recipe text, epoch its structure applies at) for each recipe the file carries, oldest first."""
    stages = []
    if checkpoint.get("checkpoint_recipe"):
        stages.append(("checkpoint_recipe", str(checkpoint["checkpoint_recipe"]), math.inf))
    if checkpoint.get("intermediate_recipe"):
        epoch = checkpoint.get("epoch")
        epoch = math.inf if epoch is None or float(epoch) < 0 else float(epoch)
        stages.append(("intermediate_recipe", str(checkpoint["intermediate_recipe"]), epoch))
    return stages


def _our_name(key: str) -> str:
    for pattern, replacement in _NAME_MAP:
        key = pattern.sub(replacement, key)
    return key


# Path segments below a YOLOv5 layer unit (a Conv block, a Detect conv, a residual add): what QAT wraps, fuses or adds.
_BELOW_UNIT = {"conv", "bn", "act", "module", "quant", "dequant", "weight_fake_quant", "activation_post_process",
               "input_quant_stubs", "output_quant_stubs", "forward_fn"}


def _layer_of(key: str) -> str:
    """The layer unit an entry belongs to, in either model's names: ``model.2.m.0.cv1.conv.module.weight`` ->
    ``model.2.m.0.cv1``, ``model.24.m.0.module.weight`` -> ``model.24.m.0``."""
    parts = key.split(".")[:-1]
    for index, part in enumerate(parts):
        if part in _BELOW_UNIT:
            return ".".join(parts[:index])
    return ".".join(parts)


def _mismatch_report(file_state: dict, model: torch.nn.Module) -> list[str]:
    """One line per layer whose entries differ between the file and the rebuilt model, saying why."""
    ours = model.state_dict()
    only_file: dict[str, list[str]] = {}
    only_model: dict[str, list[str]] = {}
    for key in set(file_state) - set(ours):
        only_file.setdefault(_layer_of(key), []).append(key)
    for key in set(ours) - set(file_state):
        only_model.setdefault(_layer_of(key), []).append(key)
    problems: dict[str, list[str]] = {}
    for layer in set(only_file) | set(only_model):
        extra, missing = sorted(only_file.get(layer, [])), sorted(only_model.get(layer, []))
        quantized_file = any(_QUANTIZATION_ENTRY.search(k) for k in extra)
        quantized_model = any(_QUANTIZATION_ENTRY.search(k) for k in missing)
        reasons = problems.setdefault(layer, [])
        if quantized_model and not quantized_file:
            reasons.append("the recipe's structure quantizes this layer but the file has no quantization entries for "
                           "it")
        elif quantized_file and not quantized_model:
            reasons.append("the file has quantization entries for this layer but the recipe's structure does not "
                           "quantize it")
        elif extra and missing:
            reasons.append(f"the file's entries ({extra[0]}, ...) differ from the rebuilt layer's ({missing[0]}, ...)")
        elif extra:
            reasons.append(f"the file has {extra[0]}, which the model built from its yaml lacks")
        else:
            reasons.append(f"the file lacks {missing[0]}")
    for key in sorted(set(ours) & set(file_state)):
        layer = _layer_of(key)
        if tuple(ours[key].shape) != tuple(file_state[key].shape) and layer not in problems:
            problems[layer] = [f"'{key}' has shape {tuple(file_state[key].shape)} in the file and "
                               f"{tuple(ours[key].shape)} in the model built from its yaml"]
    order = sorted(problems, key=lambda name: [(int(p), "") if p.isdigit() else (-1, p) for p in name.split(".")])
    return [f"layer {re.sub(r'[.]add_op$', '.add_node', layer)}: {'; '.join(problems[layer])}" for layer in order]


def convert_neuralmagic(checkpoint: dict, path: str | Path = "", prefer_ema: bool = True
                        ) -> tuple[DetectionModel, dict]:
    """Rebuild a Neural Magic sparse checkpoint; returns the loaded model and the equivalent project checkpoint.

    Raises ``CheckpointError`` naming each layer whose structure the recipe cannot rebuild, and why.
    """
    source = str(path) or "Neural Magic checkpoint"
    cfg = dict(checkpoint["yaml"])
    nc = int(cfg.get("nc") or checkpoint.get("nc") or 80)
    try:
        model = DetectionModel(cfg, ch=int(cfg.get("ch", 3)), nc=nc)
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{source}: its yaml does not build a YOLOv5 detection model ({error})") from None
    stages = _stages(checkpoint)
    epoch = int(checkpoint["epoch"]) if checkpoint.get("epoch") is not None else -1
    state = {
        "version": STATE_VERSION,
        "recipe": stages[-1][1] if stages else "",
        "stages": [{"recipe": text, "applied_epoch": applied, "epoch": epoch, "phase": "", "is_quantized": False,
                    "final": applied == math.inf, "origin": f"neuralmagic {key}"} for key, text, applied in stages],
    }
    try:
        apply_stages(model, state["stages"])
    except RecipeError as error:
        raise CheckpointError(f"{source}: its recipe cannot be applied ({error}). The file's checkpoint_recipe must "
                              f"be a SparseML recipe; re-save the file with the code that trained it.") from None
    except Exception as error:  # noqa: BLE001 - SparseML raises many types when a recipe does not fit a model
        raise CheckpointError(f"{source}: its recipe's structure cannot be applied to the model built from its yaml "
                              f"({type(error).__name__}: {str(error).splitlines()[0][:300]}); the recipe and the "
                              f"yaml must be the ones the weights were trained with.") from None
    raw = checkpoint["ema"] if prefer_ema and checkpoint.get("ema") else checkpoint["model"]
    file_state = {_our_name(k): v for k, v in raw.items() if not _DERIVED.search(k)}
    problems = _mismatch_report(file_state, model)
    if problems:
        more = f"\n  ... and {len(problems) - 8} more layers" if len(problems) > 8 else ""
        shown = "\n  ".join(problems[:8]) + more
        raise CheckpointError(f"{source}: the structure its recipe describes does not match its weights, so it cannot "
                              f"be rebuilt:\n  {shown}\nThe file's checkpoint_recipe/intermediate_recipe and epoch "
                              f"must be the ones its weights were saved with.")
    model.load_state_dict(file_state, strict=True)
    names = checkpoint.get("names")
    if isinstance(names, dict):
        names = [names[i] for i in sorted(names)]
    model.names = [str(n) for n in names] if names and len(names) == nc else [str(i) for i in range(nc)]

    masks, sparsity = masks_from_zeros(model, [text for _, text, _ in stages], source)
    quantized = has_quantization(model)
    phase = {(True, True): "pruned_quantized", (True, False): "pruned", (False, True): "quantized"}.get(
        (sparsity > 0, quantized), "dense")
    for stage in state["stages"]:
        stage.update(phase=phase, is_quantized=quantized)
    state.update(epoch=epoch, final=True, phase=phase, is_quantized=quantized,
                 masks=masks, base_masks={}, sparsity=sparsity,
                 modifiers=[], steps_per_epoch=0)
    project = build_checkpoint(
        model_yaml=model.yaml, names=list(model.names), model_state={k: v.detach().clone() for k, v in
                                                                     model.state_dict().items()},
        ema_state=None, ema_updates=0, optimizer_state=None, scaler_state=None, epoch=-1, best_fitness=0.0,
        phase_best_fitness={}, options={"weights": str(path), "source": "neuralmagic"},
        hyp=plain(checkpoint.get("hyp") or {}), sparsification=state, final=True)
    return model, project
