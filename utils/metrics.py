"""Detection metrics: matching predictions to labels, per-class AP over IoU thresholds, confusion matrix, fitness.

Matching, AP and the P/R/F1 summary reproduce Ultralytics YOLOv5 v7.0's val, so the same predictions print the same
numbers: each detection takes its best-IoU label, each label goes to its most confident claimant; AP integrates the
interpolated precision envelope with the trapezoid rule; P and R are read at the confidence that maximizes the
smoothed class-mean F1. ``compute_ap(method="coco")`` samples the envelope as pycocotools does instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.boxes import box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # the COCO thresholds, as numpy for reference


def fitness(x: np.ndarray) -> np.ndarray:
    """Single score for model selection from rows of [P, R, mAP@0.5, mAP@0.5:0.95]: mostly the strict mAP."""
    weights = np.array([0.0, 0.0, 0.1, 0.9])
    return (np.asarray(x)[:, :4] * weights).sum(1)


def smooth(y: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Box-filter a curve over ``fraction`` of its length, padding with the end values, so argmax is not noise."""
    width = round(len(y) * fraction * 2) // 2 + 1  # odd
    pad = np.ones(width // 2)
    padded = np.concatenate((pad * y[0], y, pad * y[-1]), 0)
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def compute_ap(recall: np.ndarray, precision: np.ndarray,
               method: str = "yolov5") -> tuple[float, np.ndarray, np.ndarray]:
    """Average precision from a PR curve (points ordered by falling confidence), on 101 recall points.

    Precision is first replaced by its running maximum from the right (the envelope).
    ``method="yolov5"`` (default, what Ultralytics' val prints): the curve closed with (0, 1) and (1, 0), linearly
    interpolated at 101 recall points and integrated with the trapezoid rule. It caps perfect predictions at 0.995
    and credits a triangle past the last recall, so it reads higher than COCO where recall stays low.
    ``method="coco"`` reproduces pycocotools: the mean, over recall thresholds 0, 0.01, ..., 1, of the envelope at
    the first point reaching that recall (0 where none does), so perfect predictions score 1.
    Returns the AP and the closed envelope (precision, recall) for plotting.
    """
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(np.concatenate(([1.0], precision, [0.0])))))
    x = np.linspace(0, 1, 101)
    if method == "yolov5":
        y = np.interp(x, mrec, mpre)
        return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum()), mpre, mrec  # trapezoids (np.trapz left numpy 2)
    if method != "coco":
        raise ValueError(f"unknown AP method '{method}'; use 'coco' or 'yolov5'")
    if recall.size == 0:
        return 0.0, mpre, mrec
    envelope = mpre[1:-1]
    first = np.searchsorted(recall, x, side="left")
    sampled = np.where(first < recall.size, envelope[first.clip(max=recall.size - 1)], 0.0)
    return float(sampled.mean()), mpre, mrec


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray, plot: bool = False,
                 save_dir: Path = Path("."), names: dict | list | None = None, eps: float = 1e-16,
                 prefix: str = "", ap_method: str = "yolov5") -> tuple[np.ndarray, ...]:
    """Per-class AP at each IoU threshold, plus P, R and F1 at one shared confidence.

    Args:
        tp: (n, t) bool, whether each prediction is a true positive at each of t IoU thresholds.
        conf: (n,) prediction confidences. pred_cls: (n,) predicted classes. target_cls: (m,) label classes.
    Returns:
        tp, fp, p, r, f1: (nc,) counts and values at the confidence maximizing the mean F1 over classes;
        ap: (nc, t); unique_classes: (nc,) int, the classes present in the labels (the rows of the other outputs).
    Predictions of classes without labels are ignored, as COCO does. ``ap_method``: see ``compute_ap``.
    """
    tp, conf, pred_cls = np.asarray(tp), np.asarray(conf), np.asarray(pred_cls)
    if tp.ndim == 1:
        tp = tp[:, None]  # a single IoU threshold
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]

    unique_classes, label_counts = np.unique(np.asarray(target_cls), return_counts=True)
    nc = unique_classes.shape[0]
    px = np.linspace(0, 1, 1000)  # confidence axis of the P/R/F1 curves
    pr_curves = []
    ap, p, r = np.zeros((nc, tp.shape[1])), np.zeros((nc, 1000)), np.zeros((nc, 1000))
    for ci, c in enumerate(unique_classes):
        mask = pred_cls == c
        n_labels, n_preds = label_counts[ci], mask.sum()
        if n_preds == 0 or n_labels == 0:
            if plot:
                pr_curves.append(np.zeros(1000))
            continue
        fpc = (1 - tp[mask]).cumsum(0)
        tpc = tp[mask].cumsum(0)
        recall = tpc / (n_labels + eps)
        precision = tpc / (tpc + fpc)
        # np.interp needs increasing x: confidence falls along the curve, so interpolate on its negation
        r[ci] = np.interp(-px, -conf[mask], recall[:, 0], left=0)
        p[ci] = np.interp(-px, -conf[mask], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j], ap_method)
            if plot and j == 0:
                pr_curves.append(np.interp(px, mrec, mpre))

    f1 = 2 * p * r / (p + r + eps)
    if plot:
        label_names = _class_names(names, unique_classes)
        save_dir = Path(save_dir)
        _plot_pr_curve(px, np.stack(pr_curves, 1) if pr_curves else np.zeros((1000, 0)), ap,
                      save_dir / f"{prefix}PR_curve.png", label_names)
        _plot_metric_curve(px, f1, save_dir / f"{prefix}F1_curve.png", label_names, ylabel="F1")
        _plot_metric_curve(px, p, save_dir / f"{prefix}P_curve.png", label_names, ylabel="Precision")
        _plot_metric_curve(px, r, save_dir / f"{prefix}R_curve.png", label_names, ylabel="Recall")

    best = smooth(f1.mean(0), 0.1).argmax() if nc else 0
    p, r, f1 = p[:, best], r[:, best], f1[:, best]
    tp = (r * label_counts).round()
    fp = (tp / (p + eps) - tp).round()
    return tp, fp, p, r, f1, ap, unique_classes.astype(int)


