"""The accuracy protocol: a dense yolov5n trained to convergence, then dense (the control) and sparse fine-tunes of
it; recovery = sparse mAP@0.5:0.95 / max(start, control). See BENCHMARKS.md's accuracy section."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from benchmarks.runs import (
    BENCH_DIR,
    ROOT,
    benchmark_args,
    best_of,
    metrics_of,
    phase_minutes,
    read_results,
    run_command,
    run_minutes,
    train_stage,
)
from benchmarks.runtime import BLOCK4
from utils.metrics import fitness

# Sparse fine-tunes of the dense model. All but relu_quant use recipes/yolov5n.pruned_quant.yaml scaled to
# --finetune-epochs, with AdamW (the dense model's optimizer) at the learning rates below; "teacher": distil from the
# dense model (--teacher-weights, the recipe's PerLayerDistillationModifier).
# "even": the same total sparsity without the heavy/inner split (the two-group layout of the yolov5s recipes).
# "block4": 4-block masks and Detect quantized too (BLOCK4): the layout DeepSparse runs fastest.
SPARSE_VARIANTS = {
    "pruned_quant": {"recipe_args": {}, "teacher": False},
    "pruned_quant_distill": {"recipe_args": {}, "teacher": True},
    "pruned_quant_distill_even": {"recipe_args": {"final_sparsity_heavy": 0.79, "final_sparsity_inner": 0.79,
                                                  "final_sparsity_sensitive": 0.6}, "teacher": True},
    # The speed-first file of the runtime section (its trained yolov5n 4-block rows come from this run).
    "pruned_quant_block4": {"recipe_args": BLOCK4, "teacher": True},
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
    "relu_block4_quant": {"recipe_args": {**BLOCK4, "final_sparsity_heavy": 0.88,
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
SPARSE_VARIANTS.update({
    # The pruned_quant recipe with per-layer sparsities instead of its three layer groups: sensitivity.py measures
    # what each conv layer of the start loses when pruned alone, and lays out SENSITIVITY_LEVELS to reach
    # SENSITIVITY_TARGET of all conv weights where it costs least (the recipe is written beside the runs).
    "pruned_quant_distill_sens": {"recipe_args": {}, "teacher": True, "sensitivity": True,
                                  "note": "per-layer sparsities from `sensitivity.py` on the start"},
    # The same layout in recipes/yolov5n.pruned.yaml (no QAT): what its pruning costs alone.
    "pruned_distill_sens": {"recipe_args": {}, "teacher": True, "sensitivity": True,
                            "recipe": "recipes/yolov5n.pruned.yaml",
                            "note": "per-layer sparsities from `sensitivity.py` on the start"},
    # The speed-first file (relu_block4_quant) with per-layer sparsities instead of its groups, at its ~80%: the
    # layout comes from the unstructured analysis of the SiLU start; the fine-tune prunes those layers in 4-blocks.
    "relu_block4_quant_sens": {"recipe_args": BLOCK4, "teacher": True, "cfg": "yolov5n-relu.yaml",
                               "sensitivity": True, "target": 0.8,
                               "note": "--cfg yolov5n-relu.yaml, 4-block, per-layer sparsities from `sensitivity.py` "
                                       "(unstructured, on the SiLU start), Detect INT8"},
})
# At least the group layout's 76.9% of conv weights, so the two layouts compare at the same sparsity or above it.
SENSITIVITY_TARGET, SENSITIVITY_LEVELS = 0.77, (0.0, 0.3, 0.5, 0.7, 0.85, 0.95)
DEFAULT_VARIANTS = ("pruned_quant_distill", "pruned_quant_distill_sens", "relu_block4_quant",
                    "relu_block4_quant_sens", "pruned_distill", "pruned_distill_sens", "quant")
FINETUNE_RECIPE = "recipes/yolov5n.pruned_quant.yaml"
# AdamW at two thirds of the dense run's lr0 (0.003), decaying to a quarter of that; QAT at 1e-4 -> 1e-6. One-off
# runs kept more mAP with it than with 0.001 -> 0.0001 (recipes/README.md); the control gets the same schedule.
# The biases warm up from init_lr, not from the recipes' 0.1 (an SGD value from scratch): AdamW steps ~lr per step
# whatever the gradient: with 0.1 the pruned_quant_distill fine-tune's first epoch fell from mAP@0.5:0.95 0.483 to
# 0.289, with 0.002 to 0.311 (recipes/README.md; a fresh AdamW state perturbs a trained model either way).
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
# Epochs of each round of dense training at the fine-tune's schedule (the control's recipe) between the run from
# scratch and the start (0: the run from scratch is the start). Rounds follow each other until one gains less than
# CONVERGENCE_RISE over the round before it: that round before is the start, a dense fine-tune no longer improves it.
# 100, not 0 (2026-12-07): the run from scratch converged on an Intel Xeon (+0.65% over its last 30 epochs) but not
# on an AMD EPYC (+1.02%, and 100 more dense epochs gained +1.4%), so the start no longer depends on the CPU's luck.
PROTOCOL_CONTINUE_EPOCHS = 100
MAX_CONTINUE_ROUNDS = 6
CONVERGENCE_WINDOW, CONVERGENCE_RISE = 30, 0.01
DENSE_CURVE = ROOT / "BENCHMARKS_dense_curve.png"  # the accuracy section's convergence plot, beside BENCHMARKS.md
DENSE_ARGS = ["--cfg", "yolov5n.yaml", "--weights", "", "--optimizer", "AdamW", "--hyp", "data/hyps/hyp.short.yaml"]
# The fine-tunes (control, rounds, sparse runs) train with the dense run's hyperparameters: with train.py's default
# (hyp.scratch-low: mosaic 1.0, scale 0.5) instead, as every attempt before 2026-12-06 did, the dense control gained
# from the change of augmentation, which read as a start that had not converged (+2.2% in 30 epochs at 160 px).
PROTOCOL_FINETUNE_HYP = DENSE_ARGS[DENSE_ARGS.index("--hyp") + 1]
# What the fine-tunes of results recorded without "finetune_hyp" trained with (train.py's default --hyp).
EARLIER_FINETUNE_HYP = "data/hyps/hyp.scratch-low.yaml"
# The protocol's dense run follows its whole schedule down to the low learning rate that convergence is judged at
# (train.py's default patience of 100 ended a 700-epoch run at 128 px at epoch 577, its learning rate still 0.00055).
NO_EARLY_STOP = ["--patience", "0"]
# The scratch section: the dense run's command plus this recipe (no learning-rate modifiers, so YOLOv5's schedule
# and warm-up run exactly as in the dense run), at the fine-tunes' sparsities (SPARSITY_ARGS).
SCRATCH_RECIPE = "recipes/yolov5n.pruned_quant_scratch.yaml"
SCRATCH_CURVE_POINTS = 6  # epochs at which the section lists both runs' mAP@0.5:0.95 (where the gap opens)

# The control: the same fine-tune (epochs, optimizer, learning-rate modifiers of the pruned_quant recipe) with no
# pruning, quantization or distillation, so that the dense model gets every epoch the sparse ones get.
CONTROL_RECIPE = ROOT / "recipes" / "yolov5n.dense_finetune.yaml"


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
    command = ["train.py", *DENSE_ARGS, *NO_EARLY_STOP, "--epochs", str(epochs), "--name", "dense", *common]
    expected = {**scratch_settings(common), "epochs": epochs}
    return run_dir, train_stage(run_dir, epochs, expected, command, f"dense, {epochs} epochs")


def recipe_run(project: Path, name: str, start: Path, epochs: int, common: list[str], recipe: Path,
               recipe_args: dict, hyp: str = PROTOCOL_FINETUNE_HYP) -> tuple[Path, bool]:
    """A fine-tune of ``start`` for ``epochs`` epochs by ``recipe`` (AdamW, hyperparameters ``hyp``), or a finished
    run of the same settings in ``project/name`` (start, recipe, recipe variables, hyp, size, data), which is reused.
    Returns the folder and whether it was reused. Used for the dense stages (the continued dense model, the
    control), whose recipes do not change."""
    run_dir = project / name
    expected = {"weights": str(start), "sparsification_recipe": str(recipe), "recipe_args": recipe_args,
                "optimizer": "AdamW", "hyp": hyp, "imgsz": int(common[common.index("--imgsz") + 1]),
                "data": common[common.index("--data") + 1]}
    command = ["train.py", "--weights", str(start), "--optimizer", "AdamW", "--hyp", hyp, *common,
               "--sparsification-recipe", str(recipe), "--recipe-args", json.dumps(recipe_args), "--name", name]
    return run_dir, train_stage(run_dir, epochs, expected, command, f"{epochs} epochs from {start}")


def recipe_variables(recipe: str | Path) -> set[str]:
    """The names a recipe file defines at its top level (the variables --recipe-args may set)."""
    text = (ROOT / recipe).read_text(encoding="utf-8") if not Path(recipe).is_absolute() else Path(recipe).read_text()
    return set(re.findall(r"^([A-Za-z_]\w*):", text, flags=re.MULTILINE))


def variant_command(name: str, start: Path, common: list[str], lr_args: dict, sparse_args: dict,
                    run_name: str | None = None, hyp: str = PROTOCOL_FINETUNE_HYP) -> list[str]:
    """train.py arguments of the fine-tune ``name`` (SPARSE_VARIANTS) from ``start``, into the run folder
    ``run_name`` (default ``name``): its recipe (the pruned_quant one by default) with those of the benchmark's
    learning-rate and pruning variables that the recipe defines, and the hyperparameters ``hyp``."""
    variant = SPARSE_VARIANTS[name]
    recipe = variant.get("recipe", FINETUNE_RECIPE)
    if variant.get("sensitivity"):  # the variant's recipe is the template of the layout
        recipe = str(pinned_layout(sensitivity_recipe(Path(common[common.index("--project") + 1]), start, recipe,
                                                      variant.get("target", SENSITIVITY_TARGET))))
    defined = recipe_variables(recipe)
    recipe_args = {**{k: v for k, v in {**lr_args, **sparse_args}.items() if k in defined}, **variant["recipe_args"]}
    teacher = ["--teacher-weights", str(start)] if variant["teacher"] else []
    cfg = ["--cfg", variant["cfg"]] if variant.get("cfg") else []
    return ["train.py", "--weights", str(start), "--optimizer", "AdamW", "--hyp", hyp, *common, *cfg,
            "--sparsification-recipe", recipe, "--recipe-args", json.dumps(recipe_args), *teacher,
            "--name", run_name or name]


def sensitivity_recipe(project: Path, start: Path, template: str = FINETUNE_RECIPE,
                       target: float = SENSITIVITY_TARGET) -> Path:
    """Where the sensitivity layout of ``start`` (``project/<run>/weights/best.pt``) in ``template`` is written: one
    folder per start (and target other than SENSITIVITY_TARGET), one recipe per template."""
    folder = f"sensitivity_{start.parent.parent.name}" + ("" if target == SENSITIVITY_TARGET else f"_t{target:g}")
    return project / folder / f"{Path(template).stem}.sensitivity.yaml"


def pinned_layout(recipe: Path) -> Path:
    """A copy of the layout ``recipe`` named by its content less comments (``<name>.<sha256[:8]>.yaml``), which the
    fine-tunes train with: their opt.yaml then names the layout itself, so a run of an earlier layout (other levels,
    target or layout rule, same file name) is never taken for a finished run of this one."""
    text = recipe.read_bytes()
    content = b"\n".join(line for line in text.splitlines() if not line.lstrip().startswith(b"#"))
    pinned = recipe.with_name(f"{recipe.stem}.{hashlib.sha256(content).hexdigest()[:8]}.yaml")
    if not pinned.is_file():
        pinned.write_bytes(text)
    return pinned


def sensitivity_stage(project: Path, start: Path, common: list[str], template: str = FINETUNE_RECIPE,
                      target: float = SENSITIVITY_TARGET) -> Path:
    """Run sensitivity.py on ``start`` with ``template`` and ``target``, or reuse its finished output for the same
    start, data, size, levels and target; an analysis of the same start for other levels, template or target lends its
    measurements (only missing levels are measured). Returns the recipe."""
    recipe = sensitivity_recipe(project, start, template, target)
    data, imgsz = common[common.index("--data") + 1], int(common[common.index("--imgsz") + 1])
    wanted = {"weights": str(start), "data": data, "imgsz": imgsz, "levels": list(SENSITIVITY_LEVELS),
              "target": target}

    def saved(record: Path) -> dict:
        return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}

    record = recipe.parent / "sensitivity.json"
    if recipe.is_file() and all(saved(record).get(key) == value for key, value in wanted.items()):
        print(f"reusing the sensitivity analysis {record} (same start and settings)", flush=True)
        return recipe
    lender = next((r for r in (record, sensitivity_recipe(project, start).parent / "sensitivity.json")
                   if all(saved(r).get(key) == wanted[key] for key in ("weights", "data", "imgsz"))), None)
    run_command(["sensitivity.py", "--weights", str(start), "--data", data, "--imgsz", str(imgsz), "--levels",
                 *map(str, SENSITIVITY_LEVELS), "--target", str(target), "--recipe", template,
                 "--project", str(recipe.parent.parent), "--name", recipe.parent.name, "--exist-ok",
                 *(["--reuse", str(lender)] if lender else [])])
    return recipe


def variant_run(project: Path, name: str, start: Path, epochs: int, common: list[str], lr_args: dict,
                sparse_args: dict, run_name: str | None = None, hyp: str = PROTOCOL_FINETUNE_HYP) -> bool:
    """Train the fine-tune ``name``, or reuse / resume a run of the same command in ``project/run_name``."""
    run_name = run_name or name
    command = variant_command(name, start, common, lr_args, sparse_args, run_name, hyp)

    def flag(option: str) -> str | None:
        return command[command.index(option) + 1] if option in command else None

    expected = {"weights": str(start), "sparsification_recipe": flag("--sparsification-recipe"),
                "recipe_args": json.loads(flag("--recipe-args")), "optimizer": "AdamW", "hyp": hyp,
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


def plot_dense_curve(rows: list[dict], path: Path, window: int = CONVERGENCE_WINDOW,
                     rounds: list[list[dict]] = ()) -> Path:
    """mAP@0.5 and mAP@0.5:0.95 per epoch of the dense run (and of its continued ``rounds`` after it), the last
    ``window`` epochs of the run from scratch shaded, the learning rate on a second axis: the picture that shows
    whether the dense side had converged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scratch_epochs = len(rows)
    boundaries = []
    for round_rows in rounds:
        boundaries.append(len(rows))
        rows = [*rows, *({**r, "epoch": int(r["epoch"]) + len(rows)} for r in round_rows)]
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(8, 4.5), tight_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(epochs, [float(r["metrics/mAP_0.5"]) for r in rows], label="mAP@0.5")
    ax.plot(epochs, [float(r["metrics/mAP_0.5:0.95"]) for r in rows], label="mAP@0.5:0.95")
    for number, first in enumerate(boundaries, 1):
        ax.axvline(first, color="grey", linewidth=0.8)
        ax.annotate(f" round {number}", (first, 0.95), fontsize=8)
    if scratch_epochs > window:
        ax.axvspan(epochs[scratch_epochs - window], epochs[scratch_epochs - 1], color="grey", alpha=0.2,
                   label=f"last {window} epochs from scratch")
    ax.set(xlabel="epoch", ylabel="mAP (val)", ylim=(0, 1), title="Dense yolov5n: the start of every fine-tune")
    lr_axis = ax.twinx()
    lr_axis.plot(epochs, [float(r.get("x/lr1", 0.0)) for r in rows], color="black", linewidth=0.8, linestyle=":",
                 label="learning rate")
    lr_axis.set_ylabel("learning rate")
    handles = ax.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right")
    fig.savefig(path, dpi=120)
    return path


