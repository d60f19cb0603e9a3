"""Load weights into a ``DetectionModel``: the project's checkpoints, official Ultralytics ``yolov5*.pt`` files, and
Neural Magic's sparse checkpoints (the NM fork's and SparseZoo's ``model.pt``, rebuilt from their recipe).

Official files are pickles of whole modules, and unpickling can run code named in the file. They are opened with
``weights_only=True`` plus an allow-list of exactly the classes a YOLOv5 checkpoint needs, then converted to the
project's own model (rebuilt from the pickled YAML, state dict loaded strictly): a crafted pickle that names any other
callable is refused without running it.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models import common, yolo
from models.yolo import DetectionModel
from utils.checkpoint import CheckpointError, is_project_checkpoint

# The package's entry points import SparseML inside the calls, for sparsified or Neural Magic checkpoints only.
from utils.sparsification import convert_neuralmagic, restore_structure

LOGGER = logging.getLogger(__name__)

NEURALMAGIC_RECIPE_KEYS = ("checkpoint_recipe", "intermediate_recipe")  # a Neural Magic sparse checkpoint has one

# Every global an official YOLOv5 release checkpoint (v5.0 - v7.0) names, by the name written in the file, mapped to
# the class that rebuilds it here; nothing that can run arbitrary code. Names, not class objects: v6.0 - v6.2 files
# pickle their model as ``models.yolo.Model``, v7.0 files as ``models.yolo.DetectionModel``, and both must reach our
# ``DetectionModel`` (torch's ``safe_globals`` takes ``(callable, "module.qualname")`` pairs for exactly this).
OFFICIAL_ALLOWED_GLOBALS: dict[str, type] = {
    "models.yolo.Model": yolo.DetectionModel,  # v5.0 - v6.2
    "models.yolo.DetectionModel": yolo.DetectionModel,  # v7.0
    "models.yolo.Detect": yolo.Detect,
    **{f"models.common.{cls.__name__}": cls for cls in (
        common.Conv, common.Bottleneck, common.C3, common.SPPF, common.SPP, common.Focus, common.Concat)},
    **{f"{cls.__module__}.{cls.__qualname__}": cls for cls in (
        nn.Sequential, nn.ModuleList, nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.Upsample, nn.Identity,
        nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish)},  # Hardswish/LeakyReLU: v5.x and ``activation`` YAMLs
}


def _allowed_globals() -> list[tuple[type, str]]:
    return [(cls, name) for name, cls in OFFICIAL_ALLOWED_GLOBALS.items()]


def refused_globals(path: str | Path, error: BaseException | None = None) -> list[str]:
    """The globals a pickle names outside the allow-list (what ``torch.load(weights_only=True)`` refuses)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - legacy (non-zip) pickles cannot be listed; fall back to torch's message
        names = []
    refused = [name for name in names if name not in OFFICIAL_ALLOWED_GLOBALS]
    if not refused and error is not None:
        refused = re.findall(r"GLOBAL ([\w.]+)", str(error))
    return sorted(dict.fromkeys(refused))


@dataclass
class LoadedWeights:
    """A model ready to use plus what came with it."""

    model: DetectionModel
    source: str  # "project", "ultralytics" or "neuralmagic"
    checkpoint: dict = field(default_factory=dict)  # the project checkpoint (converted for NM files; empty: official)

    @property
    def names(self) -> list[str]:
        return list(self.model.names)


def _is_zip_or_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


def read_weights_file(path: str | Path) -> dict:
    """Open a ``.pt`` file safely; returns its top-level dict (project or official format)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}. Pass a local .pt file (project or official YOLOv5).")
    if path.stat().st_size == 0 or not _is_zip_or_pickle(path):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (empty, truncated or another format). Pass a .pt "
                              f"file written by this project, an official YOLOv5 release or Neural Magic's YOLOv5.")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = refused_globals(path, error) or [str(error).splitlines()[0][:200]]
        raise CheckpointError(f"{path} was refused without running it: it names {', '.join(refused)}, which is not "
                              f"on the allow-list of the YOLOv5 classes that Ultralytics v5.0-v7.0 release files "
                              f"name. If you trust the file, load it with the code that wrote it and save its "
                              f"state_dict() and YAML instead of the pickled model.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} could not be read ({type(error).__name__}: {str(error)[:200]}); the file is "
                              f"truncated or damaged. Re-download or use another checkpoint.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    return obj


def is_neuralmagic_checkpoint(obj: object) -> bool:
    """Neural Magic's format: a recipe key, the YAML as a dict, and a state dict (not a pickled module)."""
    if not isinstance(obj, dict) or not any(key in obj for key in NEURALMAGIC_RECIPE_KEYS):
        return False
    state = obj.get("ema") or obj.get("model")
    return (isinstance(obj.get("yaml"), dict) and isinstance(state, dict)
            and all(isinstance(v, torch.Tensor) for v in state.values()))


