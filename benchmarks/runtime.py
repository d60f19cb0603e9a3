"""Deployment speed (``benchmarks.py --only runtime``): dense, pruned and pruned+INT8 ONNX files in each runtime.

For yolov5n and yolov5s at 320 and 640: batch-1 latency (median and p90) and batch-8 throughput of every file in
onnxruntime and (when installed) DeepSparse, with the ratio to onnxruntime dense FP32 of the same model and size. All
files of one model and size are timed in one loop that interleaves them run by run, so that the drift of a shared
machine hits every variant alike. Files are exported once per model with dynamic batch and size (measured: no speed
difference to a static graph in onnxruntime) and checked against torch by export.py.

onnxruntime files are interleaved run by run. DeepSparse engines are timed one at a time, so that a single DeepSparse
thread pool is alive while it is timed. DeepSparse with num_cores = all cores collapses when other processes load the
machine (a worker descheduled at every layer's barrier: measured 0.6 ms -> 260 ms for yolov5n at 64 px on this 2-core
machine), so the section records the load average, and the thread study includes num_cores 1.

Weights: yolov5n uses the accuracy protocol's trained checkpoints when they exist (``runs/bench/protocol``: its
start and the fine-tunes of ``PROTOCOL_RUNS``), so the mAP column is real; otherwise (and always for yolov5s) random
weights with BatchNorm statistics of real images, pruned and quantized one-shot by the recipes (magnitude pruning,
post-training calibration): speed is the same, mAP is n/a.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import export
import val
from benchmarks.runs import BENCH_DIR
from models.yolo import DetectionModel
from utils.checkpoint import model_checkpoint, save_checkpoint
from utils.inference import cpu_cores
from utils.timing import deepsparse_runner, onnxruntime_runner, stats, time_interleaved

LOGGER = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DATA = "data/shapes.yaml"
VARIANTS = ("dense FP32", "pruned FP32", "pruned INT8 integer", "pruned INT8 qdq", "pruned 4-block INT8 integer",
            "ReLU INT8 integer", "ReLU INT8 qdq", "ReLU 4-block INT8 integer", "per-layer pruned INT8 integer",
            "ReLU per-layer 4-block INT8 integer")
# Trained files only: the fine-tunes whose layer sparsities come from sensitivity.py (large P5 convs at 95%, the
# small early convs dense): the same sparsity as the group layout where it costs least accuracy, but not
# necessarily where it saves the most time, so they are timed beside the group-layout files.
LAYOUT_VARIANTS = {"sens": "per-layer pruned INT8 integer", "relu_block4_sens": "ReLU per-layer 4-block INT8 integer"}
# The accuracy protocol's run folder of each file (runs/bench/protocol/<name>; the first one found is used): the
# distilled pruned_quant fine-tune, its pruned-only twin for the FP32 pruned file, the 4-block runs and the ReLU ones.
PROTOCOL_RUNS = {"quantized": ("pruned_quant_distill", "pruned_quant"), "pruned": ("pruned_distill",),
                 "block4": ("pruned_quant_block4",), "relu": ("relu_quant",), "relu_block4": ("relu_block4_quant",),
                 "sens": ("pruned_quant_distill_sens",), "relu_block4_sens": ("relu_block4_quant_sens",)}
# Recipe variables of the speed-first variant: pruning in blocks of 4 input channels, and Detect's output convs
# quantized too (the recipes keep them float for accuracy; DeepSparse runs the whole graph in INT8 then).
BLOCK4 = {"mask_type": [1, 4], "float_modules": ["SiLU", "Upsample", "Concat", "MaxPool2d"]}
THROUGHPUT_BATCH = 8


@dataclass
class Settings:
    """How much to measure; ``quick`` is the few-minute version."""

    models: tuple[str, ...] = ("yolov5n", "yolov5s")
    sizes: tuple[int, ...] = (320, 640)
    latency_runs: int = 30
    latency_runs_large: int = 20  # yolov5s at 640
    throughput_runs: int = 6
    warmup: int = 5
    calib_images: int = 32
    threads_study: bool = True
    deepsparse_study: bool = True  # activation x sparsity of yolov5s INT8 at the largest size (DeepSparse only)
    accuracy: bool = True
    map_sizes: tuple[int, ...] = (320, 640)
    data: str = DATA  # validation set of the mAP column (the accuracy section's dataset)
    start: str = "dense"  # folder of the accuracy protocol's start in runs/bench/protocol

    @classmethod
    def quick(cls) -> Settings:
        return cls(latency_runs=20, latency_runs_large=20, throughput_runs=3, warmup=3, calib_images=8,
                   map_sizes=(320,))


@dataclass
class ModelFiles:
    """One model's ONNX files by variant, and where their weights came from."""

    model: str
    trained: bool
    files: dict[str, Path]
    checks: dict[str, str] = field(default_factory=dict)  # variant -> export check line
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------------ files


