"""Train a YOLOv5 detector on a custom dataset, optionally sparsifying it with a SparseML recipe.

    python train.py --data data/shapes.yaml --cfg yolov5n.yaml --weights '' --epochs 30 --imgsz 320
    python train.py --weights yolov5s.pt --data coco.yaml --sparsification-recipe recipes/yolov5s.pruned_quant.yaml
    python train.py --resume runs/train/exp/weights/last.pt

The loop reads top to bottom: setup -> for epoch: train_one_epoch -> validate -> save_checkpoint. Sparsification
enters only through the ``Sparsifier`` hooks, whose return values tell the loop what to change.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import val as validate_module  # noqa: E402
from models.yolo import DetectionModel  # noqa: E402
from utils.autoanchor import check_anchors  # noqa: E402
from utils.checkpoint import (  # noqa: E402
    CheckpointError,
    build_checkpoint,
    float_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from utils.dataset import create_dataloader  # noqa: E402
from utils.dataset_config import check_dataset  # noqa: E402
from utils.device import (  # noqa: E402
    DistributedContext,
    init_process_group,
    read_distributed_context,
    seed_everything,
    select_device,
    unwrap,
)
from utils.ema import ModelEMA  # noqa: E402
from utils.loggers import TensorBoardLogger  # noqa: E402
from utils.logs import setup_script_logging  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.metrics import fitness  # noqa: E402
from utils.optim import build_optimizer, lr_lambda  # noqa: E402
from utils.plots import plot_images, plot_labels, plot_results  # noqa: E402
from utils.runs import increment_path  # noqa: E402
from utils.sparsification import EpochDirectives, Sparsifier, create_sparsifier, restore_structure  # noqa: E402
from utils.sparsification.report import plot_sparsity, sparsity_report  # noqa: E402
from utils.sparsification.teacher import SELF as SELF_TEACHER  # noqa: E402
from utils.sparsification.teacher import load_teacher, save_teacher  # noqa: E402
from utils.sparsification.zoo import (  # noqa: E402
    ZooUnavailableError,
    is_zoo_stub,
    resolve_weights,
)
from utils.weights import (  # noqa: E402
    as_project_checkpoint,
    convert_official,
    intersect_state_dicts,
    load_weights,
    read_weights_file,
    reinitialised_quantizer_scales,
)

LOGGER = logging.getLogger("train")
NOMINAL_BATCH_SIZE = 64  # gradients accumulate to this batch size before an optimizer step
RESULT_COLUMNS = [
    "epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
    "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
    "x/lr0", "x/lr1", "x/lr2", "phase", "conv_sparsity",
]
OLD_COLUMN_NAMES = {"sparsity": "conv_sparsity"}  # results.csv of runs before 2026-12-05 (a resume rewrites them)


class TrainingError(RuntimeError):
    """Stops a run with a message for the user (bad flags, diverged loss); the last good checkpoint stays."""


# --------------------------------------------------------------------------------------------------------- options
def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=str, default="", help="initial weights: .pt (project or official), zoo:")
    parser.add_argument("--cfg", type=str, default="", help="model YAML, e.g. yolov5n.yaml or a path")
    parser.add_argument("--data", type=str, default=str(ROOT / "data" / "shapes.yaml"), help="dataset YAML")
    parser.add_argument("--hyp", type=str, default=str(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"))
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 100; a recipe decides its own)")
    parser.add_argument("--batch-size", type=int, default=16, help="total batch size for all processes")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train and val image size")
    parser.add_argument("--rect", action="store_true", help="rectangular training batches")
    parser.add_argument("--resume", nargs="?", const=True, default=False, help="resume the latest or a given run")
    parser.add_argument("--nosave", action="store_true", help="only save the final checkpoint")
    parser.add_argument("--noval", action="store_true", help="only validate after the final epoch")
    parser.add_argument("--noplots", action="store_true", help="save no plot files")
    parser.add_argument("--noautoanchor", action="store_true", help="keep the model's anchors (no autoanchor check)")
    parser.add_argument("--cache", type=str, nargs="?", const="ram", default=None, help="cache images: ram or disk")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    parser.add_argument("--multi-scale", action="store_true", help="vary image size +/- 50%%")
    parser.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    parser.add_argument("--optimizer", type=str, choices=["SGD", "Adam", "AdamW"], default="SGD")
    parser.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm (DDP only)")
    parser.add_argument("--workers", type=int, default=8, help="max dataloader workers (per rank under DDP)")
    parser.add_argument("--project", default=str(ROOT / "runs" / "train"), help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--cos-lr", action="store_true", help="cosine LR scheduler")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing epsilon")
    parser.add_argument("--patience", type=int, default=100,
                        help="early stopping patience (epochs without gain; 0: never stop early)")
    parser.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze layers: backbone=10, first3=0 1 2")
    parser.add_argument("--save-period", type=int, default=-1, help="save a checkpoint every x epochs (<1: off)")
    parser.add_argument("--seed", type=int, default=0, help="global training seed")
    parser.add_argument("--sparsification-recipe", "--recipe", dest="sparsification_recipe", type=str, default=None,
                        help="SparseML recipe: a YAML path or a zoo: stub")
    parser.add_argument("--recipe-args", type=str, default=None,
                        help="recipe variables as JSON or key=value,... e.g. '{\"num_epochs\": 30}'")
    parser.add_argument("--teacher-weights", type=str, default="",
                        help="distillation teacher for the recipe's distillation modifiers: .pt, zoo: or 'self'")
    return parser.parse_args(argv)


def load_hyp(hyp: str | dict) -> dict:
    if isinstance(hyp, dict):
        return dict(hyp)
    path = Path(hyp)
    if not path.is_file():
        raise TrainingError(f"hyperparameter file not found: {hyp}; see data/hyps/ for examples")
    try:
        with open(path, encoding="utf-8") as f:
            hyp = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise TrainingError(f"{path} is not valid YAML ({str(error).splitlines()[0]}); fix it or start from a file "
                            f"in data/hyps/") from None
    required = ["lr0", "lrf", "momentum", "weight_decay", "box", "cls", "obj", "anchor_t"]
    if isinstance(hyp, dict) and hyp.get("warmup_epochs", 0):
        required += ["warmup_bias_lr", "warmup_momentum"]
    bad = [key for key in required if not isinstance(hyp, dict) or not isinstance(hyp.get(key), (int, float))]
    if bad:
        raise TrainingError(f"{path}: missing or non-numeric hyperparameters {', '.join(bad)}; copy them from "
                            f"data/hyps/hyp.scratch-low.yaml")
    return hyp


def find_latest_run(search_dir: Path) -> Path:
    candidates = sorted(search_dir.glob("**/last*.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise TrainingError(f"--resume: no last.pt found under {search_dir}; pass the path of a run's last.pt")
    return candidates[-1]


def resolve_resume(opt: argparse.Namespace) -> tuple[argparse.Namespace, dict]:
    """Options and checkpoint of the run to resume. Flags that would change the run are refused."""
    path = Path(opt.resume) if isinstance(opt.resume, str) else find_latest_run(Path(opt.project))
    checkpoint = load_checkpoint(path)
    if checkpoint.get("final") and checkpoint.get("optimizer") is None:
        raise TrainingError(f"{path} is from a finished run; nothing to resume. Start a new run with --weights {path}")
    if checkpoint.get("final"):  # finish_run strips last.pt last: the run stopped after its final epoch
        LOGGER.info("%s: all epochs done, the end of the run was interrupted; finishing it", path)
    saved = argparse.Namespace(**checkpoint["options"])
    if opt.sparsification_recipe and opt.sparsification_recipe != saved.sparsification_recipe:
        raise TrainingError(f"--resume with a different recipe ({opt.sparsification_recipe}) than the run used "
                            f"({saved.sparsification_recipe}); drop --sparsification-recipe to resume, or start a new "
                            f"run with --weights {path}")
    saved.resume = str(path)  # opt.yaml keeps the weights the run started from
    saved.device, saved.workers = opt.device or saved.device, opt.workers
    return saved, checkpoint


# ---------------------------------------------------------------------------------------------------------- setup
def write_options(save_dir: Path, opt: argparse.Namespace) -> None:
    """The run's options as ``opt.yaml`` (what the user passed, with the values the run resolved)."""
    with open(save_dir / "opt.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opt).items()}, f, sort_keys=False)


@dataclass
class RunState:
    """Everything that changes during a run and must survive a resume."""

    start_epoch: int = 0
    best_fitness: float = 0.0
    phase: str = "dense"
    phase_best_fitness: dict[str, float] = field(default_factory=dict)
    ema_enabled: bool = True
    amp_enabled: bool = False
    last_optimizer_step: int = -1  # global batch index of the last optimizer step (gradient accumulation)
    train_seconds: float = 0.0  # wall time of the epochs trained so far, resumed parts included (benchmarks read it)


def build_model(opt: argparse.Namespace, nc: int, hyp: dict, resume_checkpoint: dict | None,
                device: torch.device) -> tuple[DetectionModel, dict | None]:
    """The model to train and the project checkpoint it came from (None for scratch or official weights)."""
    if resume_checkpoint is not None:
        model = DetectionModel(resume_checkpoint["model_yaml"], nc=nc)
        restore_structure(model, resume_checkpoint.get("sparsification") or {})
        model.load_state_dict(resume_checkpoint["model"], strict=True)
        model.names = list(resume_checkpoint["names"])
        return model.to(device), resume_checkpoint

    weights = opt.weights
    if is_zoo_stub(weights):
        weights = resolve_weights(weights)
    if not weights:
        if not opt.cfg:
            raise TrainingError("pass --cfg (e.g. yolov5n.yaml) to train from scratch, or --weights")
        return DetectionModel(opt.cfg, nc=nc, anchors=hyp.get("anchors")).to(device), None

    raw = read_weights_file(weights)
    loaded = as_project_checkpoint(raw, weights)  # this project's, or a Neural Magic file rebuilt from its recipe
    if loaded is not None:
        source_yaml, source_state = loaded["model_yaml"], (loaded["ema"] or loaded["model"])
        structure = loaded.get("sparsification") or {}
        if structure.get("is_quantized") and not opt.sparsification_recipe:
            raise TrainingError(f"{opt.weights} is quantized (QAT); training it needs a recipe, which carries its "
                                f"structure into the new checkpoints: pass --recipe recipes/transfer_quantized.yaml "
                                f"(holds its zeros, QAT continues)")
    else:
        official = convert_official(raw, weights)
        source_yaml, source_state, structure, loaded = official.yaml, official.state_dict(), {}, None
    model = DetectionModel(opt.cfg or source_yaml, nc=nc, anchors=hyp.get("anchors"))
    restore_structure(model, structure)
    exclude = ("anchors",) if (opt.cfg or hyp.get("anchors")) else ()
    transferable = intersect_state_dicts(source_state, model.state_dict(), exclude=exclude)
    transferable.update(reinitialised_quantizer_scales(source_state, model.state_dict(), transferable))
    source_nc = source_yaml.get("nc") if isinstance(source_yaml, dict) else None
    if source_nc is not None and int(source_nc) != nc:
        LOGGER.warning("%s was trained on %s classes and %s has %d: transfer learning, the Detect output layers "
                       "start from scratch (all other layers keep the checkpoint's weights)%s", weights, source_nc,
                       opt.data, nc, "; they stay fake-quantized on the checkpoint's weight grid and start dense "
                       "(recipes/README.md, 'Sparse transfer learning')" if structure.get("is_quantized") else "")
    model.load_state_dict(transferable, strict=False)
    LOGGER.info("transferred %d/%d items from %s", len(transferable), len(model.state_dict()), weights)
    return model.to(device), loaded


def freeze_layers(model: nn.Module, freeze: list[int]) -> None:
    prefixes = [f"model.{x}." for x in (freeze if len(freeze) > 1 else range(freeze[0]))]
    for name, parameter in model.named_parameters():
        parameter.requires_grad = True
        if any(name.startswith(prefix) for prefix in prefixes):
            LOGGER.info("freezing %s", name)
            parameter.requires_grad = False


def scale_loss_gains(hyp: dict, num_layers: int, nc: int, imgsz: int, label_smoothing: float) -> dict:
    """YOLOv5 tunes its loss gains for 3 layers, 80 classes and 640 px; rescale them to this model and data."""
    hyp = dict(hyp)
    hyp["box"] *= 3 / num_layers
    hyp["cls"] *= nc / 80 * 3 / num_layers
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / num_layers
    hyp["label_smoothing"] = label_smoothing
    return hyp


def reseed_loader(loader: torch.utils.data.DataLoader, seed: int, epoch: int) -> None:
    """Same shuffle and augmentation for a given epoch, whether the run was resumed or not."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    for generator in (getattr(loader, "generator", None), getattr(sampler, "generator", None)):
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed + epoch)
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    seed_everything(seed + epoch)


# --------------------------------------------------------------------------------------------------------- epoch
@dataclass
class TrainingLoop:
    """What every epoch works with, built once per run; ``RunState`` holds what changes from epoch to epoch."""

    model: nn.Module  # DDP-wrapped when distributed
    loader: Any
    optimizer: torch.optim.Optimizer
    scaler: Any  # torch.amp.GradScaler, or the recipe's wrapper of it
    compute_loss: ComputeLoss
    sparsifier: Sparsifier
    ema: ModelEMA | None  # None on ranks other than 0; QAT switches it off through RunState.ema_enabled
    epochs: int
    batch_size: int
    imgsz: int
    device: torch.device
    warmup: dict | None = None
    multi_scale: bool = False
    grid_size: int = 32
    is_main: bool = True

    def active_ema(self, state: RunState) -> ModelEMA | None:
        """The EMA while it runs: None on other ranks and once the recipe switched it off."""
        return self.ema if self.ema is not None and state.ema_enabled else None

    def eval_model(self, state: RunState) -> nn.Module:
        """The weights to validate and to judge best.pt by: the EMA while it runs, else the model itself."""
        ema = self.active_ema(state)
        return ema.ema if ema is not None else unwrap(self.model)


def apply_epoch_directives(directives: EpochDirectives, state: RunState, scaler: torch.amp.GradScaler) -> None:
    """Do what the recipe asks at an epoch start (QAT: EMA, AMP and loss scaling off; a new phase restarts best
    fitness), recording it in ``state``, which checkpoints carry."""
    for note in directives.notes:
        LOGGER.info("recipe: %s", note)
    if directives.disable_ema and state.ema_enabled:
        LOGGER.info("quantization-aware training starts: EMA off")
        state.ema_enabled = False
    if directives.disable_amp and state.amp_enabled:
        LOGGER.info("quantization-aware training starts: AMP off")
        state.amp_enabled = False
    if directives.disable_amp and scaler.is_enabled():
        # float32 losses need no scaling, and a scaler left on would still skip steps on overflow. GradScaler has no
        # public switch; disabled, its scale/step/update pass straight through and its state_dict is empty (a resumed
        # QAT run starts with a fresh scaler and turns it off here again).
        scaler._enabled = False
    if directives.phase_changed or directives.phase != state.phase:
        LOGGER.info("phase %s -> %s: best fitness restarts", state.phase, directives.phase)
        state.phase = directives.phase
        state.best_fitness = 0.0


def train_one_epoch(loop: TrainingLoop, state: RunState, epoch: int, batch_plots: Path | None = None) -> torch.Tensor:
    """One pass over the training data; returns the mean (box, obj, cls) loss. With ``batch_plots`` (a folder), the
    first three batches are drawn with their labels to train_batch0-2.jpg, as Ultralytics does in a run's first
    epoch: a look at what the augmentation feeds the model."""
    model, optimizer, scaler, device = loop.model, loop.optimizer, loop.scaler, loop.device
    ema = loop.active_ema(state)
    model.train()
    num_batches = len(loop.loader)
    accumulate = max(round(NOMINAL_BATCH_SIZE / loop.batch_size), 1)
    mean_loss = torch.zeros(3, device=device)
    progress = tqdm(enumerate(loop.loader), total=num_batches, disable=not loop.is_main,
                    bar_format="{l_bar}{bar:10}{r_bar}", file=sys.stdout)
    optimizer.zero_grad()
    for i, (images, targets, paths, _shapes) in progress:
        step = i + num_batches * epoch
        if batch_plots is not None and i < 3:
            plot_images(images, targets, paths, batch_plots / f"train_batch{i}.jpg", unwrap(model).names)
        images = images.to(device, non_blocking=True).float() / 255
        if loop.warmup and step <= loop.warmup["steps"]:
            accumulate = warmup_step(optimizer, step, loop.warmup, epoch, loop.batch_size)
        if loop.multi_scale:
            images = random_rescale(images, loop.imgsz, loop.grid_size)

        with torch.autocast(device_type=device.type, enabled=state.amp_enabled):
            predictions = model(images)
            loss, loss_items = loop.compute_loss(predictions, targets.to(device))
        # distillation outside autocast: the teacher runs and the feature errors are squared in float32
        loss = loop.sparsifier.loss_computed(loss, predictions, images, targets)
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite loss at epoch {epoch}, batch {i} ({loss_items.tolist()}); stopping "
                                f"before any NaN weights are saved. Lower the learning rate (--hyp) or check labels.")
        scaler.scale(loss).backward()

        # The last batch of an epoch always steps, so no accumulated gradient crosses an epoch boundary and a resumed
        # run continues exactly where the interrupted one stopped.
        if step - state.last_optimizer_step >= accumulate or i == num_batches - 1:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            if ema is not None:
                ema.update(model)
            loop.sparsifier.after_optimizer_step(unwrap(model), ema.ema if ema is not None else None)
            state.last_optimizer_step = step
        else:
            loop.sparsifier.skipped_step()

        if loop.is_main:
            mean_loss = (mean_loss * i + loss_items) / (i + 1)
            progress.set_description(
                ("%11s" * 2 + "%11.4g" * 5) % (f"{epoch}/{loop.epochs - 1}", state.phase, *mean_loss.tolist(),
                                               targets.shape[0], images.shape[-1]))
    return mean_loss


def random_rescale(images: torch.Tensor, imgsz: int, grid_size: int) -> torch.Tensor:
    """--multi-scale: the batch resized to a random multiple of the grid between 0.5x and 1.5x the image size."""
    size = int(np.random.uniform(imgsz * 0.5, imgsz * 1.5 + grid_size)) // grid_size * grid_size
    factor = size / max(images.shape[2:])
    if factor == 1:
        return images
    new_shape = [math.ceil(x * factor / grid_size) * grid_size for x in images.shape[2:]]
    return nn.functional.interpolate(images, size=new_shape, mode="bilinear", align_corners=False)


def warmup_step(optimizer: torch.optim.Optimizer, step: int, warmup: dict, epoch: int, batch_size: int) -> int:
    """Ramp LR and momentum over the first steps; bias LR falls from warmup_bias_lr. Returns the accumulation."""
    xi = [0, warmup["steps"]]
    accumulate = max(1, int(np.interp(step, xi, [1, NOMINAL_BATCH_SIZE / batch_size]).round()))
    hyp, lf = warmup["hyp"], warmup["lr_lambda"]
    for j, group in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if j == 0 else 0.0
        group["lr"] = float(np.interp(step, xi, [start, group["initial_lr"] * lf(epoch)]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(step, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
    return accumulate


# ---------------------------------------------------------------------------------------------------- checkpoints
def write_checkpoints(loop: TrainingLoop, state: RunState, *, save_dir: Path, epoch: int, fitness_value: float,
                      improved: bool, phase_improved: bool, opt: argparse.Namespace, hyp: dict) -> None:
    """last.pt every epoch; best.pt and best_<phase>.pt on improvement; epoch<n>.pt every --save-period."""
    final = epoch + 1 == loop.epochs
    bare, ema, sparsifier = unwrap(loop.model), loop.active_ema(state), loop.sparsifier
    scaler_state = loop.scaler.state_dict() if hasattr(loop.scaler, "state_dict") else None
    checkpoint = build_checkpoint(
        model_yaml=bare.yaml, names=bare.names, model_state=float_state_dict(bare),
        ema_state=float_state_dict(ema.ema) if ema is not None else None,
        ema_updates=ema.updates if ema is not None else 0, optimizer_state=loop.optimizer.state_dict(),
        scaler_state=scaler_state, epoch=epoch, best_fitness=state.best_fitness,
        phase_best_fitness=state.phase_best_fitness, options={**vars(opt), "phase": state.phase,
                                                              "ema_enabled": state.ema_enabled,
                                                              "amp_enabled": state.amp_enabled,
                                                              "train_seconds": state.train_seconds},
        hyp=hyp, sparsification=sparsifier.checkpoint_state(epoch, final=final), final=final)
    weights_dir = save_dir / "weights"
    save_checkpoint(checkpoint, weights_dir / "last.pt")
    if improved:
        save_checkpoint(checkpoint, weights_dir / "best.pt")
    if phase_improved and sparsifier.enabled:
        save_checkpoint(checkpoint, weights_dir / f"best_{state.phase}.pt")
    if opt.save_period > 0 and epoch % opt.save_period == 0:
        save_checkpoint(checkpoint, weights_dir / f"epoch{epoch}.pt")


def stops_early(patience: int, patience_left: int, sparsifying: bool) -> bool:
    """Whether --patience ends the run now: never with a recipe (the recipe decides the length) or with patience 0
    (as in Ultralytics' train.py), else once ``patience`` epochs in a row brought no gain."""
    return patience > 0 and patience_left <= 0 and not sparsifying


def mark_finished(path: Path) -> None:
    """Mark a run stopped early by --patience as finished, as its final epoch would: --resume then refuses it (it
    would train on past the stop) and tools that wait for a run to end see that it has."""
    checkpoint = load_checkpoint(path)
    checkpoint["final"] = True
    save_checkpoint(checkpoint, path)


def strip_optimizer(path: Path) -> None:
    """Drop optimizer and scaler state from a finished run's checkpoint (smaller file, same weights)."""
    checkpoint = load_checkpoint(path)
    checkpoint.update(optimizer=None, scaler=None)
    save_checkpoint(checkpoint, path)


def append_results(path: Path, row: dict) -> None:
    new_file = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        if new_file:
            writer.writeheader()
        writer.writerow(row)


def truncate_results(path: Path, start_epoch: int) -> None:
    """A resumed run rewrites the epochs it repeats."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{OLD_COLUMN_NAMES.get(k, k): v for k, v in r.items()} for r in csv.DictReader(f)
                if int(r["epoch"]) < start_epoch]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def weights_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def conv_sparsity(model: nn.Module) -> float:
    """Share of conv weights at zero: what results.csv, TensorBoard and the sparsity report call conv sparsity."""
    weights = [p for n, p in unwrap(model).named_parameters() if p.dim() == 4 and n.endswith("weight")]
    total = sum(p.numel() for p in weights)
    return float(sum((p == 0).sum().item() for p in weights) / max(total, 1))


# ------------------------------------------------------------------------------------------------------------ train
def with_options(opt: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    """A copy of ``opt`` with ``changes``: what a run decides (its folder, its epochs) goes into a new options object
    that checkpoints record, and the caller's ``opt`` is never written."""
    return argparse.Namespace(**{**vars(opt), **changes})


def train(opt: argparse.Namespace, context: DistributedContext) -> dict:
    """Run a whole training; returns final metrics and where the outputs are. Stages: options, run folder, data,
    model (with recipe and teacher), optimizer and data loaders, the loop's objects, the epochs, the closing report."""
    resume_checkpoint = None
    if opt.resume:
        opt, resume_checkpoint = resolve_resume(opt)
    hyp = load_hyp(resume_checkpoint["hyp"] if resume_checkpoint else opt.hyp)
    device = select_device(opt.device, context)
    init_process_group(context, device)
    seed_everything(opt.seed + 1 + context.rank)
    opt, save_dir = prepare_run_dir(opt, hyp, context, resumed=resume_checkpoint is not None)
    data, nc, names = read_dataset(opt)
    opt, sparsifier, model, teacher = build_model_and_recipe(opt, hyp, nc, names, resume_checkpoint, device,
                                                             save_dir, context)
    grid_size = check_image_size(model, opt.imgsz)
    optimizer = build_optimizer_for(model, opt, hyp)
    train_loader, val_loader = build_loaders(opt, hyp, data, nc, names, model, grid_size, save_dir, context,
                                             resumed=resume_checkpoint is not None)
    opt, loop, state, scheduler = build_loop(opt, hyp, model, optimizer, train_loader, sparsifier, teacher,
                                             resume_checkpoint, grid_size, device, context)
    compute_loss = loop.compute_loss
    results_file = save_dir / "results.csv"
    tensorboard = None
    if context.is_main:
        truncate_results(results_file, state.start_epoch)
        tensorboard = TensorBoardLogger(save_dir)
    LOGGER.info("image sizes %d train, %d val; %d dataloader workers; logging to %s; training for %d epochs%s",
                opt.imgsz, opt.imgsz, getattr(train_loader, "num_workers", 0), save_dir, loop.epochs,
                f" (starting at epoch {state.start_epoch})" if state.start_epoch else "")

    patience_left, stop = opt.patience, False
    results = (0.0,) * 7
    t0 = time.time()
    for epoch in range(state.start_epoch, loop.epochs):
        epoch_started = time.time()
        apply_epoch_directives(sparsifier.epoch_start(epoch), state, loop.scaler)
        reseed_loader(train_loader, opt.seed, epoch)
        mean_loss = train_one_epoch(
            loop, state, epoch, batch_plots=save_dir if context.is_main and not opt.noplots and epoch == 0 else None)
        check_weights_finite(loop, state, epoch, save_dir)
        end_phase(sparsifier, state, epoch)
        learning_rates = [group["lr"] for group in optimizer.param_groups]
        if scheduler is not None:
            scheduler.step()
        if context.is_main:
            results, improved = end_epoch(loop, state, epoch, opt, hyp, data, val_loader, save_dir, results,
                                          mean_loss, learning_rates, tensorboard, epoch_started)
            patience_left = opt.patience if improved else patience_left - 1
            if stops_early(opt.patience, patience_left, sparsifier.enabled):
                LOGGER.info("stopping early: no improvement in the last %d epochs (--patience)", opt.patience)
                mark_finished(save_dir / "weights" / "last.pt")
                stop = True
        if context.enabled:
            flag = [stop]
            torch.distributed.broadcast_object_list(flag, 0)
            stop = flag[0]
        if stop:
            break

    sparsifier.finalize(unwrap(loop.model))
    summary = {"save_dir": str(save_dir), "epochs": loop.epochs, "hours": (time.time() - t0) / 3600,
               "metrics": dict(zip(RESULT_COLUMNS[4:8], results[:4]))}
    if context.is_main:
        summary.update(finish_run(save_dir, data, opt, compute_loss, val_loader, loop.batch_size))
        tensorboard.log_images(save_dir, loop.epochs - 1)
        tensorboard.close()
    if context.enabled:
        torch.distributed.destroy_process_group()
    return summary


# ------------------------------------------------------------------------------------------------------ stages
def prepare_run_dir(opt: argparse.Namespace, hyp: dict, context: DistributedContext,
                    resumed: bool) -> tuple[argparse.Namespace, Path]:
    """The run folder (runs/train/exp<n>, or the resumed run's own) with hyp.yaml, opt.yaml and train.log."""
    if resumed:
        save_dir = Path(opt.save_dir)
        for stale in (save_dir / "weights").glob(".*.tmp"):  # a checkpoint write that a kill interrupted
            stale.unlink(missing_ok=True)
    else:
        save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
        opt = with_options(opt, save_dir=str(save_dir))
    if context.is_main:
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
        with open(save_dir / "hyp.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(hyp, f, sort_keys=False)
        write_options(save_dir, opt)
        logging.getLogger().addHandler(logging.FileHandler(save_dir / "train.log", encoding="utf-8"))
    return opt, save_dir


def read_dataset(opt: argparse.Namespace) -> tuple[dict, int, list[str]]:
    """The dataset YAML, checked (and downloaded where it says how), and the classes training uses (count, names)."""
    data = check_dataset(opt.data, require_train=True)
    nc = 1 if opt.single_cls else int(data["nc"])
    names = [data["names"][i] for i in sorted(data["names"])]
    if opt.single_cls and len(names) != 1:
        names = ["item"]
    return data, nc, names


def build_model_and_recipe(opt: argparse.Namespace, hyp: dict, nc: int, names: list[str],
                           resume_checkpoint: dict | None, device: torch.device, save_dir: Path,
                           context: DistributedContext
                           ) -> tuple[argparse.Namespace, Sparsifier, DetectionModel, nn.Module | None]:
    """The recipe's Sparsifier, the model it is checked against, and the distillation teacher."""
    sparsifier = create_sparsifier(opt.sparsification_recipe, opt.recipe_args,
                                   requested_epochs=None if resume_checkpoint else opt.epochs)
    model, source_checkpoint = build_model(opt, nc, hyp, resume_checkpoint, device)
    model.names = names
    sparsifier.model_built(model, (source_checkpoint or {}).get("sparsification") or None,
                           resume=resume_checkpoint is not None)
    teacher = load_teacher(opt.teacher_weights, model, device)  # before layers freeze: 'self' copies the model
    if teacher is not None and opt.teacher_weights == SELF_TEACHER:
        if resume_checkpoint:  # a run of an older version, which did not keep its 'self' teacher
            LOGGER.info("--teacher-weights self: the teacher is the model as resumed, not as the run first started")
        else:  # kept, and named in the run's options, so that --resume distils from the same teacher
            opt = with_options(opt, teacher_weights=str(save_dir / "weights" / "teacher.pt"))
            if context.is_main:
                save_teacher(teacher, names, opt.teacher_weights)
                write_options(save_dir, opt)
                LOGGER.info("--teacher-weights self: the starting model is kept as %s", opt.teacher_weights)
    freeze_layers(model, opt.freeze)
    LOGGER.info(model.info())
    return opt, sparsifier, model, teacher


def check_image_size(model: DetectionModel, imgsz: int) -> int:
    """The grid images are padded to (the model's largest stride, at least 32); --imgsz must be a multiple of it."""
    grid_size = max(int(model.stride.max()), 32)
    if imgsz % grid_size:
        lower, upper = imgsz // grid_size * grid_size, (imgsz // grid_size + 1) * grid_size
        raise TrainingError(f"--imgsz {imgsz} must be a multiple of the model's max stride {grid_size}; "
                            f"use {max(lower, grid_size)} or {upper}")
    return grid_size


def build_optimizer_for(model: nn.Module, opt: argparse.Namespace, hyp: dict) -> torch.optim.Optimizer:
    """--optimizer with YOLOv5's weight decay scaled to the nominal batch size of 64."""
    accumulate = max(round(NOMINAL_BATCH_SIZE / opt.batch_size), 1)
    weight_decay = hyp["weight_decay"] * opt.batch_size * accumulate / NOMINAL_BATCH_SIZE
    return build_optimizer(model, opt.optimizer, hyp["lr0"], hyp["momentum"], weight_decay)


def build_loaders(opt: argparse.Namespace, hyp: dict, data: dict, nc: int, names: list[str], model: DetectionModel,
                  grid_size: int, save_dir: Path, context: DistributedContext, resumed: bool) -> tuple[Any, Any]:
    """The training loader (its labels checked, the anchors fitted to them) and, on rank 0, the validation loader."""
    batch_size = opt.batch_size // context.world_size
    train_loader, train_dataset = create_dataloader(
        data["train"], opt.imgsz, batch_size, grid_size, hyp=hyp, augment=True, cache=opt.cache, rect=opt.rect,
        rank=context.local_rank, workers=opt.workers, shuffle=True, prefix="train: ", single_cls=opt.single_cls,
        seed=opt.seed, nc=int(data["nc"]))
    if len(train_dataset) < opt.batch_size:
        raise TrainingError(f"--batch-size {opt.batch_size} is larger than the training set of {opt.data} "
                            f"({len(train_dataset)} images); use --batch-size {max(1, len(train_dataset))} or less")
    max_label_class = max((int(lb[:, 0].max()) for lb in train_dataset.labels if len(lb)), default=-1)
    if max_label_class >= nc:
        raise TrainingError(f"{opt.data}: label class {max_label_class} exceeds nc={nc}; fix the labels or names")
    if context.is_main and not resumed and not opt.noautoanchor:  # DDP copies rank 0's anchors
        check_anchors(train_dataset, model, hyp["anchor_t"], opt.imgsz)
    val_loader = None
    if context.is_main and not opt.noplots and not resumed:
        plot_labels(train_dataset.labels, names, save_dir / "labels.jpg")
    if context.is_main:
        val_loader, _ = create_dataloader(
            data["val"], opt.imgsz, batch_size * 2, grid_size, hyp=hyp, augment=False, cache=opt.cache, rect=True,
            rank=-1, workers=opt.workers, shuffle=False, prefix="val: ", single_cls=opt.single_cls, pad=0.5,
            nc=int(data["nc"]))
    return train_loader, val_loader


def build_loop(opt: argparse.Namespace, hyp: dict, model: DetectionModel, optimizer: torch.optim.Optimizer,
               train_loader: Any, sparsifier: Sparsifier, teacher: nn.Module | None, resume_checkpoint: dict | None,
               grid_size: int, device: torch.device, context: DistributedContext
               ) -> tuple[argparse.Namespace, TrainingLoop, RunState, Any]:
    """AMP, EMA and the run state (restored on resume), the recipe's plan (epochs, who owns the learning rate), the
    YOLOv5 scheduler and warm-up when the recipe leaves the learning rate alone, DDP, and the loss."""
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    state = RunState(amp_enabled=amp)
    ema = ModelEMA(model) if context.is_main else None
    default_epochs = opt.epochs if opt.epochs is not None else 100
    if resume_checkpoint:
        state = restore_run_state(resume_checkpoint, optimizer, scaler, ema, model)
    plan = sparsifier.optimizer_built(unwrap(model), optimizer, scaler, steps_per_epoch=len(train_loader),
                                      start_epoch=state.start_epoch, default_epochs=default_epochs, teacher=teacher)
    opt = with_options(opt, epochs=plan.epochs)
    for note in plan.notes:
        LOGGER.info("recipe: %s", note)

    lf = lr_lambda(plan.epochs, hyp["lrf"], opt.cos_lr)
    scheduler = None
    if not plan.owns_learning_rate:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
        if state.start_epoch:  # continue the schedule: at the start of epoch e the scheduler has stepped e times
            scheduler.last_epoch = state.start_epoch
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lf(state.start_epoch)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    num_batches = len(train_loader)
    warmup = None
    if not plan.owns_learning_rate and hyp.get("warmup_epochs", 0) > 0:
        warmup = {"steps": max(round(hyp["warmup_epochs"] * num_batches), 100), "hyp": hyp, "lr_lambda": lf}
    state.last_optimizer_step = state.start_epoch * num_batches - 1

    if context.enabled:
        if opt.sync_bn and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[context.local_rank] if device.type == "cuda" else None)
    bare = unwrap(model)
    bare.hyp = scale_loss_gains(hyp, bare.detect.nl, bare.detect.nc, opt.imgsz, opt.label_smoothing)
    loop = TrainingLoop(model=model, loader=train_loader, optimizer=optimizer, scaler=plan.scaler,
                        compute_loss=ComputeLoss(bare), sparsifier=sparsifier, ema=ema, epochs=plan.epochs,
                        batch_size=opt.batch_size // context.world_size, imgsz=opt.imgsz, device=device,
                        warmup=warmup, multi_scale=opt.multi_scale, grid_size=grid_size, is_main=context.is_main)
    return opt, loop, state, scheduler


def check_weights_finite(loop: TrainingLoop, state: RunState, epoch: int, save_dir: Path) -> None:
    """Stop before non-finite weights reach a checkpoint."""
    ema = loop.active_ema(state)
    if not weights_finite(unwrap(loop.model)) or (ema is not None and not weights_finite(ema.ema)):
        raise TrainingError(f"non-finite weights after epoch {epoch}; stopping before they are saved, the last "
                            f"good checkpoint stays in {save_dir / 'weights'}. Lower the learning rate (--hyp).")


def end_phase(sparsifier: Sparsifier, state: RunState, epoch: int) -> None:
    """Label the epoch with the phase its last step ran in (QAT may start after an epoch's last optimizer step)."""
    reached = sparsifier.phase_reached(epoch)
    if reached != state.phase:
        LOGGER.info("recipe: epoch %d ends in phase %s (%s begins at a later step)", epoch, reached, state.phase)
        state.phase = reached
        state.best_fitness = state.phase_best_fitness.get(reached, 0.0)


def end_epoch(loop: TrainingLoop, state: RunState, epoch: int, opt: argparse.Namespace, hyp: dict, data: dict,
              val_loader: Any, save_dir: Path, results: tuple, mean_loss: torch.Tensor, learning_rates: list[float],
              tensorboard: TensorBoardLogger, epoch_started: float) -> tuple[tuple, bool]:
    """Rank 0 after an epoch: validate, append results.csv and TensorBoard, write the checkpoints. Returns the
    metrics (the previous ones when --noval skips this epoch) and whether fitness improved."""
    final_epoch = epoch + 1 == loop.epochs
    eval_model = loop.eval_model(state)
    if not opt.noval or final_epoch:
        results = validate_module.run(
            data=data, model=eval_model, dataloader=val_loader, batch_size=loop.batch_size * 2, imgsz=opt.imgsz,
            single_cls=opt.single_cls, save_dir=save_dir, plots=False, compute_loss=loop.compute_loss,
            half=False, verbose=False).metrics
    fitness_value = float(fitness(np.array(results).reshape(1, -1))[0])
    improved = fitness_value >= state.best_fitness
    state.best_fitness = max(state.best_fitness, fitness_value)
    phase_improved = fitness_value >= state.phase_best_fitness.get(state.phase, -1.0)
    if phase_improved:
        state.phase_best_fitness[state.phase] = fitness_value
    state.train_seconds += time.time() - epoch_started
    row = {"epoch": epoch, **dict(zip(RESULT_COLUMNS[1:4], mean_loss.tolist())),
           **dict(zip(RESULT_COLUMNS[4:11], results)), **dict(zip(RESULT_COLUMNS[11:14], learning_rates)),
           "phase": state.phase, "conv_sparsity": round(conv_sparsity(eval_model), 4)}
    append_results(save_dir / "results.csv", row)
    tensorboard.log_epoch(epoch, row, eval_model)
    if not opt.nosave or final_epoch:
        write_checkpoints(loop, state, save_dir=save_dir, epoch=epoch, fitness_value=fitness_value,
                          improved=improved, phase_improved=phase_improved, opt=opt, hyp=hyp)
    return tuple(results), improved


def restore_run_state(checkpoint: dict, optimizer, scaler, ema: ModelEMA | None, model: nn.Module) -> RunState:
    """Put optimizer, scaler, EMA and counters back as they were after the checkpoint's epoch."""
    options = checkpoint["options"]
    if checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if checkpoint.get("scaler") and hasattr(scaler, "load_state_dict"):
        scaler.load_state_dict(checkpoint["scaler"])
    ema_enabled = bool(options.get("ema_enabled", True)) and checkpoint.get("ema") is not None
    if ema is not None and ema_enabled:
        ema.ema.load_state_dict(checkpoint["ema"], strict=True)
        ema.updates = int(checkpoint.get("ema_updates", 0))
    start_epoch = int(checkpoint["epoch"]) + 1
    if checkpoint.get("final"):  # its last epoch, or a stop by --patience: no epoch is left to train, only the end
        start_epoch = max(start_epoch, int(options.get("epochs", 0)))
    LOGGER.info("resuming from epoch %d", start_epoch)
    return RunState(start_epoch=start_epoch, best_fitness=float(checkpoint["best_fitness"]),
                    phase=options.get("phase", "dense"), phase_best_fitness=dict(checkpoint["phase_best_fitness"]),
                    ema_enabled=ema_enabled, amp_enabled=bool(options.get("amp_enabled", False)),
                    train_seconds=float(options.get("train_seconds", 0.0)))


def finish_run(save_dir: Path, data: dict, opt: argparse.Namespace, compute_loss, val_loader,
               batch_size: int) -> dict:
    """Strip optimizers, validate best.pt with plots, report sparsity, plot curves."""
    weights_dir = save_dir / "weights"
    last = weights_dir / "last.pt"
    for path in sorted(weights_dir.glob("*.pt")):
        if not path.name.startswith("epoch") and path != last:  # --save-period snapshots keep their state
            strip_optimizer(path)
    outputs: dict = {"weights": [str(p) for p in sorted(weights_dir.glob("*.pt"))]}
    best = weights_dir / "best.pt"
    final_weights = best if best.exists() else weights_dir / "last.pt"
    if final_weights.exists():
        model = load_weights(final_weights).model
        LOGGER.info("validating %s...", final_weights)
        results, _, _ = validate_module.run(data=data, model=model, dataloader=val_loader,
                                            batch_size=batch_size * 2, imgsz=opt.imgsz, single_cls=opt.single_cls,
                                            save_dir=save_dir, plots=not opt.noplots, compute_loss=None,
                                            verbose=True)
        outputs["best_metrics"] = dict(zip(RESULT_COLUMNS[4:8], results[:4]))
        outputs.update(report_sparsity(model, save_dir, plots=not opt.noplots))
    if not opt.noplots:
        plot_results(save_dir / "results.csv")
    if last.exists():  # last of all: until then a final last.pt with its optimizer lets --resume finish the run
        strip_optimizer(last)
    LOGGER.info("results saved to %s", save_dir)
    return outputs


def report_sparsity(model: nn.Module, save_dir: Path, plots: bool) -> dict:

    report = sparsity_report(model)
    if report.conv_sparsity > 0.01 or report.quantized_layers:
        LOGGER.info("sparsity report (every layer: %s, sparsity.png):\n%s", save_dir / "sparsity.json",
                    report.table(max_rows=12))
    else:
        LOGGER.info("dense model: %s", report.summary_line())
    with open(save_dir / "sparsity.json", "w", encoding="utf-8") as f:
        json.dump(report.to_dict(), f, indent=1)
    if plots:
        plot_sparsity(report, save_dir / "sparsity.png")
    return {"sparsity": report.summary_line()}


# ------------------------------------------------------------------------------------------------------ entry points
def setup_logging(context: DistributedContext) -> None:
    """Process-wide logging, configured once from main(): other ranks print warnings only."""
    setup_script_logging(level=logging.INFO if context.is_main else logging.WARNING, force=True)


def main(opt: argparse.Namespace) -> dict:
    context = read_distributed_context()
    setup_logging(context)
    try:
        return train(opt, context)
    except (TrainingError, CheckpointError, ZooUnavailableError, OSError, ValueError, yaml.YAMLError) as error:
        LOGGER.error("error: %s", error)
        raise SystemExit(1) from error


def run(**kwargs) -> dict:
    """Python entry point: ``train.run(data='data/shapes.yaml', cfg='yolov5n.yaml', epochs=3, imgsz=320)``."""
    opt = parse_opt([])
    for key, value in kwargs.items():
        setattr(opt, key, value)
    return main(opt)


if __name__ == "__main__":
    main(parse_opt())