def attempt_name(finetune_epochs: int, attempt: str | None = None,
                 continue_epochs: int = PROTOCOL_CONTINUE_EPOCHS) -> str:
    """The name of a run of the protocol with other settings ("" for the protocol itself): ``attempt`` when given,
    else ``continued<N>`` for another continued start and ``e<epochs>`` for another fine-tune length, joined by
    "_". Its runs train in folders of their own (``control_e60``, ...), so an attempt never replaces the protocol's
    runs."""
    parts = [f"continued{continue_epochs}" if continue_epochs != PROTOCOL_CONTINUE_EPOCHS else "",
             f"e{finetune_epochs}" if finetune_epochs != PROTOCOL_FINETUNE_EPOCHS else ""]
    return attempt or "_".join(part for part in parts if part)


def round_folder(continue_epochs: int, number: int, hyp: str = PROTOCOL_FINETUNE_HYP) -> str:
    """The run folder of continued round ``number`` (0: the run from scratch); rounds trained with other
    hyperparameters than the protocol's (an attempt's ``--finetune-hyp``) get folders of their own."""
    if number == 0:
        return "dense"
    other = "" if hyp == PROTOCOL_FINETUNE_HYP else f"_{Path(hyp).stem.replace('.', '_')}"
    return f"dense_continued_e{continue_epochs}{other}" + (f"_r{number}" if number > 1 else "")