def condition_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """Set BatchNorm statistics from real images (uint8), as training would.

    A random network's activations otherwise shrink towards zero layer after layer, and 8-bit ranges calibrated on
    ~0 make no sense (int32 bias overflow): calibration and export checks of random models need realistic ranges.
    """
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batchnorms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches seen
    model.train()
    with torch.no_grad():
        model(images.float() / 255)
    for bn in batchnorms:
        bn.momentum = 0.03
    return model.eval()


def _random_checkpoint(cfg: str, folder: Path, imgsz: int, name: str = "random.pt") -> Path:
    torch.manual_seed(0)
    model = DetectionModel(cfg if cfg.endswith(".yaml") else f"{cfg}.yaml", nc=80)  # COCO-sized head: deployment
    model.names = [f"class{i}" for i in range(80)]
    images, _, _ = export.sample_images(DATA, (imgsz, imgsz), 8)
    model = condition_batchnorm(model, images)
    return save_checkpoint(model_checkpoint(model, model.names), folder / name)


def trained_checkpoints(protocol_dir: Path, start: str = "dense") -> dict[str, Path | None] | None:
    """The accuracy protocol's yolov5n checkpoints by file (PROTOCOL_RUNS; None for a run it has not trained), or
    None when it has no start and no pruned_quant run. ``start``: the folder of the protocol's start."""
    dense = protocol_dir / start / "weights" / "best.pt"

    def final(names: tuple[str, ...], weights: str = "last.pt") -> Path | None:
        return next((protocol_dir / n / "weights" / weights for n in names
                     if (protocol_dir / n / "weights" / weights).is_file()), None)

    found = {name: final(runs) for name, runs in PROTOCOL_RUNS.items()}
    if not (dense.is_file() and found["quantized"]):
        return None
    pruned = final(PROTOCOL_RUNS["pruned"], "best.pt") or final(PROTOCOL_RUNS["quantized"], "best_pruned.pt")
    return {**found, "dense": dense, "pruned": pruned}