def _class_names(names: dict | list | None, classes: np.ndarray) -> dict[int, str]:
    names = names if names is not None else {}
    lookup = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    return {int(c): str(lookup.get(int(c), int(c))) for c in classes}


def _one_to_one(pairs: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
    """Reduce candidate [label, detection, iou] rows so each label and detection appears once.

    Each detection first keeps its best-IoU label. A label claimed by several detections then goes to the most
    confident one (ties: the earlier detection), the rule of Ultralytics' val and, for a detection with one
    candidate label, of COCO's greedy matching. Without ``confidence`` it goes to the best IoU instead, the rule of
    Ultralytics' confusion matrix.
    """
    if pairs.shape[0] > 1:
        pairs = pairs[pairs[:, 2].argsort(kind="stable")[::-1]]
        pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]
        if confidence is None:
            pairs = pairs[pairs[:, 2].argsort(kind="stable")[::-1]]
        else:
            detection = pairs[:, 1].astype(int)
            pairs = pairs[np.lexsort((detection, -confidence[detection]))]
        pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]
    return pairs


def match_predictions(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Which detections are true positives at each IoU threshold (one image).

    Args:
        detections: (n, 6) x1, y1, x2, y2, conf, class. labels: (m, 5) class, x1, y1, x2, y2 (same pixel space).
        iouv: (t,) IoU thresholds.
    Returns:
        (n, t) bool. At each threshold, same-class pairs at or above it are matched one to one as Ultralytics'
        val does (see ``_one_to_one``): the most confident of the detections whose best label it is wins it.
    """
    correct = np.zeros((detections.shape[0], iouv.shape[0]), dtype=bool)
    if detections.shape[0] and labels.shape[0]:
        iou = box_iou(labels[:, 1:].float(), detections[:, :4].float())
        same_class = labels[:, 0:1] == detections[:, 5]
        confidence = detections[:, 4].float().cpu().numpy()
        for i, threshold in enumerate(iouv.tolist()):
            label_idx, det_idx = torch.where((iou >= threshold) & same_class)
            if label_idx.shape[0]:
                pairs = torch.stack((label_idx.float(), det_idx.float(), iou[label_idx, det_idx]), 1).cpu().numpy()
                pairs = _one_to_one(pairs, confidence)
                correct[pairs[:, 1].astype(int), i] = True
    return torch.tensor(correct, dtype=torch.bool, device=iouv.device)


class ConfusionMatrix:
    """Counts of (predicted class, true class) over a dataset, with an extra 'background' row and column.

    ``matrix[p, t]``: detections of class p matched to labels of class t; row ``nc`` holds missed labels and column
    ``nc`` holds detections matching no label.
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45) -> None:
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) x1, y1, x2, y2, conf, class; labels (m, 5) class, x1, y1, x2, y2."""
        gt_classes = labels[:, 0].int().tolist()
        if detections is None:
            for gc in gt_classes:
                self.matrix[self.nc, gc] += 1
            return
        detections = detections[detections[:, 4] > self.conf]
        det_classes = detections[:, 5].int().tolist()
        iou = box_iou(labels[:, 1:].float(), detections[:, :4].float())
        label_idx, det_idx = torch.where(iou > self.iou_thres)
        if label_idx.shape[0]:
            pairs = torch.stack((label_idx.float(), det_idx.float(), iou[label_idx, det_idx]), 1).cpu().numpy()
            pairs = _one_to_one(pairs)
        else:
            pairs = np.zeros((0, 3))
        matched_labels, matched_dets = pairs[:, 0].astype(int), pairs[:, 1].astype(int)
        for i, gc in enumerate(gt_classes):
            hit = matched_dets[matched_labels == i]
            if hit.shape[0] == 1:
                self.matrix[det_classes[hit[0]], gc] += 1
            else:
                self.matrix[self.nc, gc] += 1  # missed: predicted background
        for i, dc in enumerate(det_classes):
            if not (matched_dets == i).any():
                self.matrix[dc, self.nc] += 1  # false alarm on background

    def tp_fp(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-class true and false positives (background excluded)."""
        tp = self.matrix.diagonal()
        fp = self.matrix.sum(1) - tp
        return tp[:-1], fp[:-1]

    def plot(self, save_dir: Path | str = "", names: dict | list = (), normalize: bool = True) -> Path:
        """Save ``confusion_matrix.png`` (columns normalized to sum to 1 when ``normalize``); returns its path."""
        labels = list(_class_names(names, np.arange(self.nc)).values()) + ["background"]
        matrix = self.matrix / ((self.matrix.sum(0).reshape(1, -1) + 1e-9) if normalize else 1)
        path = Path(save_dir) / "confusion_matrix.png"
        _plot_confusion_matrix(matrix, labels, path, normalize)
        return path