def start_folder(continue_epochs: int = PROTOCOL_CONTINUE_EPOCHS, project: Path | None = None) -> str:
    """The run folder (in ``project``, the protocol's by default) whose best.pt starts the fine-tunes: the last round
    that the round after it improved by less than CONVERGENCE_RISE, as far as the rounds have run."""
    project = project or BENCH_DIR / "protocol"
    number = 0
    while continue_epochs and number < MAX_CONTINUE_ROUNDS:
        rise = round_rise(project / round_folder(continue_epochs, number), project / round_folder(continue_epochs,
                                                                                                    number + 1))
        if rise is None or rise < CONVERGENCE_RISE:
            break
        number += 1
    return round_folder(continue_epochs, number)


def round_rise(before: Path, after: Path) -> float | None:
    """How much the best mAP@0.5:0.95 of ``after`` (a finished round) exceeds that of ``before``, relative."""
    try:
        first, second = (float(best_of(read_results(d))["metrics/mAP_0.5:0.95"]) for d in (before, after))
    except (OSError, ValueError):
        return None
    return second / max(first, 1e-9) - 1


def continued_rounds(project: Path, epochs: int, common: list[str], recipe: Path,
                     hyp: str = PROTOCOL_FINETUNE_HYP) -> dict:
    """Rounds of ``epochs`` dense epochs at the fine-tune's schedule (the control's recipe), each from the best.pt of
    the one before, the first from the run from scratch, until a round gains less than CONVERGENCE_RISE (or after
    MAX_CONTINUE_ROUNDS). Finished rounds are reused. Returns the rounds, the start (the round before the last) and
    whether the last round confirmed it."""
    rounds, before = [], project / "dense"
    for number in range(1, MAX_CONTINUE_ROUNDS + 1):
        run_dir, reused = recipe_run(project, round_folder(epochs, number, hyp), before / "weights" / "best.pt", epochs,
                                     common, recipe, {"num_epochs": epochs, **FINETUNE_ARGS}, hyp)
        rise = round_rise(before, run_dir)
        best = best_of(read_results(run_dir))
        rounds.append({"number": number, "folder": run_dir.name, "map": float(best["metrics/mAP_0.5:0.95"]),
                       "map50": float(best["metrics/mAP_0.5"]), "rise": rise, "reused": reused,
                       "minutes": run_minutes(run_dir)})
        if rise < CONVERGENCE_RISE:
            break
        before = run_dir
    converged = rounds[-1]["rise"] < CONVERGENCE_RISE
    return {"epochs": epochs, "rounds": rounds, "converged": converged,
            "start": before.name if converged else rounds[-1]["folder"]}


