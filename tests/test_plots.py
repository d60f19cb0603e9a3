"""Training plots: results.png has a panel per curve and shows where each phase of a recipe ran."""

from __future__ import annotations

import csv

import cv2

from utils.plots import phase_spans, plot_results

COLUMNS = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
           "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss", "x/lr0",
           "x/lr1", "x/lr2", "phase", "conv_sparsity"]


def test_phase_spans_are_the_stretches_of_epochs_in_one_phase():
    rows = [{"epoch": e, "phase": p} for e, p in enumerate(["dense"] * 2 + ["pruned"] * 3 + ["pruned_quantized"])]
    assert phase_spans(rows) == [("dense", 0, 1), ("pruned", 2, 4), ("pruned_quantized", 5, 5)]
    assert phase_spans([{"epoch": 3, "phase": "dense"}]) == [("dense", 3, 3)]


def test_results_png_is_written_with_phases_shaded(tmp_path):
    path = tmp_path / "results.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for epoch in range(6):
            phase = "dense" if epoch < 2 else "pruned" if epoch < 5 else "pruned_quantized"
            writer.writerow([epoch, *[0.1 + 0.01 * epoch] * 10, 0.01, 0.01, 0.05, phase, 0.1 * epoch])
    image = cv2.imread(str(plot_results(path)))
    assert image is not None and image.shape[:2] == (720, 1440)
    pruned_shade = (image == (246, 233, 219)).all(2).sum()  # PHASE_COLORS["pruned"] in BGR
    assert pruned_shade > 1000
