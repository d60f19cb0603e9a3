"""The `make demo` job: build the built-in dataset, train and sparsify a small model, validate, export, detect.

Each step runs the same command a user would type, printed before it runs, so the demo doubles as a tutorial.
Settings are chosen to finish in well under 15 minutes on 2 CPU cores; see README.md for a longer, better run.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def step(title: str, args: list[str]) -> None:
    command = [sys.executable, *args]
    print(f"\n=== {title}\n$ python {shlex.join(args)}", flush=True)
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    print(f"--- {title}: {time.time() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10, help="scale the demo recipe (10 epochs) to this many")
    parser.add_argument("--data", default="data/shapes_small.yaml", help="dataset YAML (data/shapes.yaml: full)")
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--name", default="demo")
    opt = parser.parse_args()

    run_dir = ROOT / "runs" / "train" / opt.name
    recipe_args = ["--epochs", str(opt.epochs)] if opt.epochs else []
    step("train yolov5n on the built-in shapes data with the demo recipe (pruning, then quantization-aware training)",
         ["train.py", "--data", opt.data, "--cfg", "yolov5n.yaml", "--weights", "", "--imgsz",
          str(opt.imgsz), "--batch-size", "32", "--workers", "2", "--name", opt.name, "--exist-ok",
          "--optimizer", "AdamW", "--hyp", "data/hyps/hyp.short.yaml",
          "--sparsification-recipe", "recipes/demo.yaml", *recipe_args])
    weights = run_dir / "weights" / "last.pt"
    step("validate the final (pruned + quantized) checkpoint",
         ["val.py", "--weights", str(weights), "--data", opt.data, "--imgsz", str(opt.imgsz),
          "--name", opt.name, "--exist-ok"])
    step("export it to ONNX (pruned zeros kept, quantized layers folded)",
         ["export.py", "--weights", str(weights), "--imgsz", str(opt.imgsz), "--data", opt.data])
    onnx_file = weights.with_suffix(".onnx")
    images = f"datasets/{Path(opt.data).stem}/images/val/*000[0-3].jpg"
    # minutes of CPU training make a weak detector: a low confidence threshold shows what it finds
    step("run detection with the exported file in onnxruntime (confidence >= 0.1)",
         ["detect.py", "--weights", str(onnx_file), "--source", images, "--conf-thres", "0.1",
          "--imgsz", str(opt.imgsz), "--name", opt.name, "--exist-ok", "--runtime", "onnxruntime"])
    print("\nOutputs:")
    print(f"  training run, curves, sparsity report: {run_dir}")
    print(f"  checkpoints: {run_dir / 'weights'}")
    print(f"  ONNX model: {onnx_file}")
    print(f"  validation plots: {ROOT / 'runs' / 'val' / opt.name}")
    print(f"  annotated detections: {ROOT / 'runs' / 'detect' / opt.name}")


if __name__ == "__main__":
    main()
