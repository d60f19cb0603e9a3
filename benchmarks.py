"""Benchmarks (run by `make bench`): throughput, accuracy of dense vs sparsified training, runtime latency.

Results go to BENCHMARKS.md with the command, the machine, the versions and the date. Speeds are compared as ratios
measured in the same process, because this shared machine's absolute timings drift by tens of percent.

    python benchmarks.py                        # everything (long: trains two models)
    python benchmarks.py --only throughput      # training / validation images per second
    python benchmarks.py --only demo            # time `python demo.py` and record the mAP it reaches
    python benchmarks.py --only accuracy        # dense yolov5n to convergence, then dense / sparse fine-tunes of it
    python benchmarks.py --only scratch         # dense yolov5n and the same run with a pruned_quant recipe
    python benchmarks.py --only runtime         # ONNX files in onnxruntime / DeepSparse (--quick: a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.yolo import DetectionModel  # noqa: E402
from utils import runtime_benchmark  # noqa: E402
from utils.loss import ComputeLoss  # noqa: E402
from utils.metrics import fitness  # noqa: E402

BENCH_DIR = ROOT / "runs" / "bench"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]
                return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/vnni"
    except OSError:
        pass
    return "unknown"


def _hyp() -> dict:
    import yaml

    with open(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def _random_batch(batch: int, imgsz: int, nc: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, imgsz, imgsz, generator=generator)
    rows = []
    for i in range(batch):
        for _ in range(4):
            w, h = (torch.rand(2, generator=generator) * 0.3 + 0.05).tolist()
            x, y = (torch.rand(2, generator=generator) * 0.6 + 0.2).tolist()
            rows.append([i, float(torch.randint(nc, (1,), generator=generator)), x, y, w, h])
    return images, torch.tensor(rows)


def throughput(cfg: str, imgsz: int, batch: int, steps: int) -> dict:
    """Training (forward + backward + SGD step) and inference (forward + NMS) images per second."""
    from utils.boxes import non_max_suppression

    nc = 6
    model = DetectionModel(cfg, nc=nc)
    model.hyp = _hyp()
    loss_fn = ComputeLoss(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, targets = _random_batch(batch, imgsz, nc)
    model.train()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss, _ = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - start)
    train_ips = batch / statistics.median(times)
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(steps + 1):
            start = time.perf_counter()
            non_max_suppression(model(images)[0], 0.001, 0.6)
            if i:
                times.append(time.perf_counter() - start)
    return {"model": cfg.replace(".yaml", ""), "imgsz": imgsz, "batch": batch,
            "train_images_per_s": round(train_ips, 2), "val_images_per_s": round(batch / statistics.median(times), 2)}


def run_command(args: list[str]) -> float:
    print("$ python " + " ".join(args), flush=True)
    start = time.time()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
    return time.time() - start


def read_results(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "results.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# Sparse fine-tunes of the dense model. All but relu_quant use recipes/yolov5n.pruned_quant.yaml scaled to
# --finetune-epochs, with AdamW (the dense model's optimizer) at the learning rates below; "teacher": distil from the
# dense model (--teacher-weights, the recipe's PerLayerDistillationModifier).
# "even": the same total sparsity without the heavy/inner split (the two-group layout of the yolov5s recipes).
# "block4": 4-block masks and Detect quantized too (runtime_benchmark.BLOCK4): the layout DeepSparse runs fastest.
SPARSE_VARIANTS = {
    "pruned_quant": {"recipe_args": {}, "teacher": False},
    "pruned_quant_distill": {"recipe_args": {}, "teacher": True},
    "pruned_quant_distill_even": {"recipe_args": {"final_sparsity_heavy": 0.79, "final_sparsity_inner": 0.79,
                                                  "final_sparsity_sensitive": 0.6}, "teacher": True},
    # The speed-first file of the runtime section (its trained yolov5n 4-block rows come from this run).
    "pruned_quant_block4": {"recipe_args": runtime_benchmark.BLOCK4, "teacher": True},
    # No pruning: the dense model converted to ReLU (models/yolov5n-relu.yaml; DeepSparse runs INT8 ReLU networks in
    # ~25% less time than SiLU ones on this CPU), distilled, then QAT: recipes/yolov5n.relu_quant.yaml, whose
    # learning-rate schedule is the control's.
    "relu_quant": {"recipe_args": {}, "teacher": True, "cfg": "yolov5n-relu.yaml",
                   "recipe": "recipes/yolov5n.relu_quant.yaml",
                   "note": "--cfg yolov5n-relu.yaml, recipes/yolov5n.relu_quant.yaml (no pruning)"},
}
SPARSE_VARIANTS.update({
    # What each step costs on its own: pruning alone (distilled like pruned_quant) and QAT alone.
    "pruned_distill": {"recipe_args": {}, "teacher": True, "recipe": "recipes/yolov5n.pruned.yaml"},
    "quant": {"recipe_args": {}, "teacher": False, "recipe": "recipes/yolov5n.quant.yaml"},
    # The speed-first file: the dense model switched to ReLU (models/yolov5n-relu.yaml), pruned in blocks of 4 input
    # channels to the recipe's default sparsities (~80% of this model's conv weights), then INT8 with Detect too.
    "relu_block4_quant": {"recipe_args": {**runtime_benchmark.BLOCK4, "final_sparsity_heavy": 0.88,
                                          "final_sparsity_inner": 0.72, "final_sparsity_sensitive": 0.55},
                          "teacher": True, "cfg": "yolov5n-relu.yaml",
                          "note": "--cfg yolov5n-relu.yaml, 4-block, ~80% sparse, Detect INT8"},
})
SPARSE_VARIANTS.update({
    # The sparsity Neural Magic ships for yolov5n (its `pruned40_quant` stub), for the trade-off against >= 75%:
    # half the default sparsities, ~45% of this model's conv weights.
    "pruned_quant_distill_light": {"recipe_args": {"final_sparsity_heavy": 0.5, "final_sparsity_inner": 0.4,
                                                   "final_sparsity_sensitive": 0.3}, "teacher": True,
                                   "note": "~45% sparse, Neural Magic's yolov5n level"},
})
DEFAULT_VARIANTS = ("pruned_quant_distill", "relu_block4_quant", "pruned_distill", "quant")
FINETUNE_RECIPE = "recipes/yolov5n.pruned_quant.yaml"
# AdamW at two thirds of the dense run's lr0 (0.003), decaying to a quarter of that; QAT at 1e-4 -> 1e-6. One-off
# runs kept more mAP with it than with 0.001 -> 0.0001 (recipes/README.md); the control gets the same schedule.
# The biases warm up from init_lr, not from the recipes' 0.1 (an SGD value from scratch): AdamW steps ~lr per step
# whatever the gradient: with 0.1 the control's first epoch fell from mAP@0.5:0.95 0.570 to 0.364, with 0.002 to
# 0.445 (a fresh AdamW state perturbs a trained model either way; the run recovers over the following epochs).
FINETUNE_ARGS = {"quantization_epochs": 4, "init_lr": 0.002, "final_lr": 0.0005, "qat_init_lr": 0.0001,
                 "qat_final_lr": 1.0e-6, "biases_warmup_lr": 0.002}
PRUNING_END = 0.4  # sparse runs: pruning ends at this fraction of the fine-tune (the recipe's 0.6 is for 100 epochs)
# Sparse runs: the lowest sparsities of the recipe's layer groups that put >= 75% of this 6-class model's conv
# weights at zero (77%; the recipe's defaults aim at 75% of an 80-class model, 80% of this one).
SPARSITY_ARGS = {"final_sparsity_heavy": 0.85, "final_sparsity_inner": 0.7, "final_sparsity_sensitive": 0.5}
# The protocol's dense model: one run from scratch under YOLOv5's schedule (the learning rate falls linearly to 1% of
# lr0), on a problem small enough to converge on 2 CPU cores. Converged: over its last CONVERGENCE_WINDOW epochs the
# best mAP@0.5:0.95 rose by less than CONVERGENCE_RISE (relative); the control fine-tune must not beat it by more.
PROTOCOL_DATA, PROTOCOL_IMGSZ, PROTOCOL_EPOCHS, PROTOCOL_FINETUNE_EPOCHS = "data/shapes_tiny.yaml", 160, 300, 30
CONVERGENCE_WINDOW, CONVERGENCE_RISE = 30, 0.01
DENSE_CURVE = ROOT / "BENCHMARKS_dense_curve.png"  # the accuracy section's convergence plot, beside BENCHMARKS.md
DENSE_ARGS = ["--cfg", "yolov5n.yaml", "--weights", "", "--optimizer", "AdamW", "--hyp", "data/hyps/hyp.short.yaml"]
# The scratch section: the dense run's command plus this recipe (no learning-rate modifiers, so YOLOv5's schedule
# and warm-up run exactly as in the dense run), at the fine-tunes' sparsities (SPARSITY_ARGS).
SCRATCH_RECIPE = "recipes/yolov5n.pruned_quant_scratch.yaml"
SCRATCH_CURVE_POINTS = 6  # epochs at which the section lists both runs' mAP@0.5:0.95 (where the gap opens)

# The control: the same fine-tune (epochs, optimizer, learning-rate modifiers of the pruned_quant recipe) with no
# pruning, quantization or distillation, so that the dense model gets every epoch the sparse ones get.
CONTROL_RECIPE = """# Benchmark control (written by benchmarks.py): the LR schedule of recipes/yolov5n.pruned_quant.yaml
version: 1.1.0
num_epochs: 30
init_lr: 0.01
final_lr: 0.002
warmup_end_epoch: eval(num_epochs * 0.03)
quantization_epochs: eval(num_epochs * 0.05)
qat_start_epoch: eval(num_epochs - quantization_epochs)
qat_init_lr: 1.0e-3
qat_final_lr: 1.0e-6
biases_warmup_lr: 0.1
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
  - !LearningRateFunctionModifier
    start_epoch: 0.0
    end_epoch: eval(warmup_end_epoch)
    lr_func: linear
    init_lr: 0.0
    final_lr: eval(init_lr)
    param_groups: [1, 2]
  - !LearningRateFunctionModifier
    start_epoch: 0.0
    end_epoch: eval(warmup_end_epoch)
    lr_func: linear
    init_lr: eval(biases_warmup_lr)
    final_lr: eval(init_lr)
    param_groups: [0]
  - !LearningRateFunctionModifier
    start_epoch: eval(warmup_end_epoch)
    end_epoch: eval(qat_start_epoch)
    lr_func: linear
    init_lr: eval(init_lr)
    final_lr: eval(final_lr)
  - !LearningRateFunctionModifier
    start_epoch: eval(qat_start_epoch)
    end_epoch: eval(num_epochs)
    lr_func: cosine
    init_lr: eval(qat_init_lr)
    final_lr: eval(qat_final_lr)
