"""The `make demo` job: sparsify a trained detector the way a user would, and compare it with the dense one.

The start is ``weights/yolov5n-shapes.pt``, a dense yolov5n trained on the built-in shapes data (`make demo-model`
retrains it). The demo fine-tunes it with the shipped pruned_quant recipe, shortened (GMP to ~77% of conv weights,
distillation from the start, then quantization-aware training), exports the dense and the sparse model to ONNX,
validates each file in the runtime it is meant for, draws detections, and ends with one table side by side.

Each step runs the command a user would type, printed before it runs, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import val
from export import summarize_onnx
from utils.logs import setup_script_logging
from utils.timing import deepsparse_runner, onnxruntime_runner, time_interleaved

ROOT = Path(__file__).resolve().parent
START = ROOT / "weights" / "yolov5n-shapes.pt"
DATA, IMGSZ = "data/shapes_tiny.yaml", 160
RECIPE = "recipes/yolov5n.pruned_quant.yaml"


def recipe_args(epochs: int) -> dict:
    """The recipe's variables for a fine-tune of ``epochs`` epochs with AdamW: the accuracy protocol's learning rates
    and sparsities (BENCHMARKS.md), pruning over the first 40% of the run and QAT in the last epochs."""
    return {"num_epochs": epochs, "pruning_end_epoch": round(0.4 * epochs, 2),
            "quantization_epochs": max(2, round(epochs / 6)), "init_lr": 0.002, "final_lr": 0.0005,
            "qat_init_lr": 0.0001, "biases_warmup_lr": 0.002, "final_sparsity_heavy": 0.85,
            "final_sparsity_inner": 0.7, "final_sparsity_sensitive": 0.5}


def step(title: str, args: list[str]) -> None:
    print(f"\n=== {title}\n$ python {shlex.join(args)}", flush=True)
    started = time.time()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True)
    print(f"--- {title}: {time.time() - started:.0f} s", flush=True)


def evaluate(title: str, onnx_path: Path, runtime: str, name: str) -> dict:
    """val.py on ``onnx_path`` in ``runtime`` (printed as the command a user would type): its mAPs, size, sparsity."""

    args = ["val.py", "--weights", str(onnx_path.relative_to(ROOT)), "--data", DATA, "--imgsz", str(IMGSZ),
            "--runtime", runtime, "--name", name, "--exist-ok"]
    print(f"\n=== validate {title}\n$ python {shlex.join(args)}", flush=True)
    metrics = val.run(DATA, weights=str(onnx_path), imgsz=IMGSZ, runtime=runtime, name=name, exist_ok=True,
                      workers=2).metrics
    return {"model": title, "file": onnx_path, "runtime": runtime, "mAP@0.5": metrics.map50,
            "mAP@0.5:0.95": metrics.map, "MB": onnx_path.stat().st_size / 1e6,
            "sparsity": summarize_onnx(onnx_path).sparsity}


def time_models(rows: list[dict], rounds: int = 50) -> None:
    """Milliseconds per image (batch 1) of each row's file in its runtime, the runs interleaved so that every file
    meets the same machine load; the median goes into the row. val.py's own speed line also times its data handling,
    which at 160 px weighs as much as the model."""
    import statistics

    print(f"\n=== time each file, batch 1, {rounds} interleaved rounds", flush=True)
    runners = {}
    for row in rows:
        if row["runtime"] == "deepsparse":
            runners[row["model"]] = deepsparse_runner(row["file"], 1, IMGSZ, None)[0]
        else:
            runners[row["model"]] = onnxruntime_runner(row["file"], 1, IMGSZ, None)
    times = time_interleaved(runners, rounds, warmup=5)
    for row in rows:
        row["ms"] = statistics.median(times[row["model"]])
        row["file"] = str(Path(row["file"]).relative_to(ROOT))


def table(rows: list[dict]) -> str:
    lines = ["| model | mAP@0.5 | mAP@0.5:0.95 | ms per image (batch 1) | speed vs dense | file MB "
             "| conv weights zero |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['mAP@0.5']:.3f} | {r['mAP@0.5:0.95']:.3f} | {r['ms']:.2f} | "
              f"{rows[0]['ms'] / r['ms']:.2f}x | {r['MB']:.1f} | {r['sparsity']:.0%} |" for r in rows]
    return "\n".join(lines)


def deepsparse_installed() -> bool:
    try:
        import deepsparse  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12, help="length of the sparsifying fine-tune")
    parser.add_argument("--name", default="demo")
    opt = parser.parse_args()
    if not START.exists():
        raise SystemExit(f"{START} is missing: it ships with the repository (git checkout weights/), or retrain it "
                         f"with `make demo-model` (about 45 minutes on 2 CPU cores)")
    setup_script_logging(False, force=True)
    started = time.time()
    dense_dir = ROOT / "runs" / "demo" / opt.name
    dense_dir.mkdir(parents=True, exist_ok=True)
    dense = shutil.copy2(START, dense_dir / START.name)
    step("export the dense start to ONNX (FP32)",
         ["export.py", "--weights", str(Path(dense).relative_to(ROOT)), "--imgsz", str(IMGSZ), "--data", DATA])

    run_dir = ROOT / "runs" / "train" / opt.name
    step(f"sparsify it: {opt.epochs} epochs of {RECIPE} (pruning, then quantization-aware training), distilled from "
         f"the start",
         ["train.py", "--weights", str(START.relative_to(ROOT)), "--data", DATA, "--imgsz", str(IMGSZ),
          "--batch-size", "32", "--workers", "2", "--optimizer", "AdamW", "--sparsification-recipe", RECIPE,
          "--recipe-args", json.dumps(recipe_args(opt.epochs)), "--teacher-weights", str(START.relative_to(ROOT)),
          "--name", opt.name, "--exist-ok"])
    weights = run_dir / "weights" / "last.pt"
    step("export the pruned + quantized model (INT8: a QDQ file for onnxruntime, an integer one for DeepSparse)",
         ["export.py", "--weights", str(weights.relative_to(ROOT)), "--imgsz", str(IMGSZ), "--data", DATA])

    rows = [evaluate("dense FP32, onnxruntime", Path(dense).with_suffix(".onnx"), "onnxruntime", f"{opt.name}-dense"),
            evaluate("pruned INT8 (QDQ), onnxruntime", weights.with_suffix(".qdq.onnx"), "onnxruntime",
                     f"{opt.name}-qdq")]
    if deepsparse_installed():
        rows.append(evaluate("pruned INT8, DeepSparse", weights.with_suffix(".onnx"), "deepsparse",
                             f"{opt.name}-deepsparse"))
    else:
        print("\nDeepSparse is not installed (optional, see README): its row is left out")
    time_models(rows)
    images = f"datasets/{Path(DATA).stem}/images/val/*000[0-5].jpg"
    step("draw detections of the pruned INT8 file (onnxruntime)",
         ["detect.py", "--weights", str(weights.with_suffix(".qdq.onnx").relative_to(ROOT)), "--source", images,
          "--imgsz", str(IMGSZ), "--name", opt.name, "--exist-ok", "--runtime", "onnxruntime",
          "--line-thickness", "1"])  # 160 px images: thin boxes and small labels

    print(f"\nDense start vs sparsified ({DATA}, {IMGSZ} px, this machine; {time.time() - started:.0f} s in all):\n")
    print(table(rows))
    (dense_dir / "comparison.md").write_text(table(rows) + "\n", encoding="utf-8")
    (dense_dir / "comparison.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print("\nOutputs:")
    print(f"  the fine-tune (curves, phases, sparsity report): {run_dir}")
    print(f"  ONNX files: {Path(dense).with_suffix('.onnx')}, {weights.with_suffix('.qdq.onnx')}, "
          f"{weights.with_suffix('.onnx')}")
    print(f"  validation plots: {ROOT / 'runs' / 'val'}/{opt.name}-*")
    print(f"  annotated detections: {ROOT / 'runs' / 'detect' / opt.name}")
    print(f"  this table: {dense_dir / 'comparison.md'}")


if __name__ == "__main__":
    main()
