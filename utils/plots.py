"""Training and validation pictures: curves from results.csv, label statistics, batches with boxes.

Matplotlib is used through its object API (Figure + Agg canvas): no global backend is selected, no window opens.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import xywh2xyxy

_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
            (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203)]


def color(index: int) -> tuple[int, int, int]:
    return _PALETTE[int(index) % len(_PALETTE)]


def _figure(figsize: tuple[float, float], rows: int = 1, cols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, tight_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols)
    return figure, axes


def draw_box(image: np.ndarray, xyxy, label: str, rgb: tuple[int, int, int], line_width: int = 2) -> None:
    """Draw one labelled box in place (image is BGR or RGB; the colour tuple is used as given)."""
    p1, p2 = (int(xyxy[0]), int(xyxy[1])), (int(xyxy[2]), int(xyxy[3]))
    cv2.rectangle(image, p1, p2, rgb, thickness=line_width, lineType=cv2.LINE_AA)
    if label:
        font_scale = max(line_width / 3, 0.35)
        (w, h), _ = cv2.getTextSize(label, 0, fontScale=font_scale, thickness=1)
        outside = p1[1] - h >= 3
        corner = (p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3)
        cv2.rectangle(image, p1, corner, rgb, -1, cv2.LINE_AA)
        cv2.putText(image, label, (p1[0], p1[1] - 2 if outside else p1[1] + h + 2), 0, font_scale,
                    (255, 255, 255), thickness=1, lineType=cv2.LINE_AA)


def plot_images(images: torch.Tensor, targets: torch.Tensor, paths, path: Path, names: dict | list,
                max_images: int = 16) -> Path:
    """A mosaic of a batch with boxes: targets rows (image, class, x, y, w, h[, conf]) in pixels."""
    images = images[:max_images].float()
    if images.max() <= 1:
        images = images * 255
    batch, _, height, width = images.shape
    grid = math.ceil(batch**0.5)
    mosaic = np.full((grid * height, grid * width, 3), 255, dtype=np.uint8)
    targets = targets.cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    for i in range(batch):
        x0, y0 = (i % grid) * width, (i // grid) * height
        tile = images[i].permute(1, 2, 0).cpu().numpy().astype(np.uint8).copy()
        rows = targets[targets[:, 0] == i]
        if len(rows):
            boxes = xywh2xyxy(rows[:, 2:6].copy())
            if boxes.max() <= 1.01:  # normalized
                boxes[:, [0, 2]] *= width
                boxes[:, [1, 3]] *= height
            for box, row in zip(boxes, rows):
                cls = int(row[1])
                label = names.get(cls, str(cls)) + (f" {row[6]:.2f}" if rows.shape[1] > 6 else "")
                draw_box(tile, box, label, color(cls), line_width=1)
        mosaic[y0:y0 + height, x0:x0 + width] = tile
        cv2.putText(mosaic, Path(paths[i]).name[:40], (x0 + 3, y0 + 12), 0, 0.4, (220, 220, 220), 1, cv2.LINE_AA)
    path = Path(path)
    cv2.imwrite(str(path), cv2.cvtColor(mosaic, cv2.COLOR_RGB2BGR))
    return path


PHASE_COLORS = {"dense": "#ffffff", "pruned": "#dbe9f6", "quantized": "#fde4cf", "pruned_quantized": "#e3d7ef"}


def phase_spans(rows: list[dict]) -> list[tuple[str, int, int]]:
    """(phase, first epoch, last epoch) of each stretch of epochs in one phase, in order."""
    spans: list[tuple[str, int, int]] = []
    for row in rows:
        phase, epoch = row.get("phase") or "dense", int(row["epoch"])
        if spans and spans[-1][0] == phase:
            spans[-1] = (phase, spans[-1][1], epoch)
        else:
            spans.append((phase, epoch, epoch))
    return spans


def plot_results(results_csv: Path) -> Path | None:
    """Training curves from results.csv into results.png beside it: losses, P, R, mAPs, sparsity and the learning
    rates, one panel each (no empty panel), with the phases (dense / pruned / quantized) shaded and named."""
    results_csv = Path(results_csv)
    if not results_csv.exists():
        return None
    with open(results_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    columns = [c for c in rows[0] if c not in ("epoch", "phase") and not c.startswith("x/")]
    rates = [c for c in rows[0] if c.startswith("x/lr")]
    panels = [[c] for c in columns] + ([rates] if rates else [])
    epochs = [int(r["epoch"]) for r in rows]
    spans = phase_spans(rows)
    figure, axes = _figure((12, 6), 2, math.ceil(len(panels) / 2))
    axes = axes.ravel()
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    for ax, panel in zip(axes, panels):
        for phase, first, last in spans if len(spans) > 1 else []:
            ax.axvspan(first - 0.5, last + 0.5, color=PHASE_COLORS.get(phase, "#eeeeee"), label=phase, zorder=0)
        for column in panel:
            values = [float(r[column]) if r[column] not in ("", None) else np.nan for r in rows]
            ax.plot(epochs, values, marker=".", linewidth=2, label=column if len(panel) > 1 else None)
        ax.set_title("learning rate" if len(panel) > 1 else panel[0], fontsize=10)
    if len(spans) > 1:
        handles, labels = axes[0].get_legend_handles_labels()
        axes[0].legend(handles, labels, fontsize=7, loc="upper right")
    if rates:
        axes[len(panels) - 1].legend(fontsize=7)
    path = results_csv.with_name("results.png")
    figure.savefig(path, dpi=120)
    return path


def plot_labels(labels: list[np.ndarray], names: dict | list, path: Path) -> Path:
    """Label statistics: instances per class and the distribution of box sizes."""
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    all_labels = np.concatenate([lb for lb in labels if len(lb)], 0) if any(len(lb) for lb in labels) else \
        np.zeros((0, 5))
    figure, axes = _figure((10, 4), 1, 2)
    counts = np.bincount(all_labels[:, 0].astype(int), minlength=len(names))
    axes[0].bar(range(len(counts)), counts)
    axes[0].set_xticks(range(len(counts)), [names.get(i, str(i)) for i in range(len(counts))], rotation=90)
    axes[0].set_ylabel("instances")
    axes[1].hist2d(all_labels[:, 3], all_labels[:, 4], bins=40) if len(all_labels) else None
    axes[1].set_xlabel("width")
    axes[1].set_ylabel("height")
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path
