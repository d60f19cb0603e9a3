"""The demo's section: ``python demo.py`` timed, and its closing table."""

from __future__ import annotations

import json

from benchmarks.runs import ROOT, read_results, run_command


def demo() -> dict:
    """Run ``demo.py`` (what ``make demo`` runs after setup) and read its table: the dense start against the
    sparsified files, each validated in its runtime."""
    seconds = run_command(["demo.py"])
    rows = read_results(ROOT / "runs" / "train" / "demo")
    comparison = json.loads((ROOT / "runs" / "demo" / "demo" / "comparison.json").read_text(encoding="utf-8"))
    return {"seconds": seconds, "epochs": len(rows), "phase": rows[-1]["phase"], "rows": comparison}


def demo_markdown(d: dict) -> list[str]:
    """The demo's section: its time and its closing table (dense start against the sparsified files)."""
    lines = ["## The demo (`make demo` after setup: `python demo.py`)", "",
             f"{d['seconds'] / 60:.1f} min from the shipped dense yolov5n (`weights/yolov5n-shapes.pt`, the accuracy "
             f"protocol's start): export, a {d['epochs']}-epoch pruned_quant fine-tune distilled from it, export, "
             "validation of each file in its runtime (`data/shapes_tiny.yaml`, 160 px), detection. Its closing table:",
             "", "| model | mAP@0.5 | mAP@0.5:0.95 | ms per image (batch 1) | speed vs dense | file MB "
             "| conv weights zero |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['mAP@0.5']:.3f} | {r['mAP@0.5:0.95']:.3f} | {r['ms']:.2f} | "
              f"{d['rows'][0]['ms'] / r['ms']:.2f}x | {r['MB']:.1f} | {r['sparsity']:.0%} |" for r in d["rows"]]
    return [*lines, ""]