def export_model_files(cfg: str, folder: Path, settings: Settings, protocol_dir: Path | None,
                       start: str = "dense") -> ModelFiles:
    """Export the variants of ``cfg`` (dynamic batch and size) into ``folder``; checks recorded per file."""

    folder.mkdir(parents=True, exist_ok=True)
    trained = trained_checkpoints(protocol_dir, start) if cfg == "yolov5n" and protocol_dir is not None else None
    calibration_size = 320
    notes = []
    pruned_quant = f"recipes/{cfg}.pruned_quant.yaml"
    if trained:
        sources = {"dense": (trained["dense"], None, None),
                   "pruned": (trained["pruned"], None, None) if trained["pruned"]
                   else (trained["dense"], f"recipes/{cfg}.pruned.yaml", None),
                   "quantized": (trained["quantized"], None, None),
                   "block4": (trained["block4"], None, None) if trained["block4"]
                   else (trained["dense"], pruned_quant, BLOCK4)}
        sources.update({name: (trained[name], None, None) for name in ("relu", "relu_block4", *LAYOUT_VARIANTS)
                        if trained[name]})
        where = protocol_dir.relative_to(ROOT) if protocol_dir.is_relative_to(ROOT) else protocol_dir
        used = {name: path.parent.parent.name for name, path in trained.items() if path is not None}
        notes.append(f"{cfg}: trained weights of {where}: " + ", ".join(f"{k} {v}" for k, v in used.items())
                     + ("" if trained["pruned"] else "; pruned FP32: one-shot pruning of dense")
                     + ("" if trained["block4"] else "; 4-block: one-shot of dense, post-training quantization")
                     + ("" if trained["relu"] or trained["relu_block4"] else "; no ReLU run"))
    else:
        dense = _random_checkpoint(cfg, folder, calibration_size)
        relu = _random_checkpoint(f"{cfg}-relu.yaml", folder, calibration_size, "random-relu.pt")
        sources = {"dense": (dense, None, None), "pruned": (dense, f"recipes/{cfg}.pruned.yaml", None),
                   "quantized": (dense, pruned_quant, None), "block4": (dense, pruned_quant, BLOCK4),
                   "relu": (relu, f"recipes/{cfg}.quant.yaml", None),
                   "relu_block4": (relu, pruned_quant, BLOCK4)}
        notes.append(f"{cfg}: random weights (80 classes), one-shot {cfg}.pruned.yaml / {cfg}.pruned_quant.yaml "
                     f"(4-block: the same with --recipe-args '{json.dumps(BLOCK4)}'; ReLU: models/{cfg}-relu.yaml, "
                     f"one-shot {cfg}.quant.yaml as shipped, not pruned, and 4-block pruned + INT8 as above; "
                     f"post-training calibration on "
                     f"{settings.calib_images} images)")
    files: dict[str, Path] = {}
    checks: dict[str, str] = {}
    for name, (weights, recipe, recipe_args) in sources.items():
        target = folder / f"{name}.pt"
        shutil.copyfile(weights, target)
        started = time.time()
        integer_only = name in ("block4", "relu_block4", *LAYOUT_VARIANTS)  # DeepSparse's files: no QDQ twin
        report = export.export_onnx(target, imgsz=calibration_size, dynamic=True, one_shot=recipe, data=DATA,
                                    calib_data=settings.calib_images, device="cpu",
                                    int8_format="integer" if integer_only else "both",
                                    recipe_args=recipe_args)
        LOGGER.info("exported %s %s in %.0fs", cfg, name, time.time() - started)
        for each in (report, *report.others):
            kind = "ReLU" if name == "relu" else "pruned"
            int8 = f"{kind} INT8 qdq" if each.path.name.endswith(".qdq.onnx") else f"{kind} INT8 integer"
            variant = {"dense": "dense FP32", "pruned": "pruned FP32", "block4": "pruned 4-block INT8 integer",
                       "relu_block4": "ReLU 4-block INT8 integer", **LAYOUT_VARIANTS}.get(name, int8)
            files[variant] = each.path
            checks[variant] = each.check.line().strip()
            notes += [f"{cfg} {variant} file: {note}" for note in each.notes if note.startswith("onnxruntime runs")]
            if not each.check.passed:
                LOGGER.warning("%s %s: export check failed: %s", cfg, variant, each.check.line())
    return ModelFiles(model=cfg, trained=bool(trained), files=files, checks=checks, notes=notes)


# ---------------------------------------------------------------------------------------------------------- runners