"""


def run_minutes(run_dir: Path) -> float:
    """Training time of a finished run: the wall time its last.pt records (the parts of a resumed run added up), or,
    for runs of versions that did not record it, the time between its first file (opt.yaml) and its last."""
    from utils.checkpoint import CheckpointError, load_checkpoint

    last = run_dir / "weights" / "last.pt"
    try:
        seconds = load_checkpoint(last)["options"].get("train_seconds")
    except CheckpointError:
        seconds = None
    if seconds is not None:
        return float(seconds) / 60
    return (last.stat().st_mtime - (run_dir / "opt.yaml").stat().st_mtime) / 60


def same_settings(run_dir: Path, expected: dict) -> bool:
    """Whether the opt.yaml in ``run_dir`` has the ``expected`` settings (``recipe_args`` compared as parsed JSON)."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "opt.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    if "recipe_args" in expected:
        try:
            saved = {**saved, "recipe_args": json.loads(saved.get("recipe_args") or "{}")}
        except json.JSONDecodeError:
            return False
    return all(saved.get(key) == value for key, value in expected.items())


def finished_run(run_dir: Path, epochs: int, expected: dict) -> bool:
    """Whether ``run_dir`` holds a finished run of ``epochs`` epochs with the ``expected`` settings."""
    try:
        done = len(read_results(run_dir)) == epochs and (run_dir / "weights" / "best.pt").is_file()
    except OSError:
        return False
    return done and same_settings(run_dir, expected)


