"""BENCHMARKS.md and benchmarks.json: each section under the command, date, machine and versions that measured it;
sections a run does not measure keep their earlier text."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.accuracy import accuracy_markdown, attempt_markdown
from benchmarks.demo import demo_markdown
from benchmarks.runs import ROOT
from benchmarks.runtime_report import markdown as runtime_markdown
from benchmarks.scratch import scratch_markdown

RESULTS = ROOT / "benchmarks.json"  # tracked beside BENCHMARKS.md: a new machine starts from the earlier sections
# Each section of BENCHMARKS.md starts with one of these headings; a run that does not measure a section keeps its text.
SECTION_HEADINGS = {"throughput": "## Training and validation throughput", "demo": "## The demo",
                    "accuracy": "## Dense vs pruned", "scratch": "## Same budget from scratch",
                    "runtime": "## Deployment speed",
                    "notes": "## Notes"}  # prose no command writes: kept as it is by every run


def kept_sections(text: str) -> dict[str, list[str]]:
    """The lines of each section of an earlier BENCHMARKS.md, by section name (heading to the next ``## ``)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            name = next((key for key, heading in SECTION_HEADINGS.items() if line.startswith(heading)), None)
            current = sections.setdefault(name, []) if name else None
        if current is not None:
            current.append(line)
    return sections


def write_markdown(results: dict, path: Path = ROOT / "BENCHMARKS.md") -> Path:
    """BENCHMARKS.md from ``results`` (saved to benchmarks.json); sections this run did not measure keep their text
    from the earlier file, with the machine and command that measured them."""
    earlier = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(render_markdown(results, kept_sections(earlier)), encoding="utf-8")
    RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def render_markdown(results: dict, kept: dict[str, list[str]] | None = None) -> str:
    """The text of BENCHMARKS.md: one section per benchmark, each under a line that names its command, date, machine
    and versions. Sections absent from ``results`` are taken from ``kept`` (an earlier file's, see kept_sections)."""
    kept = kept or {}
    lines = ["# Benchmarks", "",
             "Each section names the command that measured it, when, and on which machine: a run rewrites only the "
             "sections it measures, so sections can come from different machines (compare ratios within a section, "
             "not absolute times across them). The results behind the sections are in benchmarks.json.", "",
             *val_fix_note(results), ""]
    sections: dict[str, list[str]] = {}
    if "throughput" in results:
        sections["throughput"] = [
            "## Training and validation throughput (random data, batch as shown, median of steps)", "",
            "| model | imgsz | batch | train images/s | val images/s (forward + NMS) |", "|---|---|---|---|---|",
            *[f"| {r['model']} | {r['imgsz']} | {r['batch']} | {r['train_images_per_s']} | {r['val_images_per_s']} |"
              for r in results["throughput"]], ""]
    if "demo" in results:
        d = results["demo"]
        sections["demo"] = demo_markdown(d) if "rows" in d else [  # "rows": the demo that starts from a trained model
            "## The demo (`make demo` after setup: `python demo.py`)", "",
            f"{d['seconds'] / 60:.1f} min for train ({d['epochs']} epochs) + val + export + detect. Final model "
            f"({d['phase']}, {d['sparsity']:.1%} of conv weights zero): mAP@0.5 {d['map50']:.3f}, mAP@0.5:0.95 "
            f"{d['map']:.3f} on the built-in validation images. A few minutes of CPU training from scratch shows the "
            "pipeline, not the accuracy a longer run reaches (see below).", ""]
    if results.get("accuracy", {}).get("protocol") == 2:  # earlier layouts: their text is kept instead
        sections["accuracy"] = accuracy_markdown(results["accuracy"])
        for attempt in results.get("accuracy_attempts", {}).values():
            sections["accuracy"] += attempt_markdown(attempt, results["accuracy"])
    if "scratch" in results:
        sections["scratch"] = scratch_markdown(results["scratch"])
    if isinstance(results.get("runtime"), dict):  # older results.json files hold a list: skipped
        sections["runtime"] = runtime_markdown(results["runtime"])
    commands = results.get("commands", {})
    for name in SECTION_HEADINGS:
        if name in sections:
            run = {"command": "python benchmarks.py", "date": "date unknown", "machine": "an unrecorded machine",
                   "versions": "versions unrecorded", **commands.get(name, {})}
            measured = f"Measured by `{run['command']}`, {run['date']}, on {run['machine']} ({run['versions']})."
            heading, *rest = sections[name]
            lines += [heading, "", measured, *rest]
        elif name in kept:
            lines += kept[name]
    return "\n".join(lines).rstrip("\n") + "\n"


VAL_FIX_DATE = "2026-12-04"  # val.py matches Ultralytics' mAP from this date on
MAP_SECTIONS = ("demo", "accuracy", "scratch", "runtime")  # sections with an mAP column


def val_fix_note(results: dict) -> list[str]:
    """The paragraph on the val.py fix, naming the sections with mAPs that were measured before it, if any."""
    commands = results.get("commands", {})
    older = [name for name in MAP_SECTIONS if commands.get(name, {}).get("date", "") < VAL_FIX_DATE]
    note = ("Sections measured since 2026-12-04 print the mAP that Ultralytics' val prints. Earlier, val.py gave a "
            "label to the detection of best IoU rather than the most confident one and sampled AP the COCO way; it "
            "read lower than Ultralytics' val on the same predictions (by 14% mAP@0.5 on one Ultralytics-trained "
            "yolov5n).")
    if older:
        note += (f" Measured before the fix and not re-measured (their checkpoints were not kept): "
                 f"{', '.join(older)}; compare their ratios, not their mAPs with the other sections'.")
    return [note]