# Plotting uses matplotlib's object API (Figure + Agg canvas), so no global backend is selected and no window opens.

def _new_axes(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=250)


def _plot_pr_curve(px: np.ndarray, py: np.ndarray, ap: np.ndarray, path: Path, names: dict[int, str]) -> None:
    """Precision-recall curve per class (legend only when few classes) and the class mean."""
    fig, ax = _new_axes((9, 6))
    if 0 < len(names) < 21:
        for i, name in enumerate(names.values()):
            ax.plot(px, py[:, i], linewidth=1, label=f"{name} {ap[i, 0]:.3f}")
    else:
        ax.plot(px, py, linewidth=1, color="grey")
    if py.shape[1]:
        ax.plot(px, py.mean(1), linewidth=3, color="blue", label=f"all classes {ap[:, 0].mean():.3f} mAP@0.5")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1), title="Precision-Recall Curve")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    _save(fig, path)


def _plot_metric_curve(px: np.ndarray, py: np.ndarray, path: Path, names: dict[int, str], ylabel: str) -> None:
    """A metric (rows: classes) against confidence, with the smoothed class mean and its maximum."""
    fig, ax = _new_axes((9, 6))
    if 0 < len(names) < 21:
        for i, name in enumerate(names.values()):
            ax.plot(px, py[i], linewidth=1, label=name)
    else:
        ax.plot(px, py.T, linewidth=1, color="grey")
    if py.shape[0]:
        mean = smooth(py.mean(0), 0.05)
        ax.plot(px, mean, linewidth=3, color="blue", label=f"all classes {mean.max():.2f} at {px[mean.argmax()]:.3f}")
    ax.set(xlabel="Confidence", ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=f"{ylabel}-Confidence Curve")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    _save(fig, path)


def _plot_confusion_matrix(matrix: np.ndarray, labels: list[str], path: Path, normalize: bool) -> None:
    n = len(labels)
    fig, ax = _new_axes((12, 9))
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(image, ax=ax)
    if n < 30:  # readable tick labels and cell values only for small class counts
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), labels)
        for (row, col), value in np.ndenumerate(matrix):
            if value >= 0.005:
                ax.text(col, row, f"{value:.2f}" if normalize else f"{value:.0f}", ha="center", va="center",
                        fontsize=8, color="white" if value > 0.5 * matrix.max() else "black")
    ax.set(xlabel="True", ylabel="Predicted", title="Confusion Matrix")
    _save(fig, path)