def train_stage(run_dir: Path, epochs: int, expected: dict, command: list[str], what: str) -> bool:
    """Reuse a finished run of the ``expected`` settings in ``run_dir`` (returns True), continue an interrupted one
    with ``train.py --resume``, or run ``command``: a benchmark of several hours that was stopped goes on where it
    left off when it is run again."""
    if finished_run(run_dir, epochs, expected):
        print(f"reusing the finished run {run_dir} ({what}, same settings)", flush=True)
        return True
    last = run_dir / "weights" / "last.pt"
    if last.is_file() and same_settings(run_dir, expected):
        print(f"resuming the interrupted run {run_dir} ({what})", flush=True)
        run_command(["train.py", "--resume", str(last)])
    else:
        run_command(command)
    return False


def scratch_settings(common: list[str]) -> dict:
    """The opt.yaml settings that a from-scratch run (DENSE_ARGS and ``common``) must match to be reused."""
    flags = dict(zip(DENSE_ARGS[::2], DENSE_ARGS[1::2]))
    return {"weights": flags["--weights"], "optimizer": flags["--optimizer"], "hyp": flags["--hyp"],
            "cfg": flags["--cfg"], "imgsz": int(common[common.index("--imgsz") + 1]),
            "data": common[common.index("--data") + 1]}


def dense_run(project: Path, epochs: int, common: list[str]) -> tuple[Path, bool]:
    """Train the dense model, or reuse a finished run of the same settings (a rerun then trains only the
    fine-tunes). Returns the run folder and whether it was reused."""
    run_dir = project / "dense"
    command = ["train.py", *DENSE_ARGS, "--epochs", str(epochs), "--name", "dense", *common]
    expected = {**scratch_settings(common), "epochs": epochs}
    return run_dir, train_stage(run_dir, epochs, expected, command, f"dense, {epochs} epochs")


def recipe_run(project: Path, name: str, start: Path, epochs: int, common: list[str], recipe: Path,
               recipe_args: dict) -> tuple[Path, bool]:
    """A fine-tune of ``start`` for ``epochs`` epochs by ``recipe`` (AdamW), or a finished run of the same settings
    in ``project/name`` (start, recipe, recipe variables, size, data), which is reused. Returns the folder and whether
    it was reused. Used for the dense stages (the continued dense model, the control), whose recipes do not change."""
    run_dir = project / name
    expected = {"weights": str(start), "sparsification_recipe": str(recipe), "recipe_args": recipe_args,
                "optimizer": "AdamW", "imgsz": int(common[common.index("--imgsz") + 1]),
                "data": common[common.index("--data") + 1]}
    command = ["train.py", "--weights", str(start), "--optimizer", "AdamW", *common, "--sparsification-recipe",
               str(recipe), "--recipe-args", json.dumps(recipe_args), "--name", name]
    return run_dir, train_stage(run_dir, epochs, expected, command, f"{epochs} epochs from {start}")


def sparse_scratch_run(project: Path, epochs: int, common: list[str]) -> tuple[Path, bool]:
    """The dense run's command with SCRATCH_RECIPE at ``epochs`` epochs and the sparsities of the fine-tunes, or a
    finished run of the same settings. Returns the run folder and whether it was reused."""
    run_dir = project / "pruned_quant_scratch"
    recipe_args = {"num_epochs": epochs, **SPARSITY_ARGS}
    expected = {**scratch_settings(common), "sparsification_recipe": SCRATCH_RECIPE, "recipe_args": recipe_args}
    command = ["train.py", *DENSE_ARGS, "--sparsification-recipe", SCRATCH_RECIPE, "--recipe-args",
               json.dumps(recipe_args), "--name", run_dir.name, *common]
    return run_dir, train_stage(run_dir, epochs, expected, command, f"{epochs} epochs from scratch")


def recipe_variables(recipe: str | Path) -> set[str]:
    """The names a recipe file defines at its top level (the variables --recipe-args may set)."""
    text = (ROOT / recipe).read_text(encoding="utf-8") if not Path(recipe).is_absolute() else Path(recipe).read_text()
    return set(re.findall(r"^([A-Za-z_]\w*):", text, flags=re.MULTILINE))


def variant_command(name: str, start: Path, common: list[str], lr_args: dict, sparse_args: dict,
                    run_name: str | None = None) -> list[str]:
    """train.py arguments of the fine-tune ``name`` (SPARSE_VARIANTS) from ``start``, into the run folder
    ``run_name`` (default ``name``): its recipe (the pruned_quant one by default) with those of the benchmark's
    learning-rate and pruning variables that the recipe defines."""
    variant = SPARSE_VARIANTS[name]
    recipe = variant.get("recipe", FINETUNE_RECIPE)
    defined = recipe_variables(recipe)
    recipe_args = {**{k: v for k, v in {**lr_args, **sparse_args}.items() if k in defined}, **variant["recipe_args"]}
    teacher = ["--teacher-weights", str(start)] if variant["teacher"] else []
    cfg = ["--cfg", variant["cfg"]] if variant.get("cfg") else []
    return ["train.py", "--weights", str(start), "--optimizer", "AdamW", *common, *cfg, "--sparsification-recipe",
            recipe, "--recipe-args", json.dumps(recipe_args), *teacher, "--name", run_name or name]


def variant_run(project: Path, name: str, start: Path, epochs: int, common: list[str], lr_args: dict,
                sparse_args: dict, run_name: str | None = None) -> bool:
    """Train the fine-tune ``name``, or reuse / resume a run of the same command in ``project/run_name``."""
    run_name = run_name or name
    command = variant_command(name, start, common, lr_args, sparse_args, run_name)

    def flag(option: str) -> str | None:
        return command[command.index(option) + 1] if option in command else None

    expected = {"weights": str(start), "sparsification_recipe": flag("--sparsification-recipe"),
                "recipe_args": json.loads(flag("--recipe-args")), "optimizer": "AdamW",
                "imgsz": int(flag("--imgsz")), "data": flag("--data"),
                "teacher_weights": flag("--teacher-weights") or "", **({"cfg": flag("--cfg")} if flag("--cfg") else {})}
    return train_stage(project / run_name, epochs, expected, command, f"{name}, {epochs} epochs from {start}")


