"""Bad input gets a clear error, never a traceback, never lost work: one table, one row per case.

Each row damages a copy of a tiny dataset (or writes a bad recipe, weights file, ...) into its own folder ``{w}``,
runs a command and checks the exit status and the message. ``how`` says how the command runs:

* ``cli``: the real script in a subprocess (``python train.py ...``); its output must hold no Python traceback.
* ``inprocess``: the same argv through the script's ``main(parse_opt(argv))`` (no 5-10 s interpreter start per row);
  any exception other than ``SystemExit`` fails the row, so a traceback is impossible to miss here too.
* ``dataloader``: the training dataloader over ``{w}/data/images/train``, iterated to the end.

Data problems that can be skipped (damaged images, bad label lines) are rows that expect success and exactly one
warning that lists the skipped files; everything else exits non-zero naming the file or flag and the fix.
Untrusted pickles are covered in tests/test_models.py (allow-list), atomic writes in tests/test_checkpoint.py.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TRACEBACK = "Traceback (most recent call last)"
NAMES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
LABEL = "0 0.5 0.5 0.25 0.25\n"
SKIP_HEADER = "train: skipped"
ZOO_STUB = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned75_quant-none"


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path], None]  # writes the bad input into the row's folder {w} (a copy of a tiny good dataset)
    command: tuple[str, ...]  # script and arguments; {w} is the row's folder
    expect_exit: int
    expect_message: tuple[str, ...]  # every string must appear in stdout + stderr ({w} substituted)
    how: str = "inprocess"  # cli | inprocess | dataloader
    warnings: int | None = None  # dataset warnings (skipped or fixed files): log records, or "train: skipped" lines
    max_seconds: float | None = None  # refused quickly: wall time of an in-process row


# ------------------------------------------------------------------------------------------------ input makers
def nothing(w: Path) -> None:
    pass


def edit_yaml(**changes) -> Callable[[Path], None]:
    """Rewrite {w}/data.yaml with keys changed (None removes a key)."""
    def setup(w: Path) -> None:
        cfg = yaml.safe_load((w / "data.yaml").read_text())
        for key, value in changes.items():
            if value is None:
                cfg.pop(key)
            else:
                cfg[key] = value
        (w / "data.yaml").write_text(yaml.safe_dump(cfg))
    return setup


def write_text(relative: str, text: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        (w / relative).parent.mkdir(parents=True, exist_ok=True)
        (w / relative).write_text(text.replace("{w}", str(w)))
    return setup


def steps(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        for one in setups:
            one(w)
    return setup


def _train_image(w: Path, name: str) -> Path:
    return w / "data" / "images" / "train" / name


def _label(w: Path, name: str, text: str | None) -> None:
    if text is not None:
        (w / "data" / "labels" / "train" / f"{Path(name).stem}.txt").write_text(text)


def image_bytes(name: str, make: Callable[[Path], bytes], label: str | None = LABEL) -> Callable[[Path], None]:
    """A train image whose bytes ``make(w)`` returns, with a label file."""
    def setup(w: Path) -> None:
        _train_image(w, name).write_bytes(make(w))
        _label(w, name, label)
    return setup


def image_array(name: str, shape: tuple[int, ...], value: int, dtype=np.uint8,
                label: str | None = LABEL) -> Callable[[Path], None]:
    """A train image of one colour written by OpenCV (the array is made only when the row runs)."""
    def setup(w: Path) -> None:
        assert cv2.imwrite(str(_train_image(w, name)), np.full(shape, value, dtype))
        _label(w, name, label)
    return setup


def good_jpeg(w: Path) -> bytes:
    return _train_image(w, "000000.jpg").read_bytes()


def exif_rotated(w: Path) -> None:
    exif = Image.Image().getexif()
    exif[274] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(np.full((40, 72, 3), 128, np.uint8)).save(_train_image(w, "exif.jpg"), exif=exif.tobytes())
    _label(w, "exif.jpg", LABEL)


def decompression_bomb(w: Path) -> bytes:
    """A PNG header claiming 40000 x 40000 pixels (PIL refuses it as a decompression bomb before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(
        b"IEND", b"")


def label_only(name: str, text: str) -> Callable[[Path], None]:
    """Replace the labels of an existing train image."""
    return lambda w: _label(w, name, text)


def all_backgrounds(w: Path) -> None:
    for split in ("train", "val"):
        for label in (w / "data" / "labels" / split).glob("*.txt"):
            label.write_text("")


def all_corrupt(w: Path) -> None:
    for image in (w / "data" / "images" / "train").glob("*.jpg"):
        image.write_bytes(b"not an image")


def _checkpoint(model, options: dict | None = None, sparsification: dict | None = None, final: bool = True) -> dict:
    from utils.checkpoint import build_checkpoint, float_state_dict

    return build_checkpoint(model_yaml=model.yaml, names=model.names, model_state=float_state_dict(model),
                            ema_state=None, ema_updates=0, optimizer_state=None, scaler_state=None, epoch=0,
                            best_fitness=0.0, phase_best_fitness={}, options=options or {}, hyp={},
                            sparsification=sparsification or {}, final=final)


def checkpoint_with_classes(name: str, nc: int) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        from models.yolo import DetectionModel
        from utils.checkpoint import save_checkpoint

        model = DetectionModel("yolov5n.yaml", nc=nc)
        model.names = [f"class{i}" for i in range(nc)]
        save_checkpoint(_checkpoint(model), w / name)
    return setup


def truncated(source: str, name: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        data = (w / source).read_bytes()
        (w / name).write_bytes(data[: len(data) // 3])
    return setup


def zip_of_text(w: Path) -> None:
    with zipfile.ZipFile(w / "archive.pt", "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


def resumable_run(recipe: str | None) -> Callable[[Path], None]:
    """An interrupted run's last.pt (epoch 0 of 3, not final) as train.py writes it."""
    def setup(w: Path) -> None:
        import train
        from models.yolo import DetectionModel
        from utils.checkpoint import save_checkpoint

        opt = train.parse_opt(["--data", str(w / "data.yaml"), "--cfg", "yolov5n.yaml", "--imgsz", "64",
                               "--epochs", "3", "--project", str(w / "runs"), "--name", "exp"])
        opt.sparsification_recipe, opt.save_dir = recipe, str(w / "runs" / "exp")
        model = DetectionModel("yolov5n.yaml", nc=6)
        model.names = NAMES
        save_checkpoint(_checkpoint(model, options=vars(opt), final=False), w / "runs" / "exp" / "weights" / "last.pt")
    return setup


def run_stopped_early(w: Path) -> None:
    """A run that --patience ended after epoch 0 of 3: train.py marks its last.pt finished, then strips it."""
    import train

    resumable_run(None)(w)
    train.mark_finished(w / "runs" / "exp" / "weights" / "last.pt")
    train.strip_optimizer(w / "runs" / "exp" / "weights" / "last.pt")


def finished_run(w: Path) -> None:
    resumable_run(None)(w)
    from utils.checkpoint import load_checkpoint, save_checkpoint

    path = w / "runs" / "exp" / "weights" / "last.pt"
    save_checkpoint({**load_checkpoint(path), "final": True}, path)


QUANT_RECIPE = """
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 1.0
  - !QuantizationModifier
    start_epoch: 0.0
    ignore: ['SiLU', 'Upsample', 'Concat', 'MaxPool2d']
"""


def quantized_checkpoint(w: Path) -> None:
    """A QAT checkpoint, made through the sparsifier hooks as train.py drives them (no training needed)."""
    from models.yolo import DetectionModel
    from utils.checkpoint import save_checkpoint
    from utils.sparsification import create_sparsifier

    (w / "quant.yaml").write_text(QUANT_RECIPE)
    sparsifier = create_sparsifier(str(w / "quant.yaml"))
    model = DetectionModel("yolov5n.yaml", nc=6)
    model.names = NAMES
    sparsifier.model_built(model, None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sparsifier.optimizer_built(model, optimizer, torch.amp.GradScaler("cpu", enabled=False), steps_per_epoch=1,
                               start_epoch=0, default_epochs=1)
    assert sparsifier.epoch_start(0).phase == "quantized"
    save_checkpoint(_checkpoint(model, sparsification=sparsifier.checkpoint_state(0, final=True)), w / "quant.pt")


def pruning_recipe(params: str, start: float = 0.0, end: float = 1.0) -> str:
    return f"""
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 2.0
  - !GMPruningModifier
    params: {params}
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: {start}
    end_epoch: {end}
    update_frequency: 0.5
"""


# ------------------------------------------------------------------------------------------------------- commands
def train(*extra: str) -> tuple[str, ...]:
    """A one-epoch yolov5n run at 64 px on {w}/data.yaml; later flags override earlier ones."""
    return ("train.py", "--data", "{w}/data.yaml", "--cfg", "yolov5n.yaml", "--weights", "", "--imgsz", "64",
            "--batch-size", "4", "--workers", "0", "--epochs", "1", "--noplots", "--project", "{w}/runs",
            "--name", "exp", *extra)


def recipe_row(id: str, text: str, message: tuple[str, ...], how: str = "inprocess",
               max_seconds: float | None = None) -> Case:
    return Case(id, write_text("recipe.yaml", text), train("--recipe", "{w}/recipe.yaml"), 1, message, how,
                max_seconds=max_seconds)


DATALOADER = ("dataloader",)

CASES = [
    # ---------------------------------------------------------------------------------------------- dataset YAML
    Case("yaml-missing-file", nothing, train("--data", "{w}/nope.yaml"), 1,
         ("dataset YAML {w}/nope.yaml not found", "pass an existing file"), "cli"),
    Case("yaml-invalid-syntax", write_text("data.yaml", "path: [unclosed\ntrain: x\n"), train(), 1,
         ("{w}/data.yaml: not valid YAML", "fix the syntax")),
    Case("yaml-no-train-key", edit_yaml(train=None), train(), 1,
         ("{w}/data.yaml: missing `train:` key", "add e.g. `train: images/train`")),
    Case("yaml-no-val-key", edit_yaml(val=None), train(), 1,
         ("{w}/data.yaml: missing `val:` key", "add e.g. `val: images/val`")),
    Case("yaml-train-path-missing", edit_yaml(train="images/nothere"), train(), 1,
         ("{w}/data.yaml: train data not found at {w}/data/images/nothere", "fix `train:`")),
    Case("yaml-val-path-missing", edit_yaml(val="images/nothere"), train(), 1,
         ("{w}/data.yaml: val data not found at {w}/data/images/nothere", "put the dataset there")),
    Case("yaml-names-disagree-with-nc", edit_yaml(nc=3), train(), 1,
         ("{w}/data.yaml: nc=3 but `names` has 6 entries", "fix `nc` to 6 or remove it")),
    Case("yaml-names-not-a-list", edit_yaml(names="circle"), train(), 1,
         ("{w}/data.yaml: `names` must be a list or a mapping",)),
    # ---------------------------------------------------------------------------------------------------- images
    Case("image-corrupt", image_bytes("corrupt.jpg", lambda w: os.urandom(2000)), DATALOADER, 0,
         ("skipped 1 of 9 images", "corrupt.jpg: image:"), "dataloader", warnings=1),
    Case("image-truncated-jpeg", image_bytes("cut.jpg", lambda w: good_jpeg(w)[:-400]), DATALOADER, 0,
         ("skipped 1 of 9 images", "cut.jpg: image:"), "dataloader", warnings=1),
    Case("image-zero-bytes", image_bytes("empty.jpg", lambda w: b""), DATALOADER, 0,
         ("skipped 1 of 9 images", "empty.jpg: image: zero-byte file"), "dataloader", warnings=1),
    Case("image-decompression-bomb", image_bytes("bomb.png", decompression_bomb), DATALOADER, 0,
         ("skipped 1 of 9 images", "bomb.png: image:", "decompression bomb"), "dataloader", warnings=1),
    Case("image-grayscale", image_array("gray.png", (48, 64), 90), DATALOADER, 0, (),
         "dataloader", warnings=0),
    Case("image-rgba", image_array("rgba.png", (48, 64, 4), 200), DATALOADER, 0, (),
         "dataloader", warnings=0),
    Case("image-16-bit-png", image_array("deep.png", (48, 64, 3), 40000, np.uint16), DATALOADER, 0, (),
         "dataloader", warnings=0),
    Case("image-exif-rotated-jpeg", exif_rotated, DATALOADER, 0, (), "dataloader", warnings=0),
    Case("image-huge", image_array("huge.jpg", (3000, 4000, 3), 60), DATALOADER, 0, (),
         "dataloader", warnings=0),
    # ---------------------------------------------------------------------------------------------------- labels
    Case("label-class-out-of-range", label_only("000001.jpg", "9 0.5 0.5 0.2 0.2\n"), DATALOADER, 0,
         ("skipped 1 of 8 images", "000001.txt: line 1: class id 9 out of range (nc=6)"), "dataloader",
         warnings=1),
    Case("label-coordinates-outside-0-1", label_only("000001.jpg", "0 1.5 0.5 0.2 0.2\n"), DATALOADER, 0,
         ("skipped 1 of 8 images", "000001.txt: line 1: coordinates outside [0, 1]"), "dataloader", warnings=1),
    Case("label-wrong-column-count", label_only("000001.jpg", "0 0.5 0.5 0.2\n"), DATALOADER, 0,
         ("skipped 1 of 8 images", "000001.txt: line 1: expected 5 columns, got 4"), "dataloader", warnings=1),
    Case("label-duplicate-rows", label_only("000001.jpg", LABEL * 3), DATALOADER, 0,
         ("fixed labels in 1 files", "000001.jpg: 2 duplicate rows removed"), "dataloader", warnings=1),
    Case("label-empty-file", label_only("000001.jpg", ""), DATALOADER, 0, (), "dataloader", warnings=0),
    Case("label-none-at-all-backgrounds", all_backgrounds, train(), 0,
         ("Scanned 8 images: 0 skipped, 8 backgrounds", "no labels found in the val set"), warnings=0),
    Case("data-every-image-unusable", all_corrupt, train(), 1,
         ("train: no usable images in {w}/data/images/train: all 8 were skipped", "cannot identify image file",
          "fix or replace those files")),
    Case("data-all-skippable-problems-in-one-run", steps(
        image_bytes("corrupt.jpg", lambda w: os.urandom(2000)),
        image_bytes("cut.jpg", lambda w: good_jpeg(w)[:-400]),
        image_bytes("empty.jpg", lambda w: b""),
        image_bytes("bomb.png", decompression_bomb),
        image_array("gray.png", (48, 64), 90),
        image_array("rgba.png", (48, 64, 4), 200),
        image_array("deep.png", (48, 64, 3), 40000, np.uint16),
        exif_rotated,
        image_array("huge.jpg", (3000, 4000, 3), 60),
        label_only("000001.jpg", "9 0.5 0.5 0.2 0.2\n"),
        label_only("000002.jpg", "0 1.5 0.5 0.2 0.2\n"),
        label_only("000003.jpg", "0 0.5 0.5 0.2\n"),
        label_only("000004.jpg", LABEL * 2),
        label_only("000005.jpg", ""),
    ), train(), 0, ("train: skipped 7 of 17 images", "corrupt.jpg", "cut.jpg", "empty.jpg", "bomb.png",
                    "000001.txt", "000002.txt", "000003.txt", "fixed labels in 1 files"), "cli", warnings=1),
    # --------------------------------------------------------------------------------------------------- recipes
    Case("recipe-missing-file", nothing, train("--recipe", "{w}/nope.yaml"), 1,
         ("recipe file not found: {w}/nope.yaml", "pass a recipe YAML"), "cli"),
    recipe_row("recipe-invalid-yaml", "modifiers:\n  - !EpochRangeModifier\n    start_epoch: 0.0\n   end_epoch: [2\n",
               ("{w}/recipe.yaml: invalid YAML at line 4",)),
    recipe_row("recipe-unknown-modifier", "modifiers:\n  - !GMPruningModifierr\n    params: __ALL_PRUNABLE__\n",
               ("{w}/recipe.yaml: unknown modifier !GMPruningModifierr at line 2", "did you mean !GMPruningModifier")),
    recipe_row("recipe-params-match-nothing", pruning_recipe("['re:^model\\.99\\..*weight$']"),
               ("{w}/recipe.yaml does not fit this model", "matches no parameter; closest: model.")),
    recipe_row("recipe-end-epoch-before-start", pruning_recipe("__ALL_PRUNABLE__", start=1.5, end=0.5),
               ("{w}/recipe.yaml", "end_epoch of 0.5 must be greater than or equal to start_epoch of 1.5")),
    recipe_row("recipe-qat-after-epoch-range-end",
               "modifiers:\n  - !EpochRangeModifier\n    start_epoch: 0.0\n    end_epoch: 2.0\n"
               "  - !QuantizationModifier\n    start_epoch: 5.0\n",
               ("{w}/recipe.yaml: epochs contradict each other: QuantizationModifier start_epoch 5 is after the end",
                "raise the EpochRangeModifier's end_epoch")),
    Case("recipe-zoo-stub-without-network", nothing, train("--recipe", ZOO_STUB), 1,
         (f"cannot resolve {ZOO_STUB}", "unreachable", "mirror the stub into $YOLOV5_SPARSE_ZOO_DIR"), "cli"),
    Case("recipe-zoo-stub-malformed", nothing, train("--recipe", "zoo:not/a/stub"), 1,
         ("malformed SparseZoo stub 'zoo:not/a/stub'", "expected zoo:<domain>/")),
    recipe_row("recipe-huge-number", "num_epochs: 1e300\nmodifiers:\n  - !EpochRangeModifier\n    start_epoch: 0.0\n"
               "    end_epoch: eval(num_epochs)\n", ("{w}/recipe.yaml: number 1e300 at line 1 is out of range",),
               max_seconds=2.0),
    recipe_row("recipe-huge-integer", f"num_epochs: {'9' * 5000}\nmodifiers: []\n",
               ("{w}/recipe.yaml: number 999", "is out of range"), max_seconds=2.0),
    recipe_row("recipe-huge-power-in-eval", "num_epochs: eval(9**9**9)\nmodifiers:\n  - !EpochRangeModifier\n"
               "    start_epoch: 0.0\n    end_epoch: eval(num_epochs)\n",
               ("{w}/recipe.yaml: eval(9**9**9) refused: a power beyond 1e12",), max_seconds=2.0),
    recipe_row("recipe-deep-nesting", "x: " + "[" * 5000 + "]" * 5000 + "\nmodifiers: []\n",
               ("{w}/recipe.yaml: nested deeper than 32 levels",), max_seconds=2.0),
    recipe_row("recipe-deep-block-nesting", "".join(f"{' ' * i}k{i}:\n" for i in range(200)) + "modifiers: []\n",
               ("{w}/recipe.yaml: nested deeper than 32 levels at line",), max_seconds=2.0),
    recipe_row("recipe-eval-that-would-run-code",
               "num_epochs: eval(__import__('os').system('touch {w}/pwned'))\nmodifiers: []\n",
               ("{w}/recipe.yaml: eval(__import__", "is not arithmetic on numbers and recipe variables"),
               max_seconds=2.0),
    # --------------------------------------------------------------------------------------------------- weights
    Case("weights-missing-file", nothing, train("--weights", "{w}/none.pt"), 1,
         ("weights file not found: {w}/none.pt", "Pass a local .pt file"), "cli"),
    Case("weights-truncated", steps(checkpoint_with_classes("full.pt", 6), truncated("full.pt", "cut.pt")),
         train("--weights", "{w}/cut.pt"), 1, ("{w}/cut.pt is not a PyTorch checkpoint (empty, truncated",
                                               "Pass a .pt file written by this project")),
    Case("weights-another-format-jpeg", lambda w: (w / "photo.pt").write_bytes(good_jpeg(w)),
         train("--weights", "{w}/photo.pt"), 1, ("{w}/photo.pt is not a PyTorch checkpoint", "Pass a .pt file")),
    Case("weights-another-format-zip", zip_of_text, train("--weights", "{w}/archive.pt"), 1,
         ("{w}/archive.pt could not be read", "use another checkpoint")),
    Case("weights-other-class-count-transfers", checkpoint_with_classes("coco.pt", 80),
         train("--weights", "{w}/coco.pt"), 0,
         ("{w}/coco.pt was trained on 80 classes and {w}/data.yaml has 6: transfer learning",
          "Detect output layers start from scratch"), warnings=0),
    Case("weights-quantized-plus-quantizing-recipe", quantized_checkpoint,
         train("--weights", "{w}/quant.pt", "--recipe", "{w}/quant.yaml"), 1,
         ("{w}/quant.yaml: checkpoint is already quantized", "remove the QuantizationModifier")),
    Case("teacher-other-classes", checkpoint_with_classes("coco.pt", 80),
         train("--recipe", "recipes/yolov5n.pruned.yaml", "--teacher-weights", "{w}/coco.pt"), 1,
         ("--teacher-weights {w}/coco.pt: the teacher predicts 80 classes and the model being trained 6",
          "use a teacher trained on the same dataset")),
    Case("teacher-missing-file", nothing,
         train("--recipe", "recipes/yolov5n.pruned.yaml", "--teacher-weights", "{w}/none.pt"), 1,
         ("weights file not found: {w}/none.pt",)),
    Case("teacher-without-distillation-in-the-recipe", checkpoint_with_classes("dense.pt", 6),
         train("--recipe", "recipes/yolov5n.quant.yaml", "--teacher-weights", "{w}/dense.pt"), 1,
         ("--teacher-weights is set but recipes/yolov5n.quant.yaml has no distillation modifier",
          "add a !PerLayerDistillationModifier")),
    Case("teacher-without-a-recipe", checkpoint_with_classes("dense.pt", 6),
         train("--teacher-weights", "{w}/dense.pt"), 1,
         ("--teacher-weights needs a recipe with a distillation modifier",)),
    Case("val-threads-zero", nothing,
         ("val.py", "--weights", "{w}/x.onnx", "--data", "{w}/data.yaml", "--threads", "0"), 2,
         ("val.py: error: argument --threads: must be at least 1",), "cli"),
    Case("detect-threads-zero", nothing,
         ("detect.py", "--weights", "{w}/x.onnx", "--source", "{w}/data/images/val", "--threads", "0"), 2,
         ("detect.py: error: argument --threads: must be at least 1",), "cli"),
    Case("val-truncated-weights", steps(checkpoint_with_classes("full.pt", 6), truncated("full.pt", "cut.pt")),
         ("val.py", "--weights", "{w}/cut.pt", "--data", "{w}/data.yaml", "--imgsz", "64", "--project", "{w}/val"),
         1, ("{w}/cut.pt is not a PyTorch checkpoint", "Pass a .pt file"), "cli"),
    Case("detect-truncated-weights", steps(checkpoint_with_classes("full.pt", 6), truncated("full.pt", "cut.pt")),
         ("detect.py", "--weights", "{w}/cut.pt", "--source", "{w}/data/images/val", "--imgsz", "64",
          "--project", "{w}/detect"), 1, ("detect.py: error: {w}/cut.pt is not a PyTorch checkpoint",), "cli"),
    Case("export-truncated-weights", steps(checkpoint_with_classes("full.pt", 6), truncated("full.pt", "cut.pt")),
         ("export.py", "--weights", "{w}/cut.pt", "--imgsz", "64"), 1,
         ("export.py: error: {w}/cut.pt is not a PyTorch checkpoint",)),
    # ------------------------------------------------------------------------------------------------------- CLI
    Case("cli-resume-with-another-recipe", resumable_run(None),
         ("train.py", "--resume", "{w}/runs/exp/weights/last.pt", "--recipe", "recipes/demo.yaml"), 1,
         ("--resume with a different recipe (recipes/demo.yaml) than the run used (None)",
          "drop --sparsification-recipe to resume"), "cli"),
    Case("cli-imgsz-not-a-stride-multiple", nothing, train("--imgsz", "70"), 1,
         ("--imgsz 70 must be a multiple of the model's max stride 32; use 64 or 96",)),
    Case("cli-batch-larger-than-dataset", nothing, train("--batch-size", "64"), 1,
         ("--batch-size 64 is larger than the training set of {w}/data.yaml (8 images)", "use --batch-size 8")),
    Case("cli-resume-missing-checkpoint", nothing, ("train.py", "--resume", "{w}/runs/exp/weights/last.pt"), 1,
         ("checkpoint not found: {w}/runs/exp/weights/last.pt", "pass the path of an existing .pt file")),
    Case("cli-resume-finished-run", finished_run, ("train.py", "--resume", "{w}/runs/exp/weights/last.pt"), 1,
         ("is from a finished run; nothing to resume", "Start a new run with --weights")),
    Case("cli-resume-run-stopped-early", run_stopped_early, ("train.py", "--resume", "{w}/runs/exp/weights/last.pt"),
         1, ("is from a finished run; nothing to resume", "Start a new run with --weights")),
    Case("cli-hyp-missing-keys", write_text("hyp.yaml", "lr0: 0.01\n"), train("--hyp", "{w}/hyp.yaml"), 1,
         ("{w}/hyp.yaml: missing or non-numeric hyperparameters lrf, momentum", "copy them from data/hyps/")),
]


# --------------------------------------------------------------------------------------------------------- running
@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny good dataset (8 train, 4 val images of 64 px) and its YAML; each row works on a copy."""
    from data.scripts.make_shapes import generate

    root = tmp_path_factory.mktemp("template")
    generate(root / "data", num_train=8, num_val=4, imgsz=64, seed=3)
    (root / "data.yaml").write_text(yaml.safe_dump({"path": "set per row", "train": "images/train",
                                                    "val": "images/val", "names": dict(enumerate(NAMES))}))
    return root


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(argv: list[str], env_overrides: dict[str, str]) -> tuple[int, str]:
    proxies = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    env = {k: v for k, v in os.environ.items() if k not in proxies}
    env.update(NM_DISABLE_ANALYTICS="1", **env_overrides)
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``script.main(script.parse_opt(argv))`` as the CLI runs it; only SystemExit may leave it."""
    module = importlib.import_module(argv[0].removesuffix(".py"))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    code, message = 0, ""
    try:
        module.main(module.parse_opt(argv[1:]))
    except SystemExit as exit_:
        code, message = (exit_.code, "") if isinstance(exit_.code, int) else (1, str(exit_.code))
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
    captured = capsys.readouterr()
    return code, captured.out + captured.err + message


def run_dataloader(w: Path, caplog: pytest.LogCaptureFixture) -> tuple[int, str, int]:
    from utils.dataset import create_dataloader

    hyp = yaml.safe_load((ROOT / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())
    with caplog.at_level(logging.INFO, logger="utils.dataset"):
        loader, dataset = create_dataloader(str(w / "data" / "images" / "train"), 64, 4, 32, hyp=hyp, augment=True,
                                            workers=0, shuffle=True, prefix="train: ", nc=len(NAMES))
        for images, _targets, _paths, _shapes in loader:
            assert images.dtype == torch.uint8 and images.shape[1:] == (3, 64, 64)
    warnings = [r for r in caplog.records if r.name == "utils.dataset" and r.levelno == logging.WARNING]
    kept = len(dataset)
    return 0, "\n".join(r.getMessage() for r in caplog.records) + f"\nkept {kept}", len(warnings)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, template: Path, tmp_path: Path, closed_port: int, capsys, caplog) -> None:
    w = tmp_path / "w"
    shutil.copytree(template, w)
    edit_yaml(path=str(w / "data"))(w)
    case.setup(w)
    before = set(w.rglob("*"))
    argv = [arg.replace("{w}", str(w)) for arg in case.command]
    started = time.perf_counter()
    warnings = None
    if case.how == "cli":
        code, output = run_cli(argv, {"SPARSEZOO_API_URL": f"http://127.0.0.1:{closed_port}"})
    elif case.how == "inprocess":
        code, output = run_in_process(argv, capsys)
    else:
        code, output, warnings = run_dataloader(w, caplog)
    seconds = time.perf_counter() - started

    assert TRACEBACK not in output, output[-3000:]
    assert code == case.expect_exit, output[-3000:]
    for expected in case.expect_message:
        assert expected.replace("{w}", str(w)) in output, f"{expected!r} not in:\n{output[-3000:]}"
    if case.warnings is not None:
        assert (output.count(SKIP_HEADER) if warnings is None else warnings) == case.warnings, output
    if case.expect_exit == 0 and case.how != "dataloader":
        assert (w / "runs" / "exp" / "weights" / "last.pt").is_file()
        # nothing written outside the run folder, except the dataset's label cache (JSON, see utils/dataset.py)
        written = {p for p in set(w.rglob("*")) - before if p.is_file()}
        assert all(p.is_relative_to(w / "runs") or p.suffix == ".cache" for p in written), written
    if case.max_seconds is not None:
        assert seconds < case.max_seconds, f"took {seconds:.1f} s"
    assert not (w / "pwned").exists()