def accuracy(epochs: int, finetune_epochs: int, imgsz: int, batch: int, data: str = PROTOCOL_DATA,
             variants: tuple[str, ...] = DEFAULT_VARIANTS, project: Path = BENCH_DIR / "protocol",
             curve: Path = DENSE_CURVE, finetune_overrides: dict | None = None, attempt: str = "",
             continue_epochs: int = PROTOCOL_CONTINUE_EPOCHS, finetune_hyp: str = PROTOCOL_FINETUNE_HYP) -> dict:
    """The accuracy protocol: dense yolov5n trained to convergence (checked, and plotted to ``curve``); from its
    best checkpoint (the start), the same fine-tune left dense (the control) and the recipe ``variants`` (see
    SPARSE_VARIANTS). Finished runs of the same settings in ``project`` are reused, interrupted ones resumed.

    Same budget: the control and each sparse run train ``finetune_epochs`` from the start with the same optimizer and
    learning-rate schedule. Recovery divides a sparse run's mAP@0.5:0.95 by the better of the start and the control;
    the control beating the start by more than CONVERGENCE_RISE would say the start had not converged.
    ``finetune_overrides`` replace FINETUNE_ARGS values (learning rates, QAT length) for an ``attempt``.
    ``continue_epochs``: the start is the dense model trained on in rounds of that many epochs at the fine-tune's
    schedule until a round gains under CONVERGENCE_RISE (``continued_rounds``). ``finetune_hyp``: the fine-tunes'
    hyperparameters (augmentation, loss gains; by default the dense run's).
    """
    project.mkdir(parents=True, exist_ok=True)
    common = benchmark_args(data, imgsz, batch, project)
    control_recipe = project / "control_recipe.yaml"
    control_recipe.write_text(CONTROL_RECIPE.read_text(encoding="utf-8"), encoding="utf-8")
    dense_dir, reused = dense_run(project, epochs, common)
    dense_rows = read_results(dense_dir)
    start_dir, continued = dense_dir, None
    from_scratch = best_of(dense_rows)
    if continue_epochs:
        continued = continued_rounds(project, continue_epochs, common, control_recipe, finetune_hyp)
        continued.update({"from_map": float(from_scratch["metrics/mAP_0.5:0.95"]),
                          "from_map50": float(from_scratch["metrics/mAP_0.5"]),
                          "minutes": sum(r["minutes"] for r in continued["rounds"]
                                         if r["folder"] != continued["rounds"][-1]["folder"] or
                                         not continued["converged"])})
        start_dir = project / continued["start"]
    dense = best_of(read_results(start_dir))
    plot_dense_curve(dense_rows, curve, rounds=[read_results(project / r["folder"])
                                                for r in (continued or {}).get("rounds", [])])
    start = start_dir / "weights" / "best.pt"
    lr_args = {"num_epochs": finetune_epochs, **FINETUNE_ARGS, **(finetune_overrides or {})}
    suffix = f"_{attempt}" if attempt else ""
    last_round = continued["rounds"][-1] if continued else None
    if (continued and continued["converged"] and finetune_epochs == continue_epochs
            and lr_args == {"num_epochs": continue_epochs, **FINETUNE_ARGS}):
        # the round that confirmed the start is the same fine-tune from it, left dense: the control, not run twice
        control_dir, control_reused = project / last_round["folder"], True
    else:
        control_dir, control_reused = recipe_run(project, f"control{suffix}", start, finetune_epochs, common,
                                                 control_recipe, lr_args, finetune_hyp)
    control = best_of(read_results(control_dir))
    start_map, control_map = float(dense["metrics/mAP_0.5:0.95"]), float(control["metrics/mAP_0.5:0.95"])
    baseline = max((dense, control), key=lambda r: float(fitness(metrics_of(r))[0]))
    sparse_args = {**lr_args, "pruning_end_epoch": round(PRUNING_END * finetune_epochs, 2), **SPARSITY_ARGS}
    result = {"protocol": 2, "data": data, "imgsz": imgsz, "dense_epochs": epochs, "finetune_epochs": finetune_epochs,
              "optimizer": "AdamW", "finetune_args": sparse_args, "finetune_hyp": finetune_hyp,
              "start_map50": float(dense["metrics/mAP_0.5"]), "start_map": start_map,
              "dense_best_epoch": int(from_scratch["epoch"]), "dense_minutes": run_minutes(dense_dir),
              "dense_reused": reused, "convergence": dense_convergence(dense_rows), "continued": continued,
              "curve": curve.relative_to(ROOT).as_posix() if curve.is_relative_to(ROOT) else str(curve),
              "control_map50": float(control["metrics/mAP_0.5"]), "control_map": control_map,
              "control_minutes": run_minutes(control_dir), "control_reused": control_reused,
              "control_rise": control_map / max(start_map, 1e-9) - 1,
              "baseline": "control" if baseline is control else "start",
              "baseline_map": float(baseline["metrics/mAP_0.5:0.95"]), "sparse": []}
    for name in variants:
        variant = SPARSE_VARIANTS[name]
        if variant.get("sensitivity"):
            sensitivity_stage(project, start, common, variant.get("recipe", FINETUNE_RECIPE),
                              variant.get("target", SENSITIVITY_TARGET))
        variant_run(project, name, start, finetune_epochs, common, lr_args, sparse_args, name + suffix,
                    finetune_hyp)
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
            "sparsity": float(sparse["conv_sparsity"]),
            "recovery": float(sparse["metrics/mAP_0.5:0.95"]) / max(result["baseline_map"], 1e-9),
            "minutes": minutes,
            "phase_minutes": phase_minutes(rows, minutes)})
    return result