def dense_convergence(rows: list[dict], window: int = CONVERGENCE_WINDOW) -> dict:
    """Whether a run converged: the rise of its best mAP@0.5:0.95 over its last ``window`` epochs, relative."""
    maps = [float(r["metrics/mAP_0.5:0.95"]) for r in rows]
    before = max(maps[:-window], default=0.0)
    best = max(maps, default=0.0)
    rise = best / before - 1 if before > 0 else float("inf")
    lr = [float(rows[-1][k]) for k in rows[-1] if k.startswith("x/lr")] if rows else []
    return {"window": window, "best_before_window": before, "best": best, "rise": rise,
            "converged": rise < CONVERGENCE_RISE, "final_lr": max(lr, default=0.0), "epochs": len(rows)}


def plot_dense_curve(rows: list[dict], path: Path, window: int = CONVERGENCE_WINDOW) -> Path:
    """mAP@0.5 and mAP@0.5:0.95 per epoch of the dense run, its last ``window`` epochs shaded, the learning rate on
    a second axis: the picture that shows whether the dense side had converged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(8, 4.5), tight_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(epochs, [float(r["metrics/mAP_0.5"]) for r in rows], label="mAP@0.5")
    ax.plot(epochs, [float(r["metrics/mAP_0.5:0.95"]) for r in rows], label="mAP@0.5:0.95")
    if len(epochs) > window:
        ax.axvspan(epochs[-window], epochs[-1], color="grey", alpha=0.2, label=f"last {window} epochs")
    ax.set(xlabel="epoch", ylabel="mAP (val)", ylim=(0, 1), title="Dense yolov5n: the start of every fine-tune")
    lr_axis = ax.twinx()
    lr_axis.plot(epochs, [float(r.get("x/lr1", 0.0)) for r in rows], color="black", linewidth=0.8, linestyle=":",
                 label="learning rate")
    lr_axis.set_ylabel("learning rate")
    handles = ax.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right")
    fig.savefig(path, dpi=120)
    return path


def benchmark_args(data: str, imgsz: int, batch: int, project: Path) -> list[str]:
    """train.py arguments that every run of the accuracy benchmarks shares."""
    return ["--data", data, "--imgsz", str(imgsz), "--batch-size", str(batch), "--workers", "2",
            "--project", str(project), "--exist-ok", "--noplots"]


def attempt_name(finetune_epochs: int, attempt: str | None = None) -> str:
    """The name of a run of the protocol with other fine-tune settings ("" for the protocol itself): ``attempt``
    when given, else ``e<epochs>`` for another fine-tune length. Its runs train in folders of their own
    (``control_e60``, ...), so an attempt never replaces the protocol's runs."""
    return attempt or ("" if finetune_epochs == PROTOCOL_FINETUNE_EPOCHS else f"e{finetune_epochs}")


def accuracy(epochs: int, finetune_epochs: int, imgsz: int, batch: int, data: str = PROTOCOL_DATA,
             variants: tuple[str, ...] = DEFAULT_VARIANTS, project: Path = BENCH_DIR / "protocol",
             curve: Path = DENSE_CURVE, finetune_overrides: dict | None = None, attempt: str = "") -> dict:
    """The accuracy protocol: dense yolov5n trained to convergence (checked, and plotted to ``curve``); from its
    best checkpoint (the start), the same fine-tune left dense (the control) and the recipe ``variants`` (see
    SPARSE_VARIANTS). Finished runs of the same settings in ``project`` are reused, interrupted ones resumed.

    Same budget: the control and each sparse run train ``finetune_epochs`` from the start with the same optimizer and
    learning-rate schedule. Recovery divides a sparse run's mAP@0.5:0.95 by the better of the start and the control;
    the control beating the start by more than CONVERGENCE_RISE would say the start had not converged.
    ``finetune_overrides`` replace FINETUNE_ARGS values (learning rates, QAT length) for an ``attempt``.
    """
    project.mkdir(parents=True, exist_ok=True)
    common = benchmark_args(data, imgsz, batch, project)
    control_recipe = project / "control_recipe.yaml"
    control_recipe.write_text(CONTROL_RECIPE, encoding="utf-8")
    dense_dir, reused = dense_run(project, epochs, common)
    dense_rows = read_results(dense_dir)
    dense = best_of(dense_rows)
    plot_dense_curve(dense_rows, curve)
    start = dense_dir / "weights" / "best.pt"
    lr_args = {"num_epochs": finetune_epochs, **FINETUNE_ARGS, **(finetune_overrides or {})}
    suffix = f"_{attempt}" if attempt else ""
    control_dir, control_reused = recipe_run(project, f"control{suffix}", start, finetune_epochs, common,
                                             control_recipe, lr_args)
    control = best_of(read_results(control_dir))
    start_map, control_map = float(dense["metrics/mAP_0.5:0.95"]), float(control["metrics/mAP_0.5:0.95"])
    baseline = max((dense, control), key=lambda r: float(fitness(_metrics(r))[0]))
    sparse_args = {**lr_args, "pruning_end_epoch": round(PRUNING_END * finetune_epochs, 2), **SPARSITY_ARGS}
    result = {"protocol": 2, "data": data, "imgsz": imgsz, "dense_epochs": epochs, "finetune_epochs": finetune_epochs,
              "optimizer": "AdamW", "finetune_args": sparse_args,
              "start_map50": float(dense["metrics/mAP_0.5"]), "start_map": start_map,
              "dense_best_epoch": int(dense["epoch"]), "dense_minutes": run_minutes(dense_dir),
              "dense_reused": reused, "convergence": dense_convergence(dense_rows),
              "curve": curve.relative_to(ROOT).as_posix() if curve.is_relative_to(ROOT) else str(curve),
              "control_map50": float(control["metrics/mAP_0.5"]), "control_map": control_map,
              "control_minutes": run_minutes(control_dir), "control_reused": control_reused,
              "control_rise": control_map / max(start_map, 1e-9) - 1,
              "baseline": "control" if baseline is control else "start",
              "baseline_map": float(baseline["metrics/mAP_0.5:0.95"]), "sparse": []}
    for name in variants:
        variant = SPARSE_VARIANTS[name]
        variant_run(project, name, start, finetune_epochs, common, lr_args, sparse_args, name + suffix)
        rows = read_results(project / (name + suffix))
        final_phase = rows[-1]["phase"]
        sparse = best_of(rows, final_phase)
        minutes = run_minutes(project / (name + suffix))
        result["sparse"].append({
            "name": name, "recipe": variant.get("recipe", FINETUNE_RECIPE),
            "recipe_args": json.dumps(variant["recipe_args"]) if variant["recipe_args"] else "",
            "note": variant.get("note", ""),
            "teacher": variant["teacher"], "epochs": len(rows), "phase": final_phase,
            "map50": float(sparse["metrics/mAP_0.5"]), "map": float(sparse["metrics/mAP_0.5:0.95"]),
            "sparsity": float(sparse["sparsity"]),
            "recovery": float(sparse["metrics/mAP_0.5:0.95"]) / max(result["baseline_map"], 1e-9),
            "minutes": minutes,
            "phase_minutes": phase_minutes(rows, minutes)})
    return result


