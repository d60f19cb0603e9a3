"""Load weights into a ``DetectionModel``: the project's checkpoints and official Ultralytics ``yolov5*.pt`` files.

Official files are pickles of whole modules, and unpickling can run code named in the file. They are opened with
``weights_only=True`` plus an allow-list of exactly the classes a YOLOv5 checkpoint needs, then converted to the
project's own model (rebuilt from the pickled YAML, state dict loaded strictly): a crafted pickle that names any other
callable is refused without running it.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models import common, yolo
from models.yolo import DetectionModel
from utils.checkpoint import CheckpointError, is_project_checkpoint

LOGGER = logging.getLogger(__name__)

# Every class an official YOLOv5 (v6.0 - v7.0) release checkpoint names, and nothing that can run arbitrary code.
OFFICIAL_ALLOWED_CLASSES: list[type] = [
    yolo.DetectionModel, yolo.Model, yolo.Detect,
    common.Conv, common.Bottleneck, common.C3, common.SPPF, common.SPP, common.Focus, common.Concat,
    nn.Sequential, nn.ModuleList, nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.MaxPool2d, nn.Upsample, nn.Identity,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish,  # models whose YAML sets ``activation``
]


@dataclass
class LoadedWeights:
    """A model ready to use plus what came with it."""

    model: DetectionModel
    source: str  # "project" or "ultralytics"
    checkpoint: dict = field(default_factory=dict)  # the project's checkpoint dict (empty for official files)

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
                              f"file written by this project or an official YOLOv5 release.")
    try:
        with torch.serialization.safe_globals(OFFICIAL_ALLOWED_CLASSES):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path} was refused: it names code outside the allow-list of YOLOv5 classes "
                              f"({str(error).splitlines()[0][:300]}). Only load files you trust; convert them with "
                              f"the tool that wrote them.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} could not be read ({type(error).__name__}: {str(error)[:200]}); the file is "
                              f"truncated or damaged. Re-download or use another checkpoint.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    return obj


def convert_official(checkpoint: dict, path: str | Path = "") -> DetectionModel:
    """Rebuild an official pickled model as this project's ``DetectionModel`` (float32, strict load)."""
    pickled = checkpoint.get("ema") or checkpoint.get("model")
    if not isinstance(pickled, nn.Module) or not isinstance(getattr(pickled, "yaml", None), dict):
        raise CheckpointError(f"{path}: not an Ultralytics YOLOv5 detection checkpoint (no pickled model with a YAML)")
    cfg = dict(pickled.yaml)
    model = DetectionModel(cfg, ch=cfg.get("ch", 3), nc=cfg["nc"])
    state = {k: v.float() for k, v in pickled.state_dict().items()}
    model.load_state_dict(state, strict=True)
    names = getattr(pickled, "names", None)
    if isinstance(names, dict):
        names = [names[i] for i in sorted(names)]
    if names:
        model.names = [str(n) for n in names]
    return model


def build_from_project_checkpoint(checkpoint: dict, prefer_ema: bool = True) -> DetectionModel:
    """Rebuild the exact structure recorded in a project checkpoint (sparsified included), then load strictly."""
    from utils.sparsification import restore_structure  # sparseml is imported only for sparsified checkpoints

    model = DetectionModel(checkpoint["model_yaml"], ch=checkpoint["model_yaml"].get("ch", 3),
                           nc=checkpoint["model_yaml"]["nc"])
    model.names = list(checkpoint["names"])
    restore_structure(model, checkpoint.get("sparsification") or {})
    state = checkpoint["ema"] if prefer_ema and checkpoint.get("ema") is not None else checkpoint["model"]
    model.load_state_dict(state, strict=True)
    return model


def load_weights(path: str | Path, prefer_ema: bool = True) -> LoadedWeights:
    """Load a project checkpoint or an official YOLOv5 ``.pt`` as a float32 model in eval mode."""
    checkpoint = read_weights_file(path)
    if is_project_checkpoint(checkpoint):
        model = build_from_project_checkpoint(checkpoint, prefer_ema=prefer_ema)
        return LoadedWeights(model.eval(), "project", checkpoint)
    model = convert_official(checkpoint, path)
    LOGGER.info("converted official YOLOv5 checkpoint %s (%s classes)", path, model.nc)
    return LoadedWeights(model.eval(), "ultralytics", {})


def intersect_state_dicts(source: dict, target: dict, exclude: tuple[str, ...] = ()) -> dict:
    """Entries of ``source`` whose name and shape match ``target`` (transfer learning to a new class count)."""
    return {k: v for k, v in source.items()
            if k in target and not any(x in k for x in exclude) and v.shape == target[k].shape}