def finetune_hyp_phrase(a: dict) -> str:
    """Which hyperparameters file the fine-tunes of result ``a`` trained with, and whether it is the dense run's."""
    hyp = a.get("finetune_hyp", EARLIER_FINETUNE_HYP)
    if hyp == PROTOCOL_FINETUNE_HYP:
        return f"`{hyp}` (the dense run's)"
    return f"`{hyp}` (not the dense run's `{PROTOCOL_FINETUNE_HYP}`: other augmentation)"


def accuracy_markdown(a: dict) -> list[str]:
    """The accuracy protocol's section: how the dense start was trained and whether it converged, then the table."""
    c, continued = a["convergence"], a.get("continued") or {}
    if c["converged"]:
        verdict = "converged: under the protocol's 1%"
    elif continued.get("converged"):
        verdict = "not under the protocol's 1% by itself, so it was trained on in rounds (below)"
    else:
        verdict = "NOT converged: the protocol asks for under 1%, so recoveries below overstate the recipe"
    lead = "The run from scratch" if continued.get("start", "dense") != "dense" else "The start"
    control_verdict = ("which confirms it" if a["control_rise"] <= CONVERGENCE_RISE
                       else "more than 1%: the start had not converged")
    args = ", ".join(f"{k} {v}" for k, v in a["finetune_args"].items())
    reused = "; a finished run of the same settings, reused" if a.get("dense_reused") else ""
    control_reused = " (reused)" if a.get("control_reused") else ""
    start, baseline = a["start_map"], a["baseline_map"]
    lines = [f"## Dense vs pruned + quantized: the accuracy protocol (yolov5n, built-in shapes data: `{a['data']}`, "
             f"{a['imgsz']} px)", "",
             f"{lead}: dense yolov5n, {a['dense_epochs']} epochs from scratch (AdamW, `data/hyps/hyp.short.yaml`, "
             f"YOLOv5's learning rate falling linearly to {c['final_lr']:.2g}; {a['dense_minutes']:.0f} min{reused}), "
             f"best epoch {a['dense_best_epoch']}: mAP@0.5:0.95 "
             f"{(a.get('continued') or {}).get('from_map', start):.3f}. Over its last {c['window']} epochs its "
             f"best mAP@0.5:0.95 rose {c['rise']:.2%} ({c['best_before_window']:.3f} to {c['best']:.3f}): "
             f"{verdict}. Curve: [{Path(a['curve']).name}]({a['curve']}).", "", *continued_markdown(a),
             f"Fine-tunes of {a['finetune_epochs']} epochs from the start with AdamW, hyperparameters "
             f"{finetune_hyp_phrase(a)} and the learning-rate schedule of "
             f"`{FINETUNE_RECIPE}` ({args}; each recipe takes the variables it defines). The control (that schedule, "
             f"dense, no quantization{control_reused}) reached {a['control_map']:.3f}, {a['control_rise']:+.1%} "
             f"over the start, {control_verdict}. Teacher: distilling from the start (`--teacher-weights`). "
             f"Recovery = mAP@0.5:0.95 / the better of the start and the control (here the {a['baseline']}: "
             f"{baseline:.3f}). Sparse rows: the best epoch of the run's final phase.", "",
             "| model | recipe | teacher | mAP@0.5 | mAP@0.5:0.95 | conv weight sparsity | recovery (mAP@0.5:0.95) "
             "| minutes (per phase) |", "|---|---|---|---|---|---|---|---|",
             f"| dense (the start) | | | {a['start_map50']:.3f} | {start:.3f} | 0 | {start / baseline:.1%} | "
             f"{a['dense_minutes'] + (a.get('continued') or {}).get('minutes', 0):.0f} |",
             f"| start + fine-tune (control) | | | {a['control_map50']:.3f} | {a['control_map']:.3f} | 0 | "
             f"{a['control_map'] / baseline:.1%} | {a['control_minutes']:.0f} |"]
    for r in a["sparse"]:
        what = f"`{r['recipe']}`" + (f" `{r['recipe_args']}`" if r["recipe_args"] else "")
        what += f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| {r['name']}{' *' if r.get('kept_from') else ''} | {what} | "
                     f"{'the start' if r['teacher'] else ''} | {r['map50']:.3f} | {r['map']:.3f} | "
                     f"{r['sparsity']:.3f} | {r['recovery']:.1%} | {r['minutes']:.0f} ({r['phase_minutes']}) |")
    return [*lines, *kept_footnote(a), ""]


