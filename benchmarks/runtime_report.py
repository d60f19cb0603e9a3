"""The runtime section of BENCHMARKS.md: the table, the fastest file per model and size, and the findings computed
from this run's rows (one-off experiments are prose in BENCHMARKS.md's Notes, not re-run)."""

from __future__ import annotations

from benchmarks.runtime import THROUGHPUT_BATCH, VARIANTS


def markdown(section: dict) -> list[str]:
    """The BENCHMARKS.md lines of the runtime section."""
    rows = section["rows"]
    s = section["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in section["versions"].items())
    lines = ["## Deployment speed: ONNX runtimes on this CPU", "",
             f"Runtimes: {versions}; {section['threads_used']} threads (onnxruntime intra-op threads = cores, "
             f"inter-op 1, spinning off; DeepSparse num_cores = cores). Batch-1 latency: median and p90 of "
             f"{s['latency_runs']} runs ({s['latency_runs_large']} for yolov5s at 640) after {s['warmup']} warm-up "
             f"runs; throughput: batch {THROUGHPUT_BATCH}, median of {s['throughput_runs']} runs. The onnxruntime "
             f"files of one model and size are interleaved run by run, half the runs before and half after the "
             f"DeepSparse files, which are timed one engine at a time; 'vs ORT dense' is the ratio to onnxruntime "
             f"dense FP32 of the same model and size in the same process. Section took {section['minutes']} min; "
             f"1-minute load average {_load(section)} at start and end (other processes on the machine slow "
             f"DeepSparse with num_cores = all cores far more than onnxruntime).", ""]
    lines += [f"- {note}" for note in section["notes"]]
    lines += [f"- export check FAILED (the file is timed and scored all the same) for {model} {variant}: {line}"
              for model, checks in section.get("checks", {}).items() for variant, line in checks.items()
              if line.endswith("FAILED")]
    lines += ["", "| model | imgsz | variant | runtime | median ms | p90 ms | vs ORT dense | "
              f"batch {THROUGHPUT_BATCH} images/s | vs ORT dense | mAP@0.5:0.95 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        runtime = r["runtime"]
        if runtime == "deepsparse" and r.get("deepsparse_compiled", 1.0) < 0.5:
            runtime += f" ({r['deepsparse_compiled']:.0%} compiled, rest in its bundled onnxruntime)"
        accuracy = f"{r['map']:.3f}" if r.get("map") is not None else r.get("map_note", "n/a")
        lines.append(f"| {r['model']} | {r['imgsz']} | {r['variant']} | {runtime} | {r['median_ms']:.1f} | "
                     f"{r['p90_ms']:.1f} | {r.get('speedup', 0):.2f}x | {r.get('throughput_ips', 0):.1f} | "
                     f"{r.get('throughput_ratio', 0):.2f}x | {accuracy} |")
    lines.append("")
    best = _best_lines(rows)
    if best:
        lines += ["Fastest file per model and size (batch 1):", "", *best, ""]
    if section.get("threads"):
        lines += ["Thread settings (batch 1, interleaved):", "", "| model | imgsz | variant | runtime | setting | "
                  "median ms | p90 ms |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['imgsz']} | {r['variant']} | {r['runtime']} | {r['setting']} | "
                  f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} |" for r in section["threads"]]
        lines.append("")
    if section.get("study"):
        lines += ["DeepSparse INT8 by activation and sparsity (yolov5s, random weights, one-shot, whole graph INT8 "
                  "including Detect; each engine interleaved with onnxruntime dense FP32 SiLU, batch 1"
                  + (f"; {section['study_note']}" if section.get("study_note") else "") + "):", "",
                  "| imgsz | activation | sparsity (inner / sensitive layers) | conv weights zero | DeepSparse ms | "
                  "ORT dense ms | vs ORT dense |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['imgsz']} | {r['activation']} | {r['sparsity']} | {r['conv_sparsity']:.0%} | "
                  f"{r['deepsparse_ms']:.1f} | {r['ort_dense_ms']:.1f} | {r['speedup']:.2f}x |"
                  for r in section["study"]]
        lines.append("")
    lines += [f"Latency against mAP: `{section['plot']}`.", ""]
    lines += ["### Findings", "", *_measured_findings(section),
              "- One-off experiments that this command does not repeat: BENCHMARKS.md, Notes.", ""]
    return lines


def _range(values: list[float]) -> str:
    return f"{min(values):.2f}x" if len(values) == 1 or min(values) == max(values) else \
        f"{min(values):.2f}-{max(values):.2f}x"


def _measured_findings(section: dict) -> list[str]:
    """Summary lines computed from this run's rows (batch-1 ratios to onnxruntime dense FP32)."""
    rows = section["rows"]
    lines = []
    for runtime in section["versions"]:
        parts = []
        for variant in VARIANTS[1:]:
            ratios = [r["speedup"] for r in rows if r["runtime"] == runtime and r["variant"] == variant
                      and "speedup" in r]
            if ratios:
                parts.append(f"{variant} {_range(ratios)}")
        if parts:
            lines.append(f"- {runtime}, batch 1, over models and sizes: " + "; ".join(parts) + " of ORT dense FP32.")
    study = section.get("threads") or []

    def median(runtime: str, variant: str, setting: str) -> float | None:
        found = [r["median_ms"] for r in study if r["runtime"] == runtime and r["variant"] == variant
                 and r["setting"] == setting]
        return found[0] if found else None

    cores = section["threads_used"]
    for variant in ("dense FP32", "pruned INT8 qdq"):
        off = median("onnxruntime", variant, f"{cores} threads, spinning off")
        on = median("onnxruntime", variant, f"{cores} threads, spinning on")
        one = median("onnxruntime", variant, "1 threads, spinning off")
        if off and on and one:
            lines.append(f"- onnxruntime {variant}: {cores} threads spinning off {off:.1f} ms, on {on:.1f} ms; "
                         f"1 thread {one:.1f} ms.")
    for variant in ("dense FP32", "pruned INT8 integer"):
        one, every = median("deepsparse", variant, "num_cores 1"), median("deepsparse", variant, f"num_cores {cores}")
        if one and every:
            lines.append(f"- DeepSparse {variant}: num_cores 1 {one:.1f} ms, num_cores {cores} {every:.1f} ms.")
    by_activation: dict[str, list[dict]] = {}
    for row in section.get("study") or []:
        by_activation.setdefault(row["activation"], []).append(row)
    if by_activation:
        parts, spread = [], 0.0
        for activation, group in by_activation.items():
            times = [r["deepsparse_ms"] for r in group]
            spread = max(spread, max(times) / min(times) - 1)
            parts.append(f"{activation} {min(times):.1f}-{max(times):.1f} ms "
                         f"({_range([r['speedup'] for r in group])} ORT dense)")
        lines.append(f"- DeepSparse INT8 study (yolov5s, whole graph INT8): {', '.join(parts)}; within one "
                     f"activation, sparsity (none to 4-block 81%) moves the latency by at most {spread:.0%}.")
    return lines


def _load(section: dict) -> str:
    values = section.get("load_average") or []
    return " / ".join(f"{v:.1f}" for v in values if v is not None) or "unknown"


def _best_lines(rows: list[dict]) -> list[str]:
    lines = []
    for model, imgsz in sorted({(r["model"], r["imgsz"]) for r in rows}):
        group = [r for r in rows if r["model"] == model and r["imgsz"] == imgsz and "speedup" in r]
        if not group:
            continue
        best = max(group, key=lambda r: r["speedup"])
        ort_int8 = [r for r in group if r["runtime"] == "onnxruntime" and "INT8" in r["variant"]]
        best_ort = max(ort_int8, key=lambda r: r["speedup"]) if ort_int8 else None
        runtime = best["runtime"] + (" (its bundled onnxruntime)" if best.get("deepsparse_compiled", 1) < 0.5 else "")
        line = f"- {model} {imgsz}: {best['variant']} in {runtime}, {best['speedup']:.2f}x ORT dense FP32"
        if best_ort:
            line += f"; best onnxruntime INT8: {best_ort['variant']} {best_ort['speedup']:.2f}x"
        lines.append(line)
    return lines
