"""``python benchmarks.py``: the flags, which sections run, and where their results go."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.accuracy import (
    DEFAULT_VARIANTS,
    DENSE_CURVE,
    PROTOCOL_CONTINUE_EPOCHS,
    PROTOCOL_DATA,
    PROTOCOL_EPOCHS,
    PROTOCOL_FINETUNE_EPOCHS,
    PROTOCOL_FINETUNE_HYP,
    PROTOCOL_IMGSZ,
    SPARSE_VARIANTS,
    accuracy,
    attempt_name,
    keep_other_variants,
    start_folder,
)
from benchmarks.demo import demo
from benchmarks.machine import machine, versions
from benchmarks.report import RESULTS, write_markdown
from benchmarks.runs import BENCH_DIR
from benchmarks.runtime import runtime
from benchmarks.scratch import scratch
from benchmarks.throughput import throughput


def own_start(opt: argparse.Namespace) -> bool:
    """Whether an accuracy attempt starts from a dense model other than the protocol's (other rounds, size, data,
    epochs or project): its curve then gets a file of its own instead of redrawing the protocol's."""
    return (opt.continue_epochs != PROTOCOL_CONTINUE_EPOCHS or opt.epochs != PROTOCOL_EPOCHS
            or opt.imgsz != PROTOCOL_IMGSZ or opt.data != PROTOCOL_DATA or opt.project != BENCH_DIR / "protocol")


def shared_or_other_start(result: dict, protocol_section: dict | None, attempt_curve: Path) -> dict:
    """An attempt with the protocol's dense settings: when its dense run is the protocol section's (same best epoch
    and mAP), it shares that section's curve (its own copy is removed); when the same command gave another model
    (retrained on another machine: other CPUs round differently), it is marked ``other_start`` and keeps its curve."""
    section = protocol_section or {}
    if (section.get("start_map"), section.get("dense_best_epoch")) == (result["start_map"],
                                                                       result["dense_best_epoch"]):
        attempt_curve.unlink(missing_ok=True)
        return {**result, "curve": section.get("curve", result["curve"])}
    return {**result, "other_start": True}


def build_parser() -> argparse.ArgumentParser:
    """benchmarks.py's command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["throughput", "demo", "accuracy", "scratch", "runtime"], action="append")
    parser.add_argument("--epochs", type=int, default=PROTOCOL_EPOCHS,
                        help="accuracy and scratch: epochs from scratch (dense, and the scratch section's sparse run)")
    parser.add_argument("--finetune-epochs", type=int, default=PROTOCOL_FINETUNE_EPOCHS,
                        help="accuracy: epochs of each fine-tune (the control and the recipe runs)")
    parser.add_argument("--continue-epochs", type=int, default=PROTOCOL_CONTINUE_EPOCHS,
                        help="accuracy: the start is the dense model trained this many more epochs dense at the "
                             "fine-tune's schedule (0: the run from scratch)")
    parser.add_argument("--finetune-args", default="",
                        help="accuracy: JSON replacing fine-tune learning-rate arguments (an attempt; needs --attempt)")
    parser.add_argument("--finetune-hyp", default=PROTOCOL_FINETUNE_HYP,
                        help="accuracy: hyperparameters of the fine-tunes (default: the dense run's; another file "
                             "needs --attempt, e.g. data/hyps/hyp.scratch-low.yaml as the attempts before 2026-12-06)")
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
    return parser


def main() -> None:
    parser = build_parser()
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
        attempt = attempt_name(opt.finetune_epochs, opt.attempt, opt.continue_epochs)
        if overrides and not attempt:
            parser.error("--finetune-args changes the protocol: name the attempt with --attempt NAME")
        if opt.finetune_hyp != PROTOCOL_FINETUNE_HYP and not attempt:
            parser.error("--finetune-hyp changes the protocol: name the attempt with --attempt NAME")
        attempt_curve = DENSE_CURVE.with_name(f"{DENSE_CURVE.stem}_{attempt}.png")
        result = accuracy(opt.epochs, opt.finetune_epochs, opt.imgsz, 32, opt.data, tuple(opt.variants),
                          opt.project, finetune_overrides=overrides, attempt=attempt,
                          continue_epochs=opt.continue_epochs, finetune_hyp=opt.finetune_hyp,
                          curve=attempt_curve if attempt else DENSE_CURVE)
        if attempt and not own_start(opt):
            result = shared_or_other_start(result, results.get("accuracy"), attempt_curve)
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
        results["runtime"] = runtime(opt.quick, results.get("accuracy", {}).get("data", opt.data), start_folder())
    for section in sections:
        if section == "accuracy" and attempt_name(opt.finetune_epochs, opt.attempt, opt.continue_epochs):
            continue  # the attempt carries its own command; the protocol's section keeps the one that measured it
        results.setdefault("commands", {})[section] = {"command": command, "date": date,
                                                       "machine": machine(), "versions": versions()}
    path = write_markdown(results)
    print(path.read_text())
