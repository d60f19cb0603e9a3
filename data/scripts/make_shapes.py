"""Generate the built-in `shapes` detection dataset (Ultralytics layout), offline and deterministically.

Why it exists: tests and smoke training need data without a network, yet hard enough that mAP@0.5:0.95
separates a healthy model from a damaged one. Hence small-to-large objects, rotation, mild anisotropy,
partial occlusion, truncation at borders, textured backgrounds and shape-like distractors.

Every image is a pure function of (seed, split, index): each one gets its own `np.random.default_rng`.
Boxes are the tight boxes of the *visible* pixels of each shape (after occlusion and clipping).

    python data/scripts/make_shapes.py --out datasets/shapes [--train N --val M --imgsz S --seed K]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

NAMES = ("circle", "square", "triangle", "star", "hexagon", "cross")
GENERATOR_VERSION = 1
META_FILE = "shapes_meta.yaml"
SPLITS = ("train", "val")

_MIN_VISIBLE = 0.55  # an object keeps at least this fraction of its area visible (occlusion and truncation)
_MIN_BOX_PX = 4  # visible boxes smaller than this (either side) are not placed
_SHIFT = 4  # fixed-point bits for sub-pixel polygon drawing
_WIDTH_FACTORS = (0.8, 0.9, 1.0, 1.0, 1.0, 1.1, 1.2)


def _unit_outline(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Return the outline (k, 2) of class `cls`, circumradius ~1, centred at the origin, unrotated."""
    name = NAMES[cls]
    if name == "circle":
        a = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if name in ("square", "triangle", "hexagon"):
        k = {"square": 4, "triangle": 3, "hexagon": 6}[name]
        a = np.arange(k) * 2 * np.pi / k - np.pi / 2
        return np.stack([np.cos(a), np.sin(a)], 1)
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    t = rng.uniform(0.22, 0.34)  # cross arm half-width
    return np.array(
        [[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]],
        dtype=np.float64,
    )


def _place(outline: np.ndarray, radius: float, angle: float, aspect: float, cx: float, cy: float) -> np.ndarray:
    """Scale (anisotropically), rotate and translate a unit outline into image pixels."""
    pts = outline * radius * np.array([aspect, 1.0 / aspect])
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    return pts + np.array([cx, cy])


def _fixed(pts: np.ndarray) -> list[np.ndarray]:
    return [np.round(pts * (1 << _SHIFT)).astype(np.int32)]


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Gradient + low-frequency blotches + optional stripes; float32 (h, w, 3).

    Smooth parts are built at 1/8 resolution and upsampled: the generator must stay fast on one core.
    """
    c1, c2 = _random_colour(rng).astype(np.float32), _random_colour(rng).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    lh, lw = max(h // 8, 2), max(w // 8, 2)
    ty = np.linspace(0, math.sin(theta), lh, dtype=np.float32)[:, None]
    tx = np.linspace(0, math.cos(theta), lw, dtype=np.float32)[None, :]
    t = tx + ty
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    low = c1 * (1 - t[..., None]) + c2 * t[..., None]
    gh, gw = rng.integers(2, 9, 2)
    blotch = rng.standard_normal((int(gh), int(gw), 3)).astype(np.float32) * np.float32(rng.uniform(0, 35))
    low += cv2.resize(blotch, (lw, lh), interpolation=cv2.INTER_CUBIC)
    bg = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.35:  # stripes: sin(a x + b y) = sin(a x) cos(b y) + cos(a x) sin(b y), separable
        phi, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
        ax = 2 * np.pi * np.arange(w, dtype=np.float32) * math.cos(phi) / period
        by = 2 * np.pi * np.arange(h, dtype=np.float32) * math.sin(phi) / period
        wave = np.sin(ax)[None, :] * np.cos(by)[:, None] + np.cos(ax)[None, :] * np.sin(by)[:, None]
        bg += wave[..., None] * (rng.uniform(-1, 1, 3) * rng.uniform(10, 45)).astype(np.float32)
    return bg


def _clutter(img: np.ndarray, rng: np.random.Generator, max_lines: int, max_thickness: int) -> None:
    """Random straight lines: edges that are not objects."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, max_lines + 1))):
        p1 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        p2 = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        cv2.line(img, p1, p2, _random_colour(rng).tolist(), int(rng.integers(1, max_thickness + 1)), cv2.LINE_AA)