def scratch(epochs: int, imgsz: int, batch: int, data: str, project: Path = BENCH_DIR / "protocol") -> dict:
    """Same budget from scratch: the accuracy section's dense run and the same command with SCRATCH_RECIPE (dense,
    then GMP, then QAT, under the same YOLOv5 learning-rate schedule). The runs differ only in what the recipe does to
    the model. Finished runs of the same settings in ``project`` are reused, interrupted ones resumed."""
    project.mkdir(parents=True, exist_ok=True)
    common = benchmark_args(data, imgsz, batch, project)
    dense_dir, dense_reused = dense_run(project, epochs, common)
    sparse_dir, sparse_reused = sparse_scratch_run(project, epochs, common)
    dense_rows, sparse_rows = read_results(dense_dir), read_results(sparse_dir)
    dense, final_phase = best_of(dense_rows), sparse_rows[-1]["phase"]
    sparse = best_of(sparse_rows, final_phase)
    minutes = run_minutes(sparse_dir)
    step = max(epochs // SCRATCH_CURVE_POINTS, 1)
    curve = [{"epoch": e, "dense": float(dense_rows[e]["metrics/mAP_0.5:0.95"]),
              "sparse": float(sparse_rows[e]["metrics/mAP_0.5:0.95"]), "phase": sparse_rows[e]["phase"],
              "sparsity": float(sparse_rows[e]["sparsity"])}
             for e in sorted({*range(step - 1, epochs, step), epochs - 1})]
    return {"data": data, "imgsz": imgsz, "batch": batch, "epochs": epochs, "recipe": SCRATCH_RECIPE,
            "sparsity_args": SPARSITY_ARGS,
            "dense_map50": float(dense["metrics/mAP_0.5"]), "dense_map": float(dense["metrics/mAP_0.5:0.95"]),
            "dense_best_epoch": int(dense["epoch"]), "dense_minutes": run_minutes(dense_dir),
            "dense_reused": dense_reused,
            "sparse_map50": float(sparse["metrics/mAP_0.5"]), "sparse_map": float(sparse["metrics/mAP_0.5:0.95"]),
            "sparse_best_epoch": int(sparse["epoch"]), "sparse_phase": final_phase,
            "sparsity": float(sparse["sparsity"]), "sparse_minutes": minutes, "sparse_reused": sparse_reused,
            "phase_minutes": phase_minutes(sparse_rows, minutes),
            "phase_starts": {row["phase"]: int(row["epoch"]) for row in reversed(sparse_rows)},
            "same_epochs": same_epochs(dense_rows, sparse_rows),
            "recovery": float(sparse["metrics/mAP_0.5:0.95"]) / max(float(dense["metrics/mAP_0.5:0.95"]), 1e-9),
            "curve": curve}


def phase_minutes(rows: list[dict], minutes: float) -> dict[str, float]:
    """A run's ``minutes`` shared out over its phases by their number of epochs (results.csv rows)."""
    return {phase: round(count * minutes / max(len(rows), 1), 1)
            for phase, count in Counter(row["phase"] for row in rows).items()}


def _metrics(row: dict) -> np.ndarray:
    return np.array([[0.0, 0.0, float(row["metrics/mAP_0.5"]), float(row["metrics/mAP_0.5:0.95"])]])


def best_of(rows: list[dict], phase: str | None = None) -> dict:
    """The results.csv row of highest YOLOv5 fitness (train.py's choice of best.pt), among ``phase``'s rows."""
    rows = [r for r in rows if phase is None or r["phase"] == phase] or rows
    scores = fitness(np.concatenate([_metrics(r) for r in rows]))
    return rows[int(scores.argmax())]


def demo() -> dict:
    """Run ``demo.py`` (what ``make demo`` runs after setup) and read its table: the dense start against the
    sparsified files, each validated in its runtime."""
    seconds = run_command(["demo.py"])
    rows = read_results(ROOT / "runs" / "train" / "demo")
    comparison = json.loads((ROOT / "runs" / "demo" / "demo" / "comparison.json").read_text(encoding="utf-8"))
    return {"seconds": seconds, "epochs": len(rows), "phase": rows[-1]["phase"], "rows": comparison}


def runtime(quick: bool, data: str) -> dict:
    """Speed of dense / pruned / pruned+INT8 ONNX files in each installed runtime (utils/runtime_benchmark.py)."""
    settings = runtime_benchmark.Settings.quick() if quick else runtime_benchmark.Settings()
    settings.data = data
    return runtime_benchmark.run_section(settings, BENCH_DIR)


RESULTS = ROOT / "benchmarks.json"  # tracked beside BENCHMARKS.md: a new machine starts from the earlier sections
# Each section of BENCHMARKS.md starts with one of these headings; a run that does not measure a section keeps its text.
SECTION_HEADINGS = {"throughput": "## Training and validation throughput", "demo": "## The demo",
                    "accuracy": "## Dense vs pruned", "scratch": "## Same budget from scratch",
                    "runtime": "## Deployment speed",
                    "notes": "## Notes"}  # prose no command writes: kept as it is by every run


def machine() -> str:
    """This machine as BENCHMARKS.md names it for each section it measures."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, flags: {cpu_flags()}; {gpu}"


def versions() -> str:
    import onnxruntime
    import sparseml

    return (f"Python {platform.python_version()}, torch {torch.__version__}, sparseml {sparseml.__version__}, "
            f"onnxruntime {onnxruntime.__version__}")


def kept_sections(text: str) -> dict[str, list[str]]:
    """The lines of each section of an earlier BENCHMARKS.md, by section name (heading to the next ``## ``)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            name = next((key for key, heading in SECTION_HEADINGS.items() if line.startswith(heading)), None)
            current = sections.setdefault(name, []) if name else None
        if current is not None:
            current.append(line)
    return sections


def write_markdown(results: dict, path: Path = ROOT / "BENCHMARKS.md") -> Path:
    """BENCHMARKS.md from ``results`` (saved to benchmarks.json); sections this run did not measure keep their text
    from the earlier file, with the machine and command that measured them."""
    earlier = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(render_markdown(results, kept_sections(earlier)), encoding="utf-8")
    RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def render_markdown(results: dict, kept: dict[str, list[str]] | None = None) -> str:
    """The text of BENCHMARKS.md: one section per benchmark, each under a line that names its command, date, machine
    and versions. Sections absent from ``results`` are taken from ``kept`` (an earlier file's, see kept_sections)."""
    kept = kept or {}
    lines = ["# Benchmarks", "",
             "Each section names the command that measured it, when, and on which machine: a run rewrites only the "
             "sections it measures, so sections can come from different machines (compare ratios within a section, "
             "not absolute times across them). The results behind the sections are in benchmarks.json.", "",
             "Sections measured before 2026-12-04 scored mAP with the earlier val.py, which gave a label to the "
             "detection of best IoU rather than the most confident one and sampled AP the COCO way; it read lower "
             "than Ultralytics' val on the same predictions (by 14% mAP@0.5 on one Ultralytics-trained yolov5n). "
             "Sections measured since print what Ultralytics' val prints. The older sections have not been "
             "re-measured yet (their checkpoints were not kept): compare their ratios, not their mAPs with newer "
             "ones.", ""]
    sections: dict[str, list[str]] = {}
    if "throughput" in results:
        sections["throughput"] = [
            "## Training and validation throughput (random data, batch as shown, median of steps)", "",
            "| model | imgsz | batch | train images/s | val images/s (forward + NMS) |", "|---|---|---|---|---|",
            *[f"| {r['model']} | {r['imgsz']} | {r['batch']} | {r['train_images_per_s']} | {r['val_images_per_s']} |"
              for r in results["throughput"]], ""]
    if "demo" in results:
        d = results["demo"]
        sections["demo"] = demo_markdown(d) if "rows" in d else [  # "rows": the demo that starts from a trained model
            "## The demo (`make demo` after setup: `python demo.py`)", "",
            f"{d['seconds'] / 60:.1f} min for train ({d['epochs']} epochs) + val + export + detect. Final model "
            f"({d['phase']}, {d['sparsity']:.1%} of conv weights zero): mAP@0.5 {d['map50']:.3f}, mAP@0.5:0.95 "
            f"{d['map']:.3f} on the built-in validation images. A few minutes of CPU training from scratch shows the "
            "pipeline, not the accuracy a longer run reaches (see below).", ""]
    if results.get("accuracy", {}).get("protocol") == 2:  # earlier layouts: their text is kept instead
        sections["accuracy"] = accuracy_markdown(results["accuracy"])
        for attempt in results.get("accuracy_attempts", {}).values():
            sections["accuracy"] += attempt_markdown(attempt)
    if "scratch" in results:
        sections["scratch"] = scratch_markdown(results["scratch"])
    if isinstance(results.get("runtime"), dict):  # older results.json files hold a list: skipped
        from utils.runtime_benchmark import markdown

        sections["runtime"] = markdown(results["runtime"])
    commands = results.get("commands", {})
    for name in SECTION_HEADINGS:
        if name in sections:
            run = {"command": "python benchmarks.py", "date": "date unknown", "machine": "an unrecorded machine",
                   "versions": "versions unrecorded", **commands.get(name, {})}
            measured = f"Measured by `{run['command']}`, {run['date']}, on {run['machine']} ({run['versions']})."
            heading, *rest = sections[name]
            lines += [heading, "", measured, *rest]
        elif name in kept:
            lines += kept[name]
    return "\n".join(lines).rstrip("\n") + "\n"


def demo_markdown(d: dict) -> list[str]:
    """The demo's section: its time and its closing table (dense start against the sparsified files)."""
    lines = ["## The demo (`make demo` after setup: `python demo.py`)", "",
             f"{d['seconds'] / 60:.1f} min from the shipped dense yolov5n (`weights/yolov5n-shapes.pt`, the accuracy "
             f"protocol's start): export, a {d['epochs']}-epoch pruned_quant fine-tune distilled from it, export, "
             "validation of each file in its runtime (`data/shapes_tiny.yaml`, 160 px), detection. Its closing table:",
             "", "| model | mAP@0.5 | mAP@0.5:0.95 | ms per image (batch 1) | speed vs dense | file MB "
             "| conv weights zero |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['mAP@0.5']:.3f} | {r['mAP@0.5:0.95']:.3f} | {r['ms']:.2f} | "
              f"{d['rows'][0]['ms'] / r['ms']:.2f}x | {r['MB']:.1f} | {r['sparsity']:.0%} |" for r in d["rows"]]
    return [*lines, ""]


def accuracy_markdown(a: dict) -> list[str]:
    """The accuracy protocol's section: how the dense start was trained and whether it converged, then the table."""
    c = a["convergence"]
    verdict = ("converged: under the protocol's 1%" if c["converged"]
               else "NOT converged: the protocol asks for under 1%, so recoveries below overstate the recipe")
    control_verdict = ("which confirms it" if a["control_rise"] <= CONVERGENCE_RISE
                       else "more than 1%: the start had not converged")
    args = ", ".join(f"{k} {v}" for k, v in a["finetune_args"].items())
    reused = "; a finished run of the same settings, reused" if a.get("dense_reused") else ""
    control_reused = " (reused)" if a.get("control_reused") else ""
    start, baseline = a["start_map"], a["baseline_map"]
    lines = [f"## Dense vs pruned + quantized: the accuracy protocol (yolov5n, built-in shapes data: `{a['data']}`, "
             f"{a['imgsz']} px)", "",
             f"The start: dense yolov5n, {a['dense_epochs']} epochs from scratch (AdamW, `data/hyps/hyp.short.yaml`, "
             f"YOLOv5's learning rate falling linearly to {c['final_lr']:.2g}; {a['dense_minutes']:.0f} min{reused}), "
             f"best epoch {a['dense_best_epoch']}: mAP@0.5:0.95 {start:.3f}. Over its last {c['window']} epochs its "
             f"best mAP@0.5:0.95 rose {c['rise']:.2%} ({c['best_before_window']:.3f} to {c['best']:.3f}): "
             f"{verdict}. Curve: [{Path(a['curve']).name}]({a['curve']}).", "",
             f"Fine-tunes of {a['finetune_epochs']} epochs from the start with AdamW and the learning-rate schedule of "
             f"`{FINETUNE_RECIPE}` ({args}; each recipe takes the variables it defines). The control (that schedule, "
             f"dense, no quantization{control_reused}) reached {a['control_map']:.3f}, {a['control_rise']:+.1%} "
             f"over the start, {control_verdict}. Teacher: distilling from the start (`--teacher-weights`). "
             f"Recovery = mAP@0.5:0.95 / the better of the start and the control (here the {a['baseline']}: "
             f"{baseline:.3f}). Sparse rows: the best epoch of the run's final phase.", "",
             "| model | recipe | teacher | mAP@0.5 | mAP@0.5:0.95 | conv weight sparsity | recovery (mAP@0.5:0.95) "
             "| minutes (per phase) |", "|---|---|---|---|---|---|---|---|",
             f"| dense (the start) | | | {a['start_map50']:.3f} | {start:.3f} | 0 | {start / baseline:.1%} | "
             f"{a['dense_minutes']:.0f} |",
             f"| start + fine-tune (control) | | | {a['control_map50']:.3f} | {a['control_map']:.3f} | 0 | "
             f"{a['control_map'] / baseline:.1%} | {a['control_minutes']:.0f} |"]
    for r in a["sparse"]:
        what = f"`{r['recipe']}`" + (f" `{r['recipe_args']}`" if r["recipe_args"] else "")
        what += f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| {r['name']}{' *' if r.get('kept_from') else ''} | {what} | "
                     f"{'the start' if r['teacher'] else ''} | {r['map50']:.3f} | {r['map']:.3f} | "
                     f"{r['sparsity']:.3f} | {r['recovery']:.1%} | {r['minutes']:.0f} ({r['phase_minutes']}) |")
    origins = sorted({r["kept_from"] for r in a["sparse"] if r.get("kept_from")})
    if origins:
        lines += ["", "\\* trained by an earlier run of the section with the same dense start: "
                  + "; ".join(origins) + "."]
    return [*lines, ""]


def attempt_markdown(a: dict) -> list[str]:
    """An attempt at the protocol's target with a longer fine-tune: its command, its own control and its rows,
    recovery against the better of the start and that control."""
    changed = ", ".join(f"{k} {v}" for k, v in a.get("overrides", {}).items())
    lines = [f"### Attempt {a.get('attempt', '')}: fine-tunes of {a['finetune_epochs']} epochs"
             + (f", {changed}" if changed else ""), "",
             f"Measured by `{a['command']}`, {a['date']}, on {a['machine']}. The same start; pruning ends at epoch "
             f"{a['finetune_args'].get('pruning_end_epoch')}, the other arguments as above. Control: "
             f"{a['control_map']:.3f} ({a['control_rise']:+.1%} over the start); recovery against the "
             f"{a['baseline']} ({a['baseline_map']:.3f}).", "",
             "| model | mAP@0.5 | mAP@0.5:0.95 | conv weight sparsity | recovery (mAP@0.5:0.95) | minutes |",
             "|---|---|---|---|---|---|",
             f"| control | {a['control_map50']:.3f} | {a['control_map']:.3f} | 0 | "
             f"{a['control_map'] / a['baseline_map']:.1%} | {a['control_minutes']:.0f} |"]
    lines += [f"| {r['name']} | {r['map50']:.3f} | {r['map']:.3f} | {r['sparsity']:.3f} | {r['recovery']:.1%} | "
              f"{r['minutes']:.0f} |" for r in a["sparse"]]
    return [*lines, ""]


def same_epochs(dense_rows: list[dict], sparse_rows: list[dict]) -> int:
    """How many first epochs of the two runs validated to the same mAP@0.5:0.95 (the epochs before the recipe's
    first modifier: equal when training is deterministic, which shows that only the recipe differs)."""
    count = 0
    for dense, sparse in zip(dense_rows, sparse_rows):
        if dense["metrics/mAP_0.5:0.95"] != sparse["metrics/mAP_0.5:0.95"]:
            break
        count += 1
    return count


def scratch_markdown(r: dict) -> list[str]:
    """The scratch section: both runs, the recovery, and both mAP curves at a few epochs."""
    starts = ", ".join(f"{phase} from epoch {epoch}" for phase, epoch in sorted(r["phase_starts"].items(),
                                                                               key=lambda item: item[1]))
    sparsities = ", ".join(f"{k} {v}" for k, v in r["sparsity_args"].items())
    reused = {True: " (reused)", False: ""}
    lines = [f"## Same budget from scratch: dense vs pruned + quantized (yolov5n, built-in shapes data: "
             f"`{r['data']}`, {r['imgsz']} px)", "",
             f"Both runs: `python train.py {' '.join(a if a else repr(a) for a in DENSE_ARGS)} --data {r['data']} "
             f"--imgsz {r['imgsz']} --batch-size {r['batch']}`, {r['epochs']} epochs under YOLOv5's learning-rate "
             f"schedule and warm-up. The sparse run adds `--recipe {r['recipe']}` ({sparsities}; phases: {starts}), "
             "which has no learning-rate modifiers, so the two runs differ only in the pruning and the QAT (their "
             f"first {r['same_epochs']} epochs validated to the same mAP, digit for digit). Recovery = sparse "
             "mAP@0.5:0.95 / dense mAP@0.5:0.95, each at its best epoch (the sparse run's among its final phase: "
             f"`best_{r['sparse_phase']}.pt`).", "",
             "| model | mAP@0.5 | mAP@0.5:0.95 | conv weight sparsity | recovery (mAP@0.5:0.95) | best epoch | "
             "minutes (per phase) |", "|---|---|---|---|---|---|---|",
             f"| dense{reused[bool(r['dense_reused'])]} | {r['dense_map50']:.3f} | {r['dense_map']:.3f} | 0 | 100% | "
             f"{r['dense_best_epoch']} | {r['dense_minutes']:.0f} |",
             f"| pruned_quant_scratch{reused[bool(r['sparse_reused'])]} | {r['sparse_map50']:.3f} | "
             f"{r['sparse_map']:.3f} | {r['sparsity']:.3f} | {100 * r['recovery']:.1f}% | {r['sparse_best_epoch']} | "
             f"{r['sparse_minutes']:.0f} ({r['phase_minutes']}) |", "",
             *(["(reused): a finished run of the same settings in the run folder, not trained again.", ""]
               if r["dense_reused"] or r["sparse_reused"] else []),
             "mAP@0.5:0.95 of both runs during training (validation after each epoch):", "",
             "| epoch | dense | pruned_quant_scratch | its phase | its conv weight sparsity |", "|---|---|---|---|---|",
             *[f"| {p['epoch']} | {p['dense']:.3f} | {p['sparse']:.3f} | {p['phase']} | {p['sparsity']:.3f} |"
               for p in r["curve"]], ""]
    return lines


def keep_other_variants(previous: dict | None, result: dict, origin: str) -> dict:
    """``result`` plus the sparse rows of ``previous`` (an earlier accuracy section, run by ``origin``) for variants
    this run did not train, when both start from the same dense stages (same data, sizes, epochs, fine-tune
    arguments and dense results): ``--variants X`` then adds X to the table instead of replacing it."""
    same = ("data", "imgsz", "dense_epochs", "finetune_epochs", "finetune_args", "start_map", "control_map")
    if not previous or any(previous.get(key) != result.get(key) for key in same):
        return result
    names = {row["name"] for row in result["sparse"]}
    kept = [{**row, "kept_from": row.get("kept_from") or origin} for row in previous.get("sparse", [])
            if row["name"] not in names]
    return {**result, "sparse": kept + result["sparse"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["throughput", "demo", "accuracy", "scratch", "runtime"], action="append")
    parser.add_argument("--epochs", type=int, default=PROTOCOL_EPOCHS,
                        help="accuracy and scratch: epochs from scratch (dense, and the scratch section's sparse run)")
    parser.add_argument("--finetune-epochs", type=int, default=PROTOCOL_FINETUNE_EPOCHS,
                        help="accuracy: epochs of each fine-tune (the control and the recipe runs)")
    parser.add_argument("--finetune-args", default="",
                        help="accuracy: JSON replacing fine-tune learning-rate arguments (an attempt; needs --attempt)")
    parser.add_argument("--attempt", default="",
                        help="accuracy: name of an attempt with other fine-tune settings (its own runs and table)")
    parser.add_argument("--project", type=Path, default=BENCH_DIR / "protocol",
                        help="accuracy: run folder; finished runs of the same settings in it are reused, "
                             "interrupted ones resumed")
    parser.add_argument("--variants", nargs="+", choices=sorted(SPARSE_VARIANTS), default=list(DEFAULT_VARIANTS),
                        help="accuracy: sparse fine-tunes to run")
    parser.add_argument("--imgsz", type=int, default=PROTOCOL_IMGSZ)
    parser.add_argument("--data", default=PROTOCOL_DATA, help="dataset of the accuracy and scratch benchmarks")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per throughput measurement")
    parser.add_argument("--quick", action="store_true", help="runtime section: fewer runs, mAP at 320 only (minutes)")
    opt = parser.parse_args()
    sections = opt.only or ["throughput", "demo", "accuracy", "scratch", "runtime"]
    command = ("python benchmarks.py " + " ".join(sys.argv[1:])).strip()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    if "throughput" in sections:
        results["throughput"] = [throughput(f"yolov5{size}.yaml", imgsz, 8, opt.steps)
                                 for size in ("n", "s") for imgsz in (320, 640)]
    if "demo" in sections:
        results["demo"] = demo()
    if "accuracy" in sections:
        overrides = json.loads(opt.finetune_args) if opt.finetune_args else {}
        attempt = attempt_name(opt.finetune_epochs, opt.attempt)
        if overrides and not attempt:
            parser.error("--finetune-args changes the protocol: name the attempt with --attempt NAME")
        result = accuracy(opt.epochs, opt.finetune_epochs, opt.imgsz, 32, opt.data, tuple(opt.variants),
                          opt.project, finetune_overrides=overrides, attempt=attempt)
        if not attempt:
            earlier = results.get("commands", {}).get("accuracy", {})
            origin = f"`{earlier.get('command', 'python benchmarks.py')}`, {earlier.get('date', 'date unknown')}"
            results["accuracy"] = keep_other_variants(results.get("accuracy"), result, origin)
        else:  # an attempt with other fine-tune settings: a table of its own below the protocol's
            attempts = results.setdefault("accuracy_attempts", {})
            previous = attempts.get(attempt)
            origin = f"`{previous['command']}`, {previous['date']}" if previous else ""
            attempts[attempt] = {**keep_other_variants(previous, result, origin), "attempt": attempt,
                                 "overrides": overrides, "command": command, "date": date, "machine": machine()}
    if "scratch" in sections:
        results["scratch"] = scratch(opt.epochs, opt.imgsz, 32, opt.data, opt.project)
    if "runtime" in sections:
        results["runtime"] = runtime(opt.quick, results.get("accuracy", {}).get("data", opt.data))
    for section in sections:
        if section == "accuracy" and attempt_name(opt.finetune_epochs, opt.attempt):
            continue  # the attempt carries its own command; the protocol's section keeps the one that measured it
        results.setdefault("commands", {})[section] = {"command": command, "date": date,
                                                       "machine": machine(), "versions": versions()}
    path = write_markdown(results)
    print(path.read_text())


if __name__ == "__main__":
    main()
