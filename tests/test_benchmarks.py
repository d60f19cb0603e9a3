"""benchmarks.py's report: BENCHMARKS.md shows each section's command and the figures computed from the results."""

from __future__ import annotations

import benchmarks
from utils import runtime_benchmark


def runtime_row(variant: str, runtime: str, median_ms: float, throughput: float) -> dict:
    return {"model": "yolov5s", "imgsz": 640, "variant": variant, "runtime": runtime, "median_ms": median_ms,
            "p90_ms": median_ms * 1.1, "throughput_ips": throughput, "map_note": "n/a (random weights)"}


def runtime_section() -> dict:
    rows = [runtime_row("dense FP32", "onnxruntime", 100.0, 10.0),
            runtime_row("pruned INT8 qdq", "onnxruntime", 64.0, 16.0),
            runtime_row("pruned 4-block INT8 integer", "deepsparse", 35.0, 30.0)]
    baseline = rows[0]
    for row in rows:  # what runtime_benchmark.measure adds
        row["speedup"] = round(baseline["median_ms"] / row["median_ms"], 2)
        row["throughput_ratio"] = round(row["throughput_ips"] / baseline["throughput_ips"], 2)
    settings = runtime_benchmark.Settings.quick()
    return {"rows": rows, "threads": [], "versions": {"onnxruntime": "1.x", "deepsparse": "1.8.0"},
            "threads_used": 2, "notes": ["yolov5s: random weights"], "checks": {}, "plot": "runs/bench/x.png",
            "settings": vars(settings), "minutes": 5.4, "load_average": [0.1, 1.7]}


def test_report_lists_commands_demo_recovery_and_the_fastest_file() -> None:
    results = {
        "commands": {"accuracy": {"command": "python benchmarks.py --only accuracy", "date": "2026-11-28 00:58 UTC"}},
        "demo": {"seconds": 468.0, "epochs": 10, "phase": "pruned_quantized", "sparsity": 0.743, "map50": 0.077,
                 "map": 0.044},
        "accuracy": {"data": "data/shapes_small.yaml", "imgsz": 224, "dense_epochs": 18, "finetune_epochs": 10,
                     "dense_map50": 0.4, "dense_map": 0.25, "dense_best_epoch": 27, "dense_minutes": 18.0,
                     "start_map": 0.2,
                     "sparse": [{"name": "pruned_quant", "recipe_args": '{"num_epochs": 10}', "epochs": 10,
                                 "phase": "pruned_quantized", "map50": 0.3, "map": 0.2, "sparsity": 0.832,
                                 "recovery": 0.2 / 0.25, "minutes": 7.0, "phase_minutes": {"pruned": 5.8}}]},
        "runtime": runtime_section(),
    }
    text = benchmarks.render_markdown(results)
    assert "- accuracy: `python benchmarks.py --only accuracy`, 2026-11-28 00:58 UTC" in text
    assert "7.8 min for train (10 epochs)" in text and "mAP@0.5 0.077" in text
    assert "| pruned_quant | `{\"num_epochs\": 10}` | 0.300 | 0.200 | 0.832 | 80.0% |" in text
    assert "| yolov5s | 640 | pruned 4-block INT8 integer | deepsparse | 35.0 |" in text
    assert "- yolov5s 640: pruned 4-block INT8 integer in deepsparse, 2.86x ORT dense FP32; best onnxruntime INT8: " \
           "pruned INT8 qdq 1.56x" in text


def test_best_of_uses_yolov5_fitness_within_a_phase() -> None:
    rows = [{"phase": "pruned", "metrics/mAP_0.5": "0.9", "metrics/mAP_0.5:0.95": "0.5"},
            {"phase": "pruned_quantized", "metrics/mAP_0.5": "0.2", "metrics/mAP_0.5:0.95": "0.3"},
            {"phase": "pruned_quantized", "metrics/mAP_0.5": "0.6", "metrics/mAP_0.5:0.95": "0.28"}]
    assert benchmarks.best_of(rows) is rows[0]
    # 0.1 * 0.6 + 0.9 * 0.28 = 0.312 > 0.1 * 0.2 + 0.9 * 0.3 = 0.29
    assert benchmarks.best_of(rows, "pruned_quantized") is rows[2]
