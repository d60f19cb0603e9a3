"""Image/box augmentations with YOLOv5 semantics, as pure numpy/cv2 functions.

Randomness comes only from an explicit `np.random.Generator` argument, so a dataset can make its batches
reproducible from a seed (the global `random`/`np.random` state is never touched).
Boxes are pixel xyxy unless a name says otherwise; images are HWC uint8 (BGR, as cv2 reads them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

PAD_VALUE = 114  # grey used for letterbox/mosaic/perspective borders


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


def xywhn2xyxy(x: np.ndarray, w: int, h: int, padw: float = 0.0, padh: float = 0.0) -> np.ndarray:
    """Normalised (xc, yc, w, h) -> pixel (x1, y1, x2, y2), shifted by a padding offset."""
    y = np.empty_like(x, dtype=np.float32)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def xyxy2xywhn(x: np.ndarray, w: int, h: int, clip: bool = False) -> np.ndarray:
    """Pixel (x1, y1, x2, y2) -> normalised (xc, yc, w, h); `clip` first clips boxes to the image."""
    x = np.asarray(x, dtype=np.float32).copy()
    if clip:
        x[:, [0, 2]] = x[:, [0, 2]].clip(0, w)
        x[:, [1, 3]] = x[:, [1, 3]].clip(0, h)
    y = np.empty_like(x)
    y[:, 0] = (x[:, 0] + x[:, 2]) / 2 / w
    y[:, 1] = (x[:, 1] + x[:, 3]) / 2 / h
    y[:, 2] = (x[:, 2] - x[:, 0]) / w
    y[:, 3] = (x[:, 3] - x[:, 1]) / h
    return y


def letterbox(
    im: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: tuple[int, int, int] = (PAD_VALUE, PAD_VALUE, PAD_VALUE),
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping aspect ratio and pad to `new_shape` (h, w); returns (im, (rw, rh), (dw, dh)).

    (dw, dh) is the padding on *each* side (half the total), as `scale_boxes` expects. `auto` pads only up to
    the next multiple of `stride` (minimum rectangle); `scaleup=False` only shrinks (better val mAP).
    """
    shape = im.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = (int(round(shape[1] * r)), int(round(shape[0] * r)))  # (w, h)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    dw, dh = dw / 2, dh / 2
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, (r, r), (float(dw), float(dh))


def box_candidates(
    box1: np.ndarray,
    box2: np.ndarray,
    wh_thr: float = 2,
    ar_thr: float = 100,
    area_thr: float = 0.1,
    eps: float = 1e-16,
) -> np.ndarray:
    """Keep boxes (4, n) that stay >wh_thr px, keep >area_thr of their area and an aspect ratio <ar_thr."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_perspective(
    im: np.ndarray,
    targets: np.ndarray = (),
    degrees: float = 10,
    translate: float = 0.1,
    scale: float = 0.1,
    shear: float = 10,
    perspective: float = 0.0,
    border: tuple[int, int] = (0, 0),
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation/scale/shear/translation/perspective of `im` and its targets [cls, x1, y1, x2, y2].

    A negative `border` crops (used after a 2x mosaic to come back to the nominal size). Boxes are
    transformed by their 4 corners, clipped, and dropped when they become too small or too thin.
    """
    rng = _rng(rng)
    targets = np.asarray(targets, dtype=np.float32).reshape(-1, 5)
    height = im.shape[0] + border[0] * 2
    width = im.shape[1] + border[1] * 2

    c = np.eye(3)  # move the image centre to the origin
    c[0, 2] = -im.shape[1] / 2
    c[1, 2] = -im.shape[0] / 2
    p = np.eye(3)
    p[2, 0] = rng.uniform(-perspective, perspective)
    p[2, 1] = rng.uniform(-perspective, perspective)
    r = np.eye(3)
    a = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    r[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    sh = np.eye(3)
    sh[0, 1] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    sh[1, 0] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    t = np.eye(3)
    t[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * width
    t[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * height
    m = t @ sh @ r @ p @ c  # applied right to left

    if border[0] != 0 or border[1] != 0 or (m != np.eye(3)).any():
        fill = (PAD_VALUE, PAD_VALUE, PAD_VALUE)
        if perspective:
            im = cv2.warpPerspective(im, m, dsize=(width, height), borderValue=fill)
        else:
            im = cv2.warpAffine(im, m[:2], dsize=(width, height), borderValue=fill)

    n = len(targets)
    if n:
        xy = np.ones((n * 4, 3))
        xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
        xy = xy @ m.T
        xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        keep = box_candidates(targets[:, 1:5].T * s, new.T, area_thr=0.10)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return im, targets


def augment_hsv(
    im: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5, rng: np.random.Generator | None = None
) -> None:
    """Random hue/saturation/value gains, applied in place to a BGR uint8 image (via lookup tables)."""
    if not (hgain or sgain or vgain):
        return
    gains = _rng(rng).uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=gains.dtype)
    lut_hue = ((x * gains[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=im)


def mosaic4(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], size: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Tile 4 images around a random centre of a (2*size, 2*size) canvas.

    `labels[i]` is (n, 5) [cls, xc, yc, w, h] normalised to `images[i]`. Returns the canvas and the merged
    labels as [cls, x1, y1, x2, y2] in canvas pixels, clipped. Follow with `random_perspective(...,
    border=(-size // 2, -size // 2))` to get back to (size, size).
    """
    if len(images) != 4 or len(labels) != 4:
        raise ValueError("mosaic4 needs exactly 4 images and 4 label arrays")
    rng = _rng(rng)
    s = size
    yc, xc = (int(rng.uniform(s // 2, 2 * s - s // 2)) for _ in range(2))
    canvas = np.full((2 * s, 2 * s, images[0].shape[2]), PAD_VALUE, dtype=np.uint8)
    merged = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        h, w = img.shape[:2]
        if i == 0:  # top left
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        lab = np.asarray(lab, dtype=np.float32).reshape(-1, 5).copy()
        if len(lab):
            lab[:, 1:] = xywhn2xyxy(lab[:, 1:], w, h, x1a - x1b, y1a - y1b)
        merged.append(lab)
    out = np.concatenate(merged, 0)
    out[:, 1:] = out[:, 1:].clip(0, 2 * s)
    return canvas, out


def mixup(
    im: np.ndarray, labels: np.ndarray, im2: np.ndarray, labels2: np.ndarray, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(32, 32) ratio and keep the labels of both."""
    r = _rng(rng).beta(32.0, 32.0)
    blended = (im.astype(np.float32) * r + im2.astype(np.float32) * (1 - r)).astype(np.uint8)
    return blended, np.concatenate((labels, labels2), 0)
