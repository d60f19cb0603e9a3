"""Benchmarks (run by `make bench`): throughput, accuracy of dense vs sparsified training, runtime latency.

Results go to BENCHMARKS.md with the command, the machine, the versions and the date. Speeds are compared as ratios
measured in the same process, because this shared machine's absolute timings drift by tens of percent.

    python benchmarks.py                        # everything (long: trains two models)
    python benchmarks.py --only throughput      # training / validation images per second
    python benchmarks.py --only demo            # time `python demo.py` and record the mAP it reaches
    python benchmarks.py --only accuracy        # dense vs pruned_quant (unstructured, 4-block) yolov5n, ~40 min
    python benchmarks.py --only runtime         # ONNX files in onnxruntime / DeepSparse (--quick: a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


SPARSE_VARIANTS = {"pruned_quant": {}, "pruned_quant_block4": {"mask_type": [1, 4]}}


def accuracy(epochs: int, finetune_epochs: int, imgsz: int, batch: int, data: str = "data/shapes.yaml") -> dict:
    """Dense yolov5n from scratch, then the pruned_quant recipe (unstructured and 4-block) fine-tuning it.

    Same budget: the dense run trains ``epochs + finetune_epochs`` epochs and keeps its checkpoint after ``epochs``;
    each sparse run starts from that checkpoint and trains ``finetune_epochs``. Recovery compares each sparse model
    with the best dense epoch of the whole dense run, so sparse runs get no extra training the dense one lacks.
    """
    if epochs < 2:
        raise ValueError("--epochs must be at least 2 (the sparse runs start from the dense checkpoint of that epoch)")
    project = BENCH_DIR / "accuracy"
    common = ["--data", data, "--imgsz", str(imgsz), "--batch-size", str(batch), "--workers", "2",
              "--project", str(project), "--exist-ok", "--noplots"]
    dense_time = run_command(["train.py", "--cfg", "yolov5n.yaml", "--weights", "", "--epochs",
                              str(epochs + finetune_epochs), "--optimizer", "AdamW", "--hyp",
                              "data/hyps/hyp.short.yaml", "--save-period", str(epochs - 1), "--name", "dense",
                              *common])
    dense_rows = read_results(project / "dense")
    start = project / "dense" / "weights" / f"epoch{epochs - 1}.pt"
    dense = best_of(dense_rows)
    result = {"data": data, "imgsz": imgsz, "dense_epochs": epochs, "finetune_epochs": finetune_epochs,
              "dense_map50": float(dense["metrics/mAP_0.5"]), "dense_map": float(dense["metrics/mAP_0.5:0.95"]),
              "dense_best_epoch": int(dense["epoch"]), "dense_minutes": dense_time / 60,
              "start_map": float(dense_rows[epochs - 1]["metrics/mAP_0.5:0.95"]), "sparse": []}
    for name, variables in SPARSE_VARIANTS.items():
        recipe_args = json.dumps({"num_epochs": finetune_epochs, "quantization_epochs": 2, **variables})
        sparse_time = run_command(["train.py", "--weights", str(start), "--recipe-args", recipe_args,
                                   "--sparsification-recipe", "recipes/yolov5n.pruned_quant.yaml", "--name", name,
                                   *common])
        rows = read_results(project / name)
        final_phase = rows[-1]["phase"]
        sparse = best_of(rows, final_phase)
        phase_epochs = Counter(row["phase"] for row in rows)
        seconds_per_epoch = sparse_time / max(len(rows), 1)
        result["sparse"].append({
            "name": name, "recipe_args": recipe_args, "epochs": len(rows), "phase": final_phase,
            "map50": float(sparse["metrics/mAP_0.5"]), "map": float(sparse["metrics/mAP_0.5:0.95"]),
            "sparsity": float(sparse["sparsity"]), "recovery": float(sparse["metrics/mAP_0.5:0.95"])
            / max(result["dense_map"], 1e-9), "minutes": sparse_time / 60,
            "phase_minutes": {k: round(v * seconds_per_epoch / 60, 1) for k, v in phase_epochs.items()}})
    return result


def best_of(rows: list[dict], phase: str | None = None) -> dict:
    """The results.csv row of highest YOLOv5 fitness (train.py's choice of best.pt), among ``phase``'s rows."""
    rows = [r for r in rows if phase is None or r["phase"] == phase] or rows
    scores = fitness(np.array([[0.0, 0.0, float(r["metrics/mAP_0.5"]), float(r["metrics/mAP_0.5:0.95"])]
                               for r in rows]))
    return rows[int(scores.argmax())]


def demo() -> dict:
    """Run ``demo.py`` (what ``make demo`` runs after setup) and read the mAP its final model reaches."""
    seconds = run_command(["demo.py"])
    rows = read_results(ROOT / "runs" / "train" / "demo")
    last = rows[-1]
    return {"seconds": seconds, "epochs": len(rows), "phase": last["phase"], "sparsity": float(last["sparsity"]),
            "map50": float(last["metrics/mAP_0.5"]), "map": float(last["metrics/mAP_0.5:0.95"])}


def runtime(quick: bool, data: str) -> dict:
    """Speed of dense / pruned / pruned+INT8 ONNX files in each installed runtime (utils/runtime_benchmark.py)."""
    from utils import runtime_benchmark

    settings = runtime_benchmark.Settings.quick() if quick else runtime_benchmark.Settings()
    settings.data = data
    return runtime_benchmark.run_section(settings, BENCH_DIR)


def write_markdown(results: dict, path: Path = ROOT / "BENCHMARKS.md") -> Path:
    """BENCHMARKS.md from ``results``, which are kept beside the runs in runs/bench/results.json."""
    path.write_text(render_markdown(results), encoding="utf-8")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    (BENCH_DIR / "results.json").write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    return path


def render_markdown(results: dict) -> str:
    """The text of BENCHMARKS.md: machine, versions, then one section per benchmark present in ``results``."""
    import onnxruntime
    import sparseml

    lines = ["# Benchmarks", "",
             "Sections come from the commands below (each run updates its sections in runs/bench/results.json):  ",
             *[f"- {section}: `{run['command']}`, {run['date']}  " for section, run in
               results.get("commands", {}).items()],
             f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, flags: {cpu_flags()}; no GPU  ",
             f"Versions: Python {platform.python_version()}, torch {torch.__version__}, sparseml "
             f"{sparseml.__version__}, onnxruntime {onnxruntime.__version__}", ""]
    if "throughput" in results:
        lines += ["## Training and validation throughput (random data, batch as shown, median of steps)", "",
                  "| model | imgsz | batch | train images/s | val images/s (forward + NMS) |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['imgsz']} | {r['batch']} | {r['train_images_per_s']} | "
                  f"{r['val_images_per_s']} |" for r in results["throughput"]]
        lines.append("")
    if "demo" in results:
        d = results["demo"]
        lines += ["## The demo (`make demo` after setup: `python demo.py`)", "",
                  f"{d['seconds'] / 60:.1f} min for train ({d['epochs']} epochs) + val + export + detect. Final model "
                  f"({d['phase']}, {d['sparsity']:.1%} of conv weights zero): mAP@0.5 {d['map50']:.3f}, "
                  f"mAP@0.5:0.95 {d['map']:.3f} on the built-in validation images. A few minutes of CPU training "
                  "from scratch shows the pipeline, not the accuracy a longer run reaches (see below).", ""]
    if "accuracy" in results and "sparse" in results["accuracy"]:
        a = results["accuracy"]
        lines += [f"## Dense vs pruned + quantized (yolov5n, built-in shapes data: `{a['data']}`, {a['imgsz']} px)", "",
                  f"Dense: {a['dense_epochs'] + a['finetune_epochs']} epochs from scratch (AdamW, "
                  f"`data/hyps/hyp.short.yaml`; {a['dense_minutes']:.0f} min), best epoch {a['dense_best_epoch']}. "
                  f"Each sparse run starts from the dense checkpoint after {a['dense_epochs']} epochs (mAP@0.5:0.95 "
                  f"{a['start_map']:.3f}) and trains `recipes/yolov5n.pruned_quant.yaml` scaled to "
                  f"{a['finetune_epochs']} epochs (GMP, fine-tune, 2 QAT epochs), so both sides get the same number of "
                  "epochs. Sparse rows: the best epoch of the final (pruned_quantized) phase, i.e. "
                  "`best_pruned_quantized.pt`.", "",
                  "| model | recipe args | mAP@0.5 | mAP@0.5:0.95 | conv weight sparsity | recovery (mAP@0.5:0.95) "
                  "| minutes (per phase) |",
                  "|---|---|---|---|---|---|---|",
                  f"| dense | | {a['dense_map50']:.3f} | {a['dense_map']:.3f} | 0 | 100% | {a['dense_minutes']:.0f} |"]
        lines += [f"| {r['name']} | `{r['recipe_args']}` | {r['map50']:.3f} | {r['map']:.3f} | {r['sparsity']:.3f} | "
                  f"{100 * r['recovery']:.1f}% | {r['minutes']:.0f} ({r['phase_minutes']}) |" for r in a["sparse"]]
        lines.append("")
    if isinstance(results.get("runtime"), dict):  # older results.json files hold a list: skipped
        from utils.runtime_benchmark import markdown

        lines += markdown(results["runtime"])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["throughput", "demo", "accuracy", "runtime"], action="append")
    parser.add_argument("--epochs", type=int, default=18, help="dense epochs before the sparse runs branch off")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="epochs the pruned_quant recipe is scaled to")
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--data", default="data/shapes_small.yaml", help="dataset of the accuracy benchmark")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per throughput measurement")
    parser.add_argument("--quick", action="store_true", help="runtime section: fewer runs, mAP at 320 only (minutes)")
    opt = parser.parse_args()
    sections = opt.only or ["throughput", "demo", "accuracy", "runtime"]
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    previous = BENCH_DIR / "results.json"
    results = json.loads(previous.read_text()) if previous.exists() else {}
    if "throughput" in sections:
        results["throughput"] = [throughput(f"yolov5{size}.yaml", imgsz, 8, opt.steps)
                                 for size in ("n", "s") for imgsz in (320, 640)]
    if "demo" in sections:
        results["demo"] = demo()
    if "accuracy" in sections:
        results["accuracy"] = accuracy(opt.epochs, opt.finetune_epochs, opt.imgsz, 32, opt.data)
    if "runtime" in sections:
        results["runtime"] = runtime(opt.quick, results.get("accuracy", {}).get("data", opt.data))
    command = "python benchmarks.py " + " ".join(sys.argv[1:])
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for section in sections:
        results.setdefault("commands", {})[section] = {"command": command.strip(), "date": date}
    path = write_markdown(results)
    print(path.read_text())


if __name__ == "__main__":
    main()
