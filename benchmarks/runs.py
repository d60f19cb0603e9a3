"""Training runs of the benchmarks: subprocesses of train.py that a rerun reuses when finished and resumes when
interrupted, and what is read back from their folders (results.csv, best epoch, minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from utils.checkpoint import CheckpointError, load_checkpoint
from utils.metrics import fitness

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "runs" / "bench"


def run_command(args: list[str]) -> float:
    print("$ python " + " ".join(args), flush=True)
    start = time.time()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
    return time.time() - start


def read_results(run_dir: Path) -> list[dict]:
    """The rows of a run's results.csv; the conv weight sparsity is ``conv_sparsity`` also in files written before
    that column was renamed from ``sparsity`` (2026-12-05)."""
    import csv

    with open(run_dir / "results.csv", newline="", encoding="utf-8") as f:
        return [{("conv_sparsity" if key == "sparsity" else key): value for key, value in row.items()}
                for row in csv.DictReader(f)]


def run_minutes(run_dir: Path) -> float:
    """Training time of a finished run: the wall time its last.pt records (the parts of a resumed run added up), or,
    for runs of versions that did not record it, the time between its first file (opt.yaml) and its last."""
    last = run_dir / "weights" / "last.pt"
    try:
        seconds = load_checkpoint(last)["options"].get("train_seconds")
    except CheckpointError:
        seconds = None
    if seconds is not None:
        return float(seconds) / 60
    return (last.stat().st_mtime - (run_dir / "opt.yaml").stat().st_mtime) / 60


def settings_differences(run_dir: Path, expected: dict) -> list[str]:
    """How the opt.yaml in ``run_dir`` differs from the ``expected`` settings (``recipe_args`` compared as parsed
    JSON), one "key: found ..., wanted ..." per setting; empty when they agree."""
    import yaml

    try:
        saved = yaml.safe_load((run_dir / "opt.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return [f"{run_dir / 'opt.yaml'} is missing or unreadable"]
    if "recipe_args" in expected:
        try:
            saved = {**saved, "recipe_args": json.loads(saved.get("recipe_args") or "{}")}
        except json.JSONDecodeError:
            return [f"recipe_args in {run_dir / 'opt.yaml'} is not JSON"]
    return [f"{key}: found {saved.get(key)!r}, wanted {value!r}" for key, value in expected.items()
            if saved.get(key) != value]


def same_settings(run_dir: Path, expected: dict) -> bool:
    """Whether the opt.yaml in ``run_dir`` has the ``expected`` settings."""
    return not settings_differences(run_dir, expected)


def finished_run(run_dir: Path, epochs: int, expected: dict) -> bool:
    """Whether ``run_dir`` holds a finished run of ``epochs`` epochs with the ``expected`` settings."""
    try:
        done = len(read_results(run_dir)) == epochs or stopped_early(run_dir)
    except OSError:
        return False
    return done and (run_dir / "weights" / "best.pt").is_file() and same_settings(run_dir, expected)


def stopped_early(run_dir: Path) -> bool:
    """Whether train.py ended the run in ``run_dir`` before its last epoch (--patience): its last.pt is marked final
    and its optimizer stripped. Such a run is finished; resuming it would train past the stop."""
    try:
        checkpoint = load_checkpoint(run_dir / "weights" / "last.pt")
    except CheckpointError:
        return False
    return bool(checkpoint.get("final")) and checkpoint.get("optimizer") is None


def train_stage(run_dir: Path, epochs: int, expected: dict, command: list[str], what: str) -> bool:
    """Reuse a finished run of the ``expected`` settings in ``run_dir`` (returns True), continue an interrupted one
    with ``train.py --resume``, or run ``command``: a benchmark of several hours that was stopped goes on where it
    left off when it is run again. A folder that holds the weights of a run of other settings is never overwritten."""
    if finished_run(run_dir, epochs, expected):
        print(f"reusing the finished run {run_dir} ({what}, same settings)", flush=True)
        return True
    last = run_dir / "weights" / "last.pt"
    differences = settings_differences(run_dir, expected)
    if last.is_file() and not differences:
        print(f"resuming the interrupted run {run_dir} ({what})", flush=True)
        run_command(["train.py", "--resume", str(last)])
        return False
    if last.is_file():  # train.py --exist-ok would overwrite another run's weights (hours of CPU training)
        raise SystemExit(f"{run_dir} holds a run of other settings than this benchmark's ({what}): "
                         f"{'; '.join(differences)}. Nothing was trained. Keep both: pass --project <another "
                         f"folder>; replace it: delete {run_dir}.")
    run_command(command)
    return False



def benchmark_args(data: str, imgsz: int, batch: int, project: Path) -> list[str]:
    """train.py arguments that every run of the accuracy benchmarks shares."""
    return ["--data", data, "--imgsz", str(imgsz), "--batch-size", str(batch), "--workers", "2",
            "--project", str(project), "--exist-ok", "--noplots"]


def phase_minutes(rows: list[dict], minutes: float) -> dict[str, float]:
    """A run's ``minutes`` shared out over its phases by their number of epochs (results.csv rows)."""
    return {phase: round(count * minutes / max(len(rows), 1), 1)
            for phase, count in Counter(row["phase"] for row in rows).items()}


def metrics_of(row: dict) -> np.ndarray:
    return np.array([[0.0, 0.0, float(row["metrics/mAP_0.5"]), float(row["metrics/mAP_0.5:0.95"])]])


def best_of(rows: list[dict], phase: str | None = None) -> dict:
    """The results.csv row of highest YOLOv5 fitness (train.py's choice of best.pt), among ``phase``'s rows."""
    rows = [r for r in rows if phase is None or r["phase"] == phase] or rows
    scores = fitness(np.concatenate([metrics_of(r) for r in rows]))
    return rows[int(scores.argmax())]
