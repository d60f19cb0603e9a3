"""Anchors that fit the data, as Ultralytics' autoanchor does before training.

The model's anchors are scored on the training boxes (at the training image size) by best possible recall (BPR):
the share of boxes that some anchor can predict, i.e. whose width and height are both within ``anchor_t`` of it
(the loss's matching rule). Below 0.98, new anchors are found by k-means on the box sizes and refined by a genetic
search; they replace the model's only when they recall more. Anchors are a buffer of ``Detect``, so the checkpoint
carries them to val, export and resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

LOGGER = logging.getLogger(__name__)
GOOD_RECALL = 0.98  # Ultralytics' threshold: at or above it the anchors are kept


@dataclass
class AnchorCheck:
    """What the check found and did; the anchors in pixels, smallest first."""

    recall_before: float
    anchors_per_box_before: float
    recall_after: float
    replaced: bool
    anchors: np.ndarray


def box_sizes(dataset, imgsz: int, seed: int = 0) -> np.ndarray:
    """(n, 2) widths and heights of the training boxes in pixels at ``imgsz``, jittered by +-10% in scale the way
    training's augmentation varies them (seeded, so the check is reproducible)."""
    shapes = np.asarray(dataset.shapes, dtype=np.float64)  # (w, h) per image
    scaled = imgsz * shapes / shapes.max(1, keepdims=True)
    jitter = np.random.default_rng(seed).uniform(0.9, 1.1, size=(scaled.shape[0], 1))
    sizes = [labels[:, 3:5] * size for size, labels in zip(scaled * jitter, dataset.labels) if len(labels)]
    return np.concatenate(sizes, 0) if sizes else np.zeros((0, 2))


def anchor_fit(anchors: np.ndarray, sizes: np.ndarray, anchor_t: float) -> tuple[float, float]:
    """(best possible recall, anchors per box above threshold) of ``anchors`` (k, 2) for boxes ``sizes`` (n, 2)."""
    if not len(sizes):
        return 1.0, float(len(anchors))
    ratio = sizes[:, None] / anchors[None]
    closeness = np.minimum(ratio, 1 / ratio).min(2)  # (n, k): the worse of the width and height ratios
    return float((closeness.max(1) > 1 / anchor_t).mean()), float((closeness > 1 / anchor_t).sum(1).mean())


def _fitness(anchors: np.ndarray, sizes: np.ndarray, anchor_t: float) -> float:
    ratio = sizes[:, None] / anchors[None]
    best = np.minimum(ratio, 1 / ratio).min(2).max(1)
    return float((best * (best > 1 / anchor_t)).mean())


def evolve_anchors(sizes: np.ndarray, count: int, anchor_t: float, generations: int = 1000,
                   seed: int = 0) -> np.ndarray:
    """``count`` anchors (pixels, smallest area first) fitted to ``sizes``: k-means, then a genetic search that keeps
    a mutation only when it raises the mean best-anchor closeness of the boxes it can match."""
    from scipy.cluster.vq import kmeans

    rng = np.random.default_rng(seed)
    sizes = sizes[(sizes >= 2.0).any(1)].astype(np.float64)  # boxes under 2 px are not learnable anyway
    if len(sizes) >= count:
        scale = sizes.std(0) + 1e-9
        centroids, _ = kmeans(sizes / scale, count, iter=30, seed=seed)
        anchors = centroids * scale
    if len(sizes) < count or len(anchors) != count:  # too few (distinct) boxes for k-means
        low, high = (sizes.min(), sizes.max()) if len(sizes) else (2.0, 64.0)
        anchors = np.sort(rng.uniform(low, high, size=(count, 2)), axis=0)
    best = _fitness(anchors, sizes, anchor_t)
    for _ in range(generations):
        change = np.ones_like(anchors)
        while (change == 1).all():
            change = ((rng.random(anchors.shape) < 0.9) * rng.random() * rng.standard_normal(anchors.shape) * 0.1
                      + 1).clip(0.3, 3.0)
        candidate = (anchors * change).clip(min=2.0)
        score = _fitness(candidate, sizes, anchor_t)
        if score > best:
            best, anchors = score, candidate
    return anchors[np.argsort(anchors.prod(1))]


def check_anchors(dataset, model: torch.nn.Module, anchor_t: float, imgsz: int) -> AnchorCheck:
    """Score the model's anchors on ``dataset``; below GOOD_RECALL evolve new ones and install them if better."""
    detect = model.detect
    stride = detect.stride.to(detect.anchors.device).view(-1, 1, 1)
    current = (detect.anchors * stride).reshape(-1, 2).detach().cpu().numpy()
    sizes = box_sizes(dataset, imgsz)
    recall, per_box = anchor_fit(current, sizes, anchor_t)
    LOGGER.info("autoanchor: %.2f anchors/target, %.3f best possible recall (BPR)", per_box, recall)
    if recall >= GOOD_RECALL:
        LOGGER.info("autoanchor: the current anchors fit the dataset")
        return AnchorCheck(recall, per_box, recall, False, current)
    LOGGER.info("autoanchor: the anchors are a poor fit to the dataset; evolving %d anchors from %d boxes",
                len(current), len(sizes))
    evolved = evolve_anchors(sizes, len(current), anchor_t)
    new_recall, _ = anchor_fit(evolved, sizes, anchor_t)
    if new_recall <= recall:
        LOGGER.info("autoanchor: evolved anchors recall %.3f, not better: the original anchors are kept", new_recall)
        return AnchorCheck(recall, per_box, recall, False, current)
    with torch.no_grad():
        detect.anchors[:] = torch.tensor(evolved, dtype=detect.anchors.dtype,
                                         device=detect.anchors.device).view_as(detect.anchors) / stride
    detect.grid = [torch.empty(0) for _ in range(detect.nl)]  # decoded from the new anchors on the next forward
    detect.anchor_grid = [torch.empty(0) for _ in range(detect.nl)]
    LOGGER.info("autoanchor: new anchors (pixels) %s, best possible recall %.3f -> %.3f; they are saved with the "
                "model", np.round(evolved).astype(int).tolist(), recall, new_recall)
    return AnchorCheck(recall, per_box, new_recall, True, evolved)