def _timed_onnxruntime_and_deepsparse(files: ModelFiles, batch: int, imgsz: int, runtimes: list[str], runs: int,
                                      warmup: int, threads: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Milliseconds per call by "variant|runtime", and the fraction of each file DeepSparse compiles.

    onnxruntime sessions are interleaved run by run, half of the runs before and half after the DeepSparse files.
    DeepSparse engines are timed one at a time (created, warmed up, timed, freed), one thread pool alive at a time.
    """
    import gc

    sessions = {f"{variant}|onnxruntime": onnxruntime_runner(path, batch, imgsz, threads)
                for variant, path in files.files.items()}
    first = max(runs // 2, 1)
    times = time_interleaved(sessions, first, warmup)
    compiled: dict[str, float] = {}
    if "deepsparse" in runtimes:
        for variant, path in files.files.items():
            runner, compiled[variant] = deepsparse_runner(path, batch, imgsz, threads)
            times.update(time_interleaved({f"{variant}|deepsparse": runner}, runs, warmup))
            del runner
            gc.collect()
    for key, values in time_interleaved(sessions, runs - first, 0).items():
        times[key] += values
    return times, compiled


def measure(files: ModelFiles, imgsz: int, runtimes: list[str], settings: Settings, threads: int) -> list[dict]:
    """Latency (batch 1) and throughput (batch 8) of every variant in every runtime."""
    large = files.model == "yolov5s" and imgsz >= 640
    rows: dict[tuple[str, str], dict] = {}
    for variant, path in files.files.items():
        for runtime in runtimes:
            rows[(variant, runtime)] = {"model": files.model, "imgsz": imgsz, "variant": variant, "runtime": runtime,
                                        "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT)
                                        else str(path)}
    for batch, runs in ((1, settings.latency_runs_large if large else settings.latency_runs),
                        (THROUGHPUT_BATCH, settings.throughput_runs)):
        LOGGER.info("timing %s %d px batch %d: %d files in %s, %d runs", files.model, imgsz, batch,
                    len(files.files), " and ".join(runtimes), runs)
        times, compiled = _timed_onnxruntime_and_deepsparse(files, batch, imgsz, runtimes, runs, settings.warmup,
                                                            threads)
        for key, values in times.items():
            variant, runtime = key.split("|")
            row = rows[(variant, runtime)]
            if batch == 1:
                row.update(stats(values), runs=len(values))
            else:
                row["throughput_ips"] = round(batch * 1e3 / statistics.median(values), 2)
                row["throughput_runs"] = len(values)
        for variant, fraction in compiled.items():
            rows[(variant, "deepsparse")]["deepsparse_compiled"] = fraction
    baseline = rows.get(("dense FP32", "onnxruntime"))
    for row in rows.values():
        if baseline:
            row["speedup"] = round(baseline["median_ms"] / row["median_ms"], 2)
            row["throughput_ratio"] = round(row["throughput_ips"] / baseline["throughput_ips"], 2)
    return list(rows.values())


def threads_study(files: ModelFiles, imgsz: int, runtimes: list[str], runs: int, warmup: int) -> list[dict]:
    """onnxruntime threads and spinning, DeepSparse cores: dense FP32 and the runtime's best INT8 file, batch 1."""
    import gc

    cores = max(os.cpu_count() or 1, 1)
    counts = sorted({1, cores})
    sessions: dict[str, Callable] = {}
    for variant in ("dense FP32", "pruned INT8 qdq"):
        for threads in counts:
            for spinning in (False, True):
                sessions[f"{variant}|onnxruntime|{threads} threads, spinning {'on' if spinning else 'off'}"] = \
                    onnxruntime_runner(files.files[variant], 1, imgsz, threads, spinning)
    times = time_interleaved(sessions, runs, warmup)
    if "deepsparse" in runtimes:
        for variant in ("dense FP32", "pruned INT8 integer"):
            for threads in counts:
                key = f"{variant}|deepsparse|num_cores {threads}"
                runner = deepsparse_runner(files.files[variant], 1, imgsz, threads)[0]
                times.update(time_interleaved({key: runner}, runs, warmup))
                del runner
                gc.collect()
    rows = []
    for key, values in times.items():
        variant, runtime, setting = key.split("|")
        rows.append({"model": files.model, "imgsz": imgsz, "variant": variant, "runtime": runtime,
                     "setting": setting, **stats(values), "runs": runs})
    return rows


# DeepSparse study: what makes the INT8 file fast on this CPU. Every file quantizes the whole graph (Detect included,
# as the speed-first file does); sparsity is 4-block (mask_type [1, 4]) at the yolov5s recipe's two layer groups.
STUDY_SPARSITIES = {"none (INT8 only)": None, "4-block 40% / 30%": (0.4, 0.3), "4-block 85% / 70%": (0.85, 0.7)}
STUDY_ACTIVATIONS = {"SiLU": "yolov5s.yaml", "ReLU": "yolov5s-relu.yaml"}


def deepsparse_study(folder: Path, imgsz: int, settings: Settings, threads: int) -> list[dict]:
    """yolov5s INT8 in DeepSparse by activation (SiLU, ReLU) and sparsity (none, light, heavy 4-block), one-shot
    from random weights; each engine is timed interleaved with onnxruntime dense FP32 (SiLU) of the same size, so
    each ratio comes from one window of time."""
    import gc


    folder.mkdir(parents=True, exist_ok=True)
    quantize_all = {"float_modules": BLOCK4["float_modules"]}
    files: dict[tuple[str, str], tuple[Path, float]] = {}
    for activation, cfg in STUDY_ACTIVATIONS.items():
        source = _random_checkpoint(cfg, folder, 320, f"random-{activation.lower()}.pt")
        for label, sparsity in STUDY_SPARSITIES.items():
            target = folder / f"{activation.lower()}-{'int8' if sparsity is None else f'{sparsity[0]:.2f}'}.pt"
            shutil.copyfile(source, target)
            recipe, args = "recipes/yolov5s.quant.yaml", dict(quantize_all)
            if sparsity is not None:
                recipe = "recipes/yolov5s.pruned_quant.yaml"
                args = {**BLOCK4, "final_sparsity_inner": sparsity[0], "final_sparsity_sensitive": sparsity[1]}
            report = export.export_onnx(target, imgsz=320, dynamic=True, one_shot=recipe, data=DATA,
                                        calib_data=settings.calib_images, device="cpu", int8_format="integer",
                                        recipe_args=args)
            if not report.check.passed:
                LOGGER.warning("study %s %s: export check: %s", activation, label, report.check.line())
            files[(activation, label)] = (report.path, report.summary.sparsity)
    dense = folder / "dense-silu.pt"
    shutil.copyfile(folder / "random-silu.pt", dense)
    ort_dense = onnxruntime_runner(export.export_onnx(dense, imgsz=320, dynamic=True, device="cpu").path, 1, imgsz,
                                   threads)
    rows = []
    for (activation, label), (path, sparsity) in files.items():
        runner = deepsparse_runner(path, 1, imgsz, threads)[0]
        times = time_interleaved({"ort": ort_dense, "deepsparse": runner}, settings.latency_runs_large,
                                 settings.warmup)
        del runner
        gc.collect()
        ort, deepsparse = statistics.median(times["ort"]), statistics.median(times["deepsparse"])
        rows.append({"model": "yolov5s", "imgsz": imgsz, "activation": activation, "sparsity": label,
                     "conv_sparsity": round(sparsity, 3), "deepsparse_ms": round(deepsparse, 2),
                     "ort_dense_ms": round(ort, 2), "speedup": round(ort / deepsparse, 2)})
    return rows


# --------------------------------------------------------------------------------------------------------- accuracy


def mean_average_precision(path: Path, imgsz: int, data: str) -> float:
    """mAP@0.5:0.95 of an ONNX file on the built-in validation set, in onnxruntime.

    One runtime suffices: the files are the same arithmetic in both (tests/test_deploy.py: DeepSparse and onnxruntime
    agree on the integer file within 1e-4 px), and DeepSparse would compile an engine for every rectangular batch.
    """

    metrics = val.run(data=data, weights=str(path), imgsz=imgsz, batch_size=16, runtime="onnxruntime", device="cpu",
                      workers=2, project=ROOT / "runs" / "bench" / "val", name="runtime", exist_ok=True,
                      plots=False).metrics
    return metrics.map


# ------------------------------------------------------------------------------------------------------------- plot


def plot_latency_vs_map(rows: list[dict], path: Path) -> Path:
    """Batch-1 latency against mAP per variant and runtime (random-weight rows: latency bars, mAP n/a)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["imgsz"]) for r in rows})
    figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4.2), squeeze=False)
    markers = {"onnxruntime": "o", "deepsparse": "s"}
    colors = dict(zip(VARIANTS, ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                                 "tab:brown", "tab:pink", "tab:olive", "tab:cyan")))
    for axis, (model, imgsz) in zip(axes[0], groups):
        selected = [r for r in rows if r["model"] == model and r["imgsz"] == imgsz]
        with_map = [r for r in selected if r.get("map") is not None]
        if with_map:
            for r in with_map:
                axis.scatter(r["median_ms"], r["map"], marker=markers.get(r["runtime"], "x"),
                             color=colors.get(r["variant"], "k"), s=60, label=f"{r['variant']} ({r['runtime']})")
            axis.set_xlabel("latency, batch 1, median (ms)")
            axis.set_ylabel("mAP@0.5:0.95 (built-in val set)")
            axis.legend(fontsize=7)
        else:
            labels = [f"{r['variant']}\n{r['runtime']}" for r in selected]
            axis.barh(labels, [r["median_ms"] for r in selected],
                      color=[colors.get(r["variant"], "k") for r in selected])
            axis.set_xlabel("latency, batch 1, median (ms); mAP n/a (random weights)")
            axis.tick_params(axis="y", labelsize=7)
        axis.set_title(f"{model} {imgsz} px")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------------------- section


def installed_runtimes() -> dict[str, str]:
    import importlib.util

    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if importlib.util.find_spec("deepsparse") is not None:
        import deepsparse

        versions["deepsparse"] = deepsparse.__version__
    return versions


def run_section(settings: Settings, bench_dir: Path) -> dict:
    """Export, time, validate and plot; returns the results to store under ``results["runtime"]``."""
    started = time.time()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    versions = installed_runtimes()
    runtimes = list(versions)
    threads = cpu_cores()
    protocol_dir = bench_dir / "protocol"
    rows: list[dict] = []
    thread_rows: list[dict] = []
    notes: list[str] = []
    checks: dict[str, dict[str, str]] = {}
    for cfg in settings.models:
        files = export_model_files(cfg, bench_dir / "runtime" / cfg, settings, protocol_dir, settings.start)
        notes += files.notes
        checks[cfg] = files.checks
        model_rows = []
        for imgsz in settings.sizes:
            model_rows += measure(files, imgsz, runtimes, settings, threads)
        maps: dict[tuple[str, int], float] = {}
        if files.trained and settings.accuracy:
            for imgsz in settings.map_sizes:
                for variant, path in files.files.items():
                    maps[(variant, imgsz)] = mean_average_precision(path, imgsz, settings.data)
        for row in model_rows:
            row["map"] = maps.get((row["variant"], row["imgsz"]))
            row["map_note"] = "" if row["map"] is not None else (
                "n/a (random weights)" if not files.trained else "not measured at this size")
        rows += model_rows
        if settings.threads_study and cfg == settings.models[-1]:
            thread_rows = threads_study(files, settings.sizes[0], runtimes, min(settings.latency_runs, 12),
                                        settings.warmup)
    study_rows = []
    if settings.deepsparse_study and "deepsparse" in runtimes and "yolov5s" in settings.models:
        study_rows = deepsparse_study(bench_dir / "runtime" / "study", max(settings.sizes), settings, threads)
    plot = plot_latency_vs_map(rows, bench_dir / "latency_vs_map.png")
    return {"rows": rows, "threads": thread_rows, "study": study_rows, "versions": versions, "threads_used": threads,
            "notes": notes, "checks": checks,
            "plot": str(plot.relative_to(ROOT)) if plot.is_relative_to(ROOT) else str(plot),
            "settings": asdict(settings), "minutes": round((time.time() - started) / 60, 1),
            "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None]}


def runtime(quick: bool, data: str, start: str = "dense") -> dict:
    """Speed of dense / pruned / pruned+INT8 ONNX files in each installed runtime; yolov5n's files come from the
    accuracy protocol's runs whose start is in the folder ``start`` (validated on ``data``, its dataset)."""
    settings = Settings.quick() if quick else Settings()
    settings.data, settings.start = data, start
    return run_section(settings, BENCH_DIR)
