"""Ultralytics YOLOv5 v7.0 val's numbers, recomputed from scratch with plain loops for the tests to compare against.

Written from the rules, not from the project's code: matching (each detection claims its best-IoU label of its class
at or above the threshold; each claimed label goes to its most confident claimant), AP (precision envelope closed
with (0, 1) and (1, 0), interpolated at 101 recall points, trapezoid rule), and P/R read at the confidence where the
class-mean F1, box-filtered over 0.1 of the confidence axis, is largest.
"""

from __future__ import annotations

import numpy as np


def pairwise_iou(labels_xyxy: np.ndarray, detections_xyxy: np.ndarray) -> np.ndarray:
    """(m, n) IoU in float64."""
    iou = np.zeros((len(labels_xyxy), len(detections_xyxy)))
    for i, (ax1, ay1, ax2, ay2) in enumerate(np.asarray(labels_xyxy, dtype=np.float64)):
        for j, (bx1, by1, bx2, by2) in enumerate(np.asarray(detections_xyxy, dtype=np.float64)):
            inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
            union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
            iou[i, j] = inter / union if union > 0 else 0.0
    return iou


def ultralytics_match(detections: np.ndarray, labels: np.ndarray, thresholds: np.ndarray,
                      confidence_first: bool = True) -> np.ndarray:
    """(n, t) bool true positives. detections (n, 6) xyxy, conf, class; labels (m, 5) class, xyxy.

    ``confidence_first=False`` gives a claimed label to its best-IoU claimant instead (the rule this project used
    before it matched Ultralytics), so a test can show that its data tells the two apart.
    """
    detections, labels = np.asarray(detections, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    correct = np.zeros((len(detections), len(thresholds)), dtype=bool)
    iou = pairwise_iou(labels[:, 1:], detections[:, :4])
    for t, threshold in enumerate(thresholds):
        claims: dict[int, list[int]] = {}
        for d in range(len(detections)):
            candidates = [k for k in range(len(labels))
                          if labels[k, 0] == detections[d, 5] and iou[k, d] >= threshold]
            if candidates:
                claims.setdefault(max(candidates, key=lambda k: iou[k, d]), []).append(d)
        for k, claimants in claims.items():
            ranked = sorted(claimants, key=lambda d, k=k: (-detections[d, 4] if confidence_first else -iou[k, d], d))
            correct[ranked[0], t] = True
    return correct


def trapezoid_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    recall_points = [0.0, *recall, 1.0]
    envelope = [1.0, *precision, 0.0]
    for i in range(len(envelope) - 2, -1, -1):
        envelope[i] = max(envelope[i], envelope[i + 1])
    xs = [k / 100 for k in range(101)]
    ys = [float(np.interp(x, recall_points, envelope)) for x in xs]
    return sum((xs[k + 1] - xs[k]) * (ys[k] + ys[k + 1]) / 2 for k in range(100))


def _box_filter(values: np.ndarray, half_width: int) -> np.ndarray:
    """Mean over a window of 2 * half_width + 1 points, the ends repeated beyond the edges."""
    n = len(values)
    return np.array([np.mean([values[min(max(i + k, 0), n - 1)] for k in range(-half_width, half_width + 1)])
                     for i in range(n)])


def ultralytics_metrics(correct: np.ndarray, confidence: np.ndarray, predicted_class: np.ndarray,
                        label_class: np.ndarray) -> dict[str, float]:
    """P, R, mAP@0.5, mAP@0.5:0.95 over the classes that have labels, as Ultralytics' val prints them."""
    order = np.argsort(-confidence, kind="stable")
    correct, confidence, predicted_class = correct[order], confidence[order], predicted_class[order]
    classes = sorted(set(label_class.astype(int).tolist()))
    axis = np.linspace(0, 1, 1000)
    precision_curves, recall_curves, ap = [], [], np.zeros((len(classes), correct.shape[1]))
    for row, c in enumerate(classes):
        mine = predicted_class == c
        num_labels = int((label_class == c).sum())
        if not mine.any():
            precision_curves.append(np.zeros(1000))
            recall_curves.append(np.zeros(1000))
            continue
        true_positives = np.cumsum(correct[mine], 0)
        false_positives = np.cumsum(~correct[mine], 0)
        recall = true_positives / num_labels
        precision = true_positives / (true_positives + false_positives)
        recall_curves.append(np.interp(-axis, -confidence[mine], recall[:, 0], left=0))
        precision_curves.append(np.interp(-axis, -confidence[mine], precision[:, 0], left=1))
        for t in range(correct.shape[1]):
            ap[row, t] = trapezoid_ap(recall[:, t], precision[:, t])
    p, r = np.array(precision_curves), np.array(recall_curves)
    f1 = 2 * p * r / (p + r + 1e-16)
    best = int(np.argmax(_box_filter(f1.mean(0), 50)))
    return {"P": float(p[:, best].mean()), "R": float(r[:, best].mean()),
            "mAP50": float(ap[:, 0].mean()), "mAP50-95": float(ap.mean())}