def kept_footnote(a: dict) -> list[str]:
    """The footnote on rows marked ``*``: trained by an earlier run of the section (its command and date)."""
    origins = sorted({r["kept_from"] for r in a["sparse"] if r.get("kept_from")})
    return ["", "\\* trained by an earlier run of the section with the same dense start: " + "; ".join(origins)
            + "."] if origins else []


def attempt_markdown(a: dict, protocol_section: dict | None = None) -> list[str]:
    """An attempt at the protocol's target with a longer fine-tune: its command, its own control and its rows,
    recovery against the better of the start and that control. ``protocol_section``: the protocol's results, whose
    start the attempt's is compared with."""
    changed = ", ".join(f"{k} {v}" for k, v in a.get("overrides", {}).items())
    own = own_start(a, protocol_section)
    start = ("The start: the dense run continued in rounds (below)" if a.get("continued")
             else own or "The same start")
    lines = [f"### Attempt {a.get('attempt', '')}: fine-tunes of {a['finetune_epochs']} epochs"
             + (f", {changed}" if changed else "")
             + (f", from a start continued in rounds of {a['continued']['epochs']} epochs" if a.get("continued")
                else ""), "",
             f"Measured by `{a['command']}`, {a['date']}, on {a['machine']}. {start}; pruning ends at epoch "
             f"{a['finetune_args'].get('pruning_end_epoch')}, hyperparameters {finetune_hyp_phrase(a)}, the other "
             f"arguments as above. Control: "
             f"{a['control_map']:.3f} ({a['control_rise']:+.1%} over the start); recovery against the "
             f"{a['baseline']} ({a['baseline_map']:.3f}).", "",
             *continued_markdown(a),
             "| model | mAP@0.5 | mAP@0.5:0.95 | conv weight sparsity | recovery (mAP@0.5:0.95) | minutes |",
             "|---|---|---|---|---|---|",
             *([f"| start ({a['continued']['start']}) | {a['start_map50']:.3f} | {a['start_map']:.3f} | 0 | "
                f"{a['start_map'] / a['baseline_map']:.1%} | {a['dense_minutes'] + a['continued']['minutes']:.0f} |"]
               if a.get("continued") else []),
             *([f"| start (dense) | {a['start_map50']:.3f} | {a['start_map']:.3f} | 0 | "
                f"{a['start_map'] / a['baseline_map']:.1%} | {a['dense_minutes']:.0f} |"] if own else []),
             f"| control | {a['control_map50']:.3f} | {a['control_map']:.3f} | 0 | "
             f"{a['control_map'] / a['baseline_map']:.1%} | {a['control_minutes']:.0f} |"]
    lines += [f"| {r['name']}{' *' if r.get('kept_from') else ''} | {r['map50']:.3f} | {r['map']:.3f} | "
              f"{r['sparsity']:.3f} | {r['recovery']:.1%} | {r['minutes']:.0f} |" for r in a["sparse"]]
    return [*lines, *kept_footnote(a), ""]