def as_project_checkpoint(checkpoint: dict, path: str | Path = "") -> dict | None:
    """The project checkpoint a file amounts to: itself, or a Neural Magic file converted; None for official pickles."""
    if is_project_checkpoint(checkpoint):
        return checkpoint
    if is_neuralmagic_checkpoint(checkpoint):
        return convert_neuralmagic(checkpoint, str(path))[1]
    return None


def convert_official(checkpoint: dict, path: str | Path = "") -> DetectionModel:
    """Rebuild an official pickled model as this project's ``DetectionModel`` (float32, strict load)."""
    pickled = checkpoint.get("ema") or checkpoint.get("model")
    if not isinstance(pickled, nn.Module) or not isinstance(getattr(pickled, "yaml", None), dict):
        raise CheckpointError(f"{path}: not a YOLOv5 detection checkpoint this project reads (neither this project's "
                              f"format, an Ultralytics release's pickled model with a YAML, nor a Neural Magic sparse "
                              f"checkpoint with 'yaml', 'model' state dict and 'checkpoint_recipe')")
    cfg = dict(pickled.yaml)
    model = DetectionModel(cfg, ch=cfg.get("ch", 3), nc=cfg["nc"])
    # v5.x registered Detect.anchor_grid as a buffer; it is derived from the anchors and rebuilt at the first forward.
    state = {k: v.float() for k, v in pickled.state_dict().items() if not k.endswith(".anchor_grid")}
    model.load_state_dict(state, strict=True)
    names = getattr(pickled, "names", None)
    if isinstance(names, dict):
        names = [names[i] for i in sorted(names)]
    if names:
        model.names = [str(n) for n in names]
    return model


def build_from_project_checkpoint(checkpoint: dict, prefer_ema: bool = True) -> DetectionModel:
    """Rebuild the exact structure recorded in a project checkpoint (sparsified included), then load strictly."""
    model = DetectionModel(checkpoint["model_yaml"], ch=checkpoint["model_yaml"].get("ch", 3),
                           nc=checkpoint["model_yaml"]["nc"])
    model.names = list(checkpoint["names"])
    restore_structure(model, checkpoint.get("sparsification") or {})
    state = checkpoint["ema"] if prefer_ema and checkpoint.get("ema") is not None else checkpoint["model"]
    model.load_state_dict(state, strict=True)
    return model


def load_weights(path: str | Path, prefer_ema: bool = True) -> LoadedWeights:
    """Load a project, official YOLOv5 or Neural Magic ``.pt`` as a float32 model in eval mode."""
    checkpoint = read_weights_file(path)
    if is_project_checkpoint(checkpoint):
        model = build_from_project_checkpoint(checkpoint, prefer_ema=prefer_ema)
        return LoadedWeights(model.eval(), "project", checkpoint)
    if is_neuralmagic_checkpoint(checkpoint):
        model, converted = convert_neuralmagic(checkpoint, str(path), prefer_ema=prefer_ema)
        LOGGER.info("rebuilt Neural Magic sparse checkpoint %s (%s, %s classes)", path,
                    converted["sparsification"].get("phase"), model.nc)
        return LoadedWeights(model.eval(), "neuralmagic", converted)
    model = convert_official(checkpoint, path)
    LOGGER.info("converted official YOLOv5 checkpoint %s (%s classes)", path, model.nc)
    return LoadedWeights(model.eval(), "ultralytics", {})


def intersect_state_dicts(source: dict, target: dict, exclude: tuple[str, ...] = ()) -> dict:
    """Entries of ``source`` whose name and shape match ``target`` (transfer learning to a new class count)."""
    return {k: v for k, v in source.items()
            if k in target and not any(x in k for x in exclude) and v.shape == target[k].shape}


def reinitialised_quantizer_scales(source: dict, target: dict, transferred: dict) -> dict:
    """Weight quantizer scales for fake-quantized layers that transfer learning re-initialises (another class count).

    A per-tensor scale has the same shape in both models and transfers as it is; a per-channel one has one entry per
    output channel and does not. Left at its initial value (1.0) it would round the new weights to whole numbers, so
    it gets the source layer's largest channel scale (and the zero point of a symmetric weight grid, shared by all
    channels): the new layer learns on the grid of the layer it replaces, as with a per-tensor scale.
    """
    filled = {}
    for key, value in target.items():
        if key in transferred or key not in source or ".weight_fake_quant." not in key:
            continue
        if key.endswith(".scale"):
            filled[key] = torch.full_like(value, float(source[key].max()))
        elif key.endswith(".zero_point"):
            filled[key] = torch.full_like(value, int(source[key].reshape(-1)[0]))
    return filled
