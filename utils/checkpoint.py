"""The project's checkpoint format: state dicts, the model YAML and training state, written atomically.

A checkpoint holds only tensors and plain Python data, so it loads with ``torch.load(weights_only=True)``: opening a
checkpoint never runs code. The sparsification state (the applied recipe, masks, modifier state) travels with it so
that resume, val and export rebuild the exact structure and load strictly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

FORMAT_NAME = "yolov5-sparse-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or written; the message names the file and what to do."""


def plain(value: Any) -> Any:
    """Convert paths, tuples and numpy scalars to types that a weights-only load accepts."""
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, int) else k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value


def float_state_dict(module: torch.nn.Module | None) -> dict[str, torch.Tensor] | None:
    """A detached copy of a module's state dict (None in, None out)."""
    if module is None:
        return None
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def build_checkpoint(*, model_yaml: dict, names: list[str], model_state: dict, ema_state: dict | None,
                     ema_updates: int, optimizer_state: dict | None, scaler_state: dict | None, epoch: int,
                     best_fitness: float, phase_best_fitness: dict[str, float], options: dict, hyp: dict,
                     sparsification: dict, final: bool) -> dict:
    """Assemble a checkpoint dict; ``epoch`` is the last completed epoch (0-based)."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_yaml": plain(model_yaml),
        "names": list(names),
        "model": model_state,
        "ema": ema_state,
        "ema_updates": int(ema_updates),
        "optimizer": _plain_optimizer_state(optimizer_state),
        "scaler": scaler_state,
        "epoch": int(epoch),
        "best_fitness": float(best_fitness),
        "phase_best_fitness": {k: float(v) for k, v in phase_best_fitness.items()},
        "options": plain(options),
        "hyp": plain(hyp),
        "sparsification": sparsification,
        "final": bool(final),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def model_checkpoint(model: torch.nn.Module, names: list[str]) -> dict:
    """A finished checkpoint holding only a float model's weights (no optimizer, EMA or recipe state)."""
    return build_checkpoint(model_yaml=model.yaml, names=list(names), model_state=float_state_dict(model),
                            ema_state=None, ema_updates=0, optimizer_state=None, scaler_state=None, epoch=-1,
                            best_fitness=0.0, phase_best_fitness={}, options={}, hyp={}, sparsification={},
                            final=True)


def _plain_optimizer_state(state: dict | None) -> dict | None:
    """Hyperparameters in param groups may be numpy scalars (set by schedules); store them as Python numbers."""
    if state is None:
        return None
    return {**state, "param_groups": [plain(group) for group in state["param_groups"]]}


def save_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    """Write atomically: a temporary file in the same folder, flushed, then renamed over the target.

    A failed write (disk full, permission denied) leaves any previous checkpoint at ``path`` untouched.
    """
    path = Path(path)
    temporary = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {path}: {error}; the previous checkpoint (if any) is "
                              f"intact. Free disk space or fix permissions, then --resume.") from error
    except BaseException:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        raise
    return path


def is_project_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT_NAME


def load_checkpoint(path: str | Path) -> dict:
    """Load one of the project's checkpoints with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; pass the path of an existing .pt file (e.g. a run's "
                              f"weights/last.pt)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for damaged files
        raise CheckpointError(f"{path} is not a readable checkpoint of this project ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}). Re-export or point at another file.") from None
    if not is_project_checkpoint(checkpoint):
        raise CheckpointError(f"{path} is not a checkpoint of this project (no '{FORMAT_NAME}' marker)")
    if checkpoint.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer version (format {checkpoint['format_version']} > "
                              f"{FORMAT_VERSION}); update this repository")
    return checkpoint


def release_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Write the file to hand on from a finished dense run: the weights it validates with (the EMA when kept) in
    float16, as Ultralytics' release files store them, without EMA, optimizer or scaler (about a quarter of the
    run's best.pt). It loads wherever a checkpoint loads and fine-tunes in float32. Sparsified checkpoints keep
    their masks and quantization state in float32 and are refused: strip those with train.py's own files."""
    checkpoint = load_checkpoint(source)
    if checkpoint.get("sparsification"):
        raise CheckpointError(f"{source} carries a sparsification state; release_checkpoint is for dense runs. "
                              f"Use its last.pt or best.pt as it is.")
    weights = checkpoint["ema"] if checkpoint.get("ema") is not None else checkpoint["model"]
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    checkpoint.update(model=half, ema=None, ema_updates=0, optimizer=None, scaler=None, final=True,
                      options=portable_options(checkpoint.get("options") or {}))
    return save_checkpoint(checkpoint, target)


def portable_options(options: dict) -> dict:
    """A run's options without the paths of the machine that trained it (a released file travels): an absolute path
    becomes relative to the repository when inside it, else just its name."""
    root = Path(__file__).resolve().parents[1]

    def portable(value: Any) -> Any:
        if not isinstance(value, str) or not os.path.isabs(value):
            return value
        path = Path(value)
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    return {key: portable(value) for key, value in options.items()}