def own_start(a: dict, protocol_section: dict | None = None) -> str:
    """The sentence on an attempt's dense start when it is not the start of ``protocol_section`` (another size, data
    or length; the protocol's command retrained on another machine: ``other_start``; the run from scratch alone when
    the protocol's start is a continued round); "" when it is the same start, or a continued one (see
    continued_markdown). Without ``protocol_section``, judged by the attempt's settings alone."""
    protocol_settings = (a.get("imgsz"), a.get("data"), a.get("dense_epochs")) == (
        PROTOCOL_IMGSZ, PROTOCOL_DATA, PROTOCOL_EPOCHS)
    if protocol_section:
        same = (a.get("start_map"), a.get("dense_best_epoch")) == (protocol_section.get("start_map"),
                                                                   protocol_section.get("dense_best_epoch"))
    else:
        same = protocol_settings and not a.get("other_start")
    if a.get("continued") or same:
        return ""
    c = a.get("convergence", {})
    stopped = (f", stopped by --patience after epoch {c['epochs'] - 1}"
               if c.get("epochs", a["dense_epochs"]) < a["dense_epochs"] else "")
    rounds = (protocol_section or {}).get("continued") or {}
    if protocol_settings and rounds.get("start", "dense") != "dense":
        elsewhere = ("the protocol's run from scratch on this attempt's machine, without the dense rounds of "
                     f"{rounds['epochs']} epochs that lead to the protocol's start; ")
    elif a.get("other_start"):
        elsewhere = ("the protocol's command, retrained on this attempt's machine: another CPU rounds differently, "
                     f"and {a['dense_epochs']} epochs carry the difference into another model; ")
    else:
        elsewhere = ""
    return (f"Its own start, not the protocol's: dense yolov5n from scratch on `{a['data']}` at {a['imgsz']} px, "
            f"{a['dense_epochs']} epochs{stopped} ({elsewhere}{a['dense_minutes']:.0f} min), best epoch "
            f"{a.get('dense_best_epoch')}: mAP@0.5:0.95 {a['start_map']:.3f}; over its last {c.get('window')} "
            f"epochs its best rose {c.get('rise', 0):.2%}. Curve: [{Path(a['curve']).name}]({a['curve']})")


