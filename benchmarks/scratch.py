"""Same budget from scratch: the protocol's dense run against the same command with a pruned + INT8 recipe."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.accuracy import (
    DENSE_ARGS,
    SCRATCH_CURVE_POINTS,
    SCRATCH_RECIPE,
    SPARSITY_ARGS,
    dense_run,
    scratch_settings,
)
from benchmarks.runs import BENCH_DIR, benchmark_args, best_of, phase_minutes, read_results, run_minutes, train_stage


def sparse_scratch_run(project: Path, epochs: int, common: list[str]) -> tuple[Path, bool]:
    """The dense run's command with SCRATCH_RECIPE at ``epochs`` epochs and the sparsities of the fine-tunes, or a
    finished run of the same settings. Returns the run folder and whether it was reused."""
    run_dir = project / "pruned_quant_scratch"
    recipe_args = {"num_epochs": epochs, **SPARSITY_ARGS}
    expected = {**scratch_settings(common), "sparsification_recipe": SCRATCH_RECIPE, "recipe_args": recipe_args}
    command = ["train.py", *DENSE_ARGS, "--sparsification-recipe", SCRATCH_RECIPE, "--recipe-args",
               json.dumps(recipe_args), "--name", run_dir.name, *common]
    return run_dir, train_stage(run_dir, epochs, expected, command, f"{epochs} epochs from scratch")


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
              "sparsity": float(sparse_rows[e]["conv_sparsity"])}
             for e in sorted({*range(step - 1, epochs, step), epochs - 1})]
    return {"data": data, "imgsz": imgsz, "batch": batch, "epochs": epochs, "recipe": SCRATCH_RECIPE,
            "sparsity_args": SPARSITY_ARGS,
            "dense_map50": float(dense["metrics/mAP_0.5"]), "dense_map": float(dense["metrics/mAP_0.5:0.95"]),
            "dense_best_epoch": int(dense["epoch"]), "dense_minutes": run_minutes(dense_dir),
            "dense_reused": dense_reused,
            "sparse_map50": float(sparse["metrics/mAP_0.5"]), "sparse_map": float(sparse["metrics/mAP_0.5:0.95"]),
            "sparse_best_epoch": int(sparse["epoch"]), "sparse_phase": final_phase,
            "sparsity": float(sparse["conv_sparsity"]), "sparse_minutes": minutes, "sparse_reused": sparse_reused,
            "phase_minutes": phase_minutes(sparse_rows, minutes),
            "phase_starts": {row["phase"]: int(row["epoch"]) for row in reversed(sparse_rows)},
            "same_epochs": same_epochs(dense_rows, sparse_rows),
            "recovery": float(sparse["metrics/mAP_0.5:0.95"]) / max(float(dense["metrics/mAP_0.5:0.95"]), 1e-9),
            "curve": curve}


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