def _distractors(img: np.ndarray, rng: np.random.Generator) -> None:
    """Blob-like hard negatives: elongated ellipses, rings and arcs (never one of the classes)."""
    h, w = img.shape[:2]
    side = min(h, w)
    for _ in range(int(rng.integers(0, 6))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        major = int(side * rng.uniform(0.04, 0.3))
        colour = _random_colour(rng).tolist()
        kind = rng.integers(0, 3)
        angle = float(rng.uniform(0, 180))
        if kind == 0:  # elongated ellipse
            axes = (max(major, 3), max(int(major / rng.uniform(2.5, 5.0)), 1))
            cv2.ellipse(img, centre, axes, angle, 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 1:  # ring
            cv2.circle(img, centre, max(major, 4), colour, int(rng.integers(2, 5)), cv2.LINE_AA)
        else:  # open arc
            start = float(rng.uniform(0, 360))
            end = start + float(rng.uniform(60, 250))
            cv2.ellipse(img, centre, (max(major, 4), max(major, 4)), angle, start, end, colour, 3, cv2.LINE_AA)


def _contrasting_colour(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pick the most contrasting of a few random colours against what lies under `mask`."""
    under = np.array(cv2.mean(img, mask)[:3])
    candidates = rng.uniform(0, 255, (4, 3))
    return candidates[int(np.abs(candidates - under).sum(1).argmax())]


def _draw_objects(img: np.ndarray, rng: np.random.Generator) -> list[tuple[int, float, float, float, float]]:
    """Draw 1-8 shapes with limited mutual occlusion; return labels (cls, xc, yc, w, h) normalised.

    Work happens in each candidate's clipped bounding-box window (ROI), which keeps small objects cheap.
    """
    h, w = img.shape[:2]
    side = min(h, w)
    owner = np.full((h, w), -1, dtype=np.int16)  # index of the object owning each pixel
    visible: list[int] = []  # visible pixel count per placed object
    full: list[int] = []  # unoccluded, unclipped area per placed object
    classes: list[int] = []
    n_target = int(rng.integers(1, 9))
    for _ in range(n_target * 6):  # bounded retries
        if len(classes) == n_target:
            break
        cls = int(rng.integers(0, len(NAMES)))
        size = side * math.exp(rng.uniform(math.log(0.04), math.log(0.6)))  # log-uniform diameter
        pts = _place(
            _unit_outline(cls, rng),
            size / 2,
            rng.uniform(0, 2 * np.pi),
            rng.uniform(0.87, 1.15),
            rng.uniform(0, w),
            rng.uniform(0, h),
        )
        outline = int(rng.integers(1, 4)) if rng.random() < 0.3 else 0
        x0, y0 = (np.floor(pts.min(0)) - outline - 1).astype(int).clip(0)
        x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + outline + 2, (w, h))
        if x1 - x0 < _MIN_BOX_PX or y1 - y0 < _MIN_BOX_PX:
            continue  # (almost) entirely outside the image
        local = _fixed(pts - (x0, y0))
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, local, 1, cv2.LINE_8, _SHIFT)
        if outline:
            cv2.polylines(mask, local, True, 1, outline, cv2.LINE_8, _SHIFT)
        inside = cv2.countNonZero(mask)
        area = max(float(cv2.contourArea(pts.astype(np.float32))), 1.0)
        if inside < _MIN_VISIBLE * area:
            continue  # too truncated by the border
        roi_owner = owner[y0:y1, x0:x1]
        covered = np.bincount(roi_owner[mask > 0].astype(np.int64) + 1, minlength=len(classes) + 1)[1:]
        if any((v - c) < _MIN_VISIBLE * f for v, c, f in zip(visible, covered, full)):
            continue  # would hide too much of an earlier object
        _, _, bw, bh = cv2.boundingRect(mask)
        if min(bw, bh) < _MIN_BOX_PX:
            continue
        roi = img[y0:y1, x0:x1]
        fill = _contrasting_colour(roi, mask, rng)
        cv2.fillPoly(roi, local, fill.tolist(), cv2.LINE_AA, _SHIFT)
        if outline:
            edge = (fill * rng.uniform(0.2, 0.6)).tolist() if rng.random() < 0.5 else _random_colour(rng).tolist()
            cv2.polylines(roi, local, True, edge, outline, cv2.LINE_AA, _SHIFT)
        for j, c in enumerate(covered):
            visible[j] -= int(c)
        roi_owner[mask > 0] = len(classes)
        visible.append(inside)
        full.append(int(max(area, inside)))
        classes.append(cls)
    labels = []
    for j, cls in enumerate(classes):
        x, y, bw, bh = cv2.boundingRect((owner == j).view(np.uint8))
        labels.append((cls, (x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h))
    return labels


def render(imgsz: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """Render one BGR uint8 image and its labels from `rng` (public so tests and demos can draw single samples)."""
    w = int(round(imgsz * rng.choice(_WIDTH_FACTORS) / 16) * 16)
    h = imgsz
    if rng.random() < 0.15:
        w, h = h, w  # some portrait images
    bg = _background(h, w, rng)
    img = np.clip(bg, 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        _clutter(img, rng, 14, 3)
    _distractors(img, rng)
    labels = _draw_objects(img, rng)
    if rng.random() < 0.3:
        _clutter(img, rng, 2, 1)  # thin lines across objects
    f = img.astype(np.float32)
    if rng.random() < 0.5:  # illumination falloff over everything (separable linear ramp)
        gx, gy = rng.uniform(-0.35, 0.35, 2) / max(h, w)
        rx = gx * (np.arange(w, dtype=np.float32) - w / 2)
        ry = gy * (np.arange(h, dtype=np.float32) - h / 2)
        f *= (1 + rx[None, :] + ry[:, None])[..., None]
    sigma = rng.uniform(2, 12)  # sensor noise: uniform bytes are far cheaper than Gaussian samples
    noise = np.frombuffer(rng.bytes(h * w * 3), np.uint8).reshape(h, w, 3).astype(np.float32)
    f += noise * np.float32(sigma / 73.9) - np.float32(127.5 * sigma / 73.9)
    img = np.clip(f, 0, 255, out=f).astype(np.uint8)
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    return img, labels


def _format_labels(labels: list[tuple[int, float, float, float, float]]) -> str:
    return "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)


def _meta(num_train: int, num_val: int, imgsz: int, seed: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "names": dict(enumerate(NAMES)),
        "counts": {"train": num_train, "val": num_val},
        "imgsz": imgsz,
        "seed": seed,
    }


def _is_complete(out_dir: Path, meta: dict) -> bool:
    """True when `out_dir` already holds exactly the dataset `meta` describes."""
    meta_file = out_dir / META_FILE
    if not meta_file.is_file():
        return False
    try:
        if yaml.safe_load(meta_file.read_text()) != meta:
            return False
    except yaml.YAMLError:
        return False
    for split in SPLITS:
        n = meta["counts"][split]
        if len(list((out_dir / "images" / split).glob("*.jpg"))) != n:
            return False
        if len(list((out_dir / "labels" / split).glob("*.txt"))) != n:
            return False
    return True


def generate(out_dir: Path, num_train: int = 2000, num_val: int = 300, imgsz: int = 320, seed: int = 0,
             progress: bool = False) -> Path:
    """Write the dataset to `out_dir` (skipped when already complete) and return `out_dir`.

    Written into a temporary sibling first and renamed at the end, so an interrupted run never leaves a
    half-written dataset that later looks complete. ``progress``: a tqdm bar per split (the command line's default).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir).resolve()
    meta = _meta(num_train, num_val, imgsz, seed)
    if _is_complete(out_dir, meta):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / META_FILE).exists():
        raise FileExistsError(f"{out_dir} exists but was not written by make_shapes.py; remove it or use another --out")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for split_id, split in enumerate(SPLITS):
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for i in tqdm(range(meta["counts"][split]), desc=f"shapes {split}", disable=not progress, leave=False):
            rng = np.random.default_rng([seed, split_id, i])
            img, labels = render(imgsz, rng)
            quality = int(rng.integers(75, 96))
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            (tmp / "images" / split / f"{i:06d}.jpg").write_bytes(buf.tobytes())
            (tmp / "labels" / split / f"{i:06d}.txt").write_text(_format_labels(labels))
    (tmp / META_FILE).write_text(yaml.safe_dump(meta, sort_keys=False))
    if _is_complete(out_dir, meta):  # another process finished first: keep its copy
        shutil.rmtree(tmp)
        return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)  # an older or partial make_shapes output (it has a meta file or is empty)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("datasets/shapes"), help="dataset root to write")
    parser.add_argument("--train", type=int, default=2000, help="number of training images")
    parser.add_argument("--val", type=int, default=300, help="number of validation images")
    parser.add_argument("--imgsz", type=int, default=320, help="nominal image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the dataset is a pure function of it)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = generate(args.out, args.train, args.val, args.imgsz, args.seed, progress=True)
    print(f"shapes dataset ready at {out} ({args.train} train / {args.val} val, {time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