def continued_markdown(a: dict) -> list[str]:
    """The sentence on a continued start (none for a start trained only from scratch)."""
    c = a.get("continued")
    if not c:
        return []
    rounds = ", ".join(f"round {r['number']} {r['map']:.3f} ({r['rise']:+.1%})" for r in c["rounds"])
    if c["converged"] and c["start"] == round_folder(c["epochs"], 0):
        return [f"A check of that: the run from scratch was trained on dense for {c['epochs']} epochs under the "
                f"fine-tune's schedule (the control's recipe): {rounds}, under 1%, so the run from scratch is the "
                f"start. Curve (with the round): [{Path(a['curve']).name}]({a['curve']}).", ""]
    verdict = (f"the start is {c['start']} ({a['start_map']:.3f}), and the round after it, under 1% better, "
               f"confirms it: over the dense training's last {c['epochs']} epochs its best rose "
               f"{max(c['rounds'][-1]['rise'], 0.0):.1%}" if c["converged"] else
               f"NOT converged after {len(c['rounds'])} rounds: the start is the last round ({a['start_map']:.3f})")
    return [f"The start is not the run from scratch itself: that run ({c['from_map']:.3f}) was trained on dense in "
            f"rounds of {c['epochs']} epochs under the fine-tune's schedule (the control's recipe, each round from "
            f"the best epoch of the one before) until a round gained less than 1%: {rounds}; {verdict}. The "
            f"rounds before the start took {c['minutes']:.0f} min. The control and the sparse runs start from "
            f"that model and distil from it. Curve (all rounds): [{Path(a['curve']).name}]({a['curve']}).", ""]


def keep_other_variants(previous: dict | None, result: dict, origin: str) -> dict:
    """``result`` plus the sparse rows of ``previous`` (an earlier accuracy section, run by ``origin``) for variants
    this run did not train, when both start from the same dense stages (same data, sizes, epochs, fine-tune
    arguments and dense results): ``--variants X`` then adds X to the table instead of replacing it."""
    same = ("data", "imgsz", "dense_epochs", "finetune_epochs", "finetune_args", "finetune_hyp", "start_map",
            "control_map")
    if not previous or any(previous.get(key) != result.get(key) for key in same):
        return result
    names = {row["name"] for row in result["sparse"]}
    kept = [{**row, "kept_from": row.get("kept_from") or origin} for row in previous.get("sparse", [])
            if row["name"] not in names]
    return {**result, "sparse": kept + result["sparse"]}
