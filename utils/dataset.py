"""YOLO detection dataset and dataloader: image discovery, label checking with a cache, augmentation, batching.

Batch contract (train loop, loss and val rely on it): `(images, targets, paths, shapes)` where
  * images  uint8 (B, 3, H, W), RGB;
  * targets float32 (N, 6) rows [image_index_in_batch, class, xc, yc, w, h], normalised to the letterboxed image;
  * paths   tuple of str;
  * shapes  tuple per image of ((h0, w0), ((h / h0, w / w0), (padw, padh))) for `scale_boxes`, or None (mosaic).

Label cache: `<labels dir>.cache` holds JSON (never pickle), keyed by a hash of the paths, sizes and mtimes of
all image and label files plus `nc`; anything else rebuilds it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from utils.augment import (
    augment_hsv,
    letterbox,
    mixup,
    mosaic4,
    random_perspective,
    xywhn2xyxy,
    xyxy2xywhn,
)

LOGGER = logging.getLogger(__name__)
IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
CACHE_VERSION = 1
COORD_TOL = 1e-3  # normalised label coordinates may exceed [0, 1] by this much (then clipped)
MIN_IMAGE_SIDE = 10
DEFAULT_AUG = {  # used for keys missing from `hyp` when augment=True (values of hyp.scratch-low.yaml)
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
}


# ----------------------------------------------------------------------------------------------- file discovery
def _is_image(p: str) -> bool:
    return p.rsplit(".", 1)[-1].lower() in IMG_FORMATS


def collect_image_files(path: str | Path | Iterable[str | Path]) -> list[str]:
    """Image files from a directory (recursive), a .txt list (relative lines resolved against its folder),
    a glob pattern, or a list of those; sorted, de-duplicated, absolute."""
    sources = [path] if isinstance(path, (str, Path)) else list(path)
    files: list[str] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_dir():
            files += glob.glob(str(p / "**" / "*.*"), recursive=True)
        elif p.is_file() and p.suffix.lower() == ".txt":
            for line in p.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    q = Path(line)
                    files.append(str(q if q.is_absolute() else p.parent / q))
        elif p.is_file():
            files.append(str(p))
        elif set("*?[") & set(str(src)):
            files += glob.glob(str(p), recursive=True)
    return sorted({os.path.abspath(f) for f in files if _is_image(f)})


def img2label_paths(img_paths: Iterable[str]) -> list[str]:
    """Label path per image: last `/images/` -> `/labels/`, suffix -> `.txt`."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [os.path.splitext(sb.join(p.rsplit(sa, 1)))[0] + ".txt" for p in img_paths]


# --------------------------------------------------------------------------------------------------- image I/O
def read_image(path: str) -> np.ndarray | None:
    """Decode any supported image to 3-channel BGR uint8 with EXIF orientation applied; None if undecodable.

    cv2's IMREAD_COLOR already converts grey/RGBA to BGR, 16-bit to 8-bit (>> 8) and applies EXIF rotation.
    """
    im = cv2.imread(path, cv2.IMREAD_COLOR)
    if im is not None:
        return im
    try:  # formats cv2 cannot read (e.g. MPO): let PIL try
        from PIL import ImageOps

        with Image.open(path) as pil:
            rgb = np.asarray(ImageOps.exif_transpose(pil).convert("RGB"))
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    except Exception:
        return None


def _image_size(path: str) -> tuple[int, int]:
    """Verified (w, h) after EXIF orientation; raises on a corrupt, truncated or tiny image."""
    if os.path.getsize(path) == 0:
        raise ValueError("zero-byte file")
    with Image.open(path) as im:
        im.verify()  # must come first: it leaves the image unusable
    with Image.open(path) as im:
        w, h = im.size
        fmt = (im.format or "").lower()
        orientation = im.getexif().get(274, 1)
    if fmt not in IMG_FORMATS:
        raise ValueError(f"unsupported image format {fmt or '?'}")
    if fmt in ("jpeg", "mpo"):
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            if f.read() != b"\xff\xd9":
                raise ValueError("truncated JPEG (no end-of-image marker)")
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        w, h = h, w
    if min(w, h) < MIN_IMAGE_SIDE:
        raise ValueError(f"image size {w}x{h} below {MIN_IMAGE_SIDE} px")
    return w, h


# ------------------------------------------------------------------------------------------------ label checks
def parse_label_text(text: str, nc: int | None = None) -> tuple[np.ndarray, str | None]:
    """Parse YOLO label text into (n, 5) float32 [cls, xc, yc, w, h]; returns (labels, note).

    Raises ValueError for a bad line (column count, non-numbers, class out of range, coordinates outside
    [0, 1]); polygon lines (cls x1 y1 x2 y2 x3 y3 ...) become their bounding box. Duplicate rows and
    zero-size boxes are dropped and mentioned in `note`.
    """
    rows = []
    for k, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise ValueError(f"line {k}: non-numeric value") from None
        if len(values) == 5:
            row = values
        elif len(values) >= 7 and len(values) % 2 == 1:  # segment polygon
            xy = np.array(values[1:], dtype=np.float64).reshape(-1, 2)
            lo, hi = xy.min(0), xy.max(0)
            row = [values[0], *((lo + hi) / 2), *(hi - lo)]
        else:
            raise ValueError(f"line {k}: expected 5 columns, got {len(values)}")
        cls = row[0]
        if cls < 0 or cls != int(cls) or (nc is not None and cls >= nc):
            limit = f" (nc={nc})" if nc is not None else ""
            raise ValueError(f"line {k}: class id {parts[0]} out of range{limit}")
        coords = np.array(row[1:])
        if not np.isfinite(coords).all() or (coords < -COORD_TOL).any() or (coords > 1 + COORD_TOL).any():
            raise ValueError(f"line {k}: coordinates outside [0, 1] (labels must be normalised xywh)")
        rows.append(row)
    labels = np.array(rows, dtype=np.float32).reshape(-1, 5)
    labels[:, 1:] = labels[:, 1:].clip(0, 1)
    notes = []
    degenerate = (labels[:, 3] <= 0) | (labels[:, 4] <= 0)
    if degenerate.any():
        labels = labels[~degenerate]
        notes.append(f"{int(degenerate.sum())} zero-size boxes removed")
    _, first = np.unique(labels, axis=0, return_index=True)
    if len(first) < len(labels):
        notes.append(f"{len(labels) - len(first)} duplicate rows removed")
        labels = labels[np.sort(first)]
    return labels, "; ".join(notes) or None


def _check_pair(args: tuple[str, str, int | None]) -> dict[str, Any]:
    """Check one image/label pair; never raises (problems are recorded as `error`)."""
    im_file, lb_file, nc = args
    try:
        w, h = _image_size(im_file)
    except Exception as e:
        return {"shape": None, "labels": [], "error": f"image: {str(e) or type(e).__name__}", "note": None}
    try:
        text = Path(lb_file).read_text(encoding="utf-8") if os.path.isfile(lb_file) else ""
        labels, note = parse_label_text(text, nc)
    except (ValueError, UnicodeDecodeError) as e:
        return {"shape": [w, h], "labels": [], "error": f"label {lb_file}: {e}", "note": None}
    return {"shape": [w, h], "labels": labels.tolist(), "error": None, "note": note}


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def files_hash(im_files: list[str], label_files: list[str], nc: int | None) -> str:
    """Hash of paths, sizes and mtimes (and the class count used for checking)."""
    h = hashlib.sha256(f"v{CACHE_VERSION} nc={nc}".encode())
    for f in (*im_files, *label_files):
        size, mtime = _stat(f)
        h.update(f"{f}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def _load_cache(path: Path, key: str) -> dict | None:
    try:
        cache = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cache, dict) or cache.get("version") != CACHE_VERSION or cache.get("hash") != key:
        return None
    return cache


def _save_cache(path: Path, cache: dict, prefix: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(cache), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:  # read-only dataset: fine, just slower next time
        LOGGER.info("%sCould not write label cache %s (%s)", prefix, path, e)
        tmp.unlink(missing_ok=True)


def _report(entries: dict[str, dict], prefix: str) -> None:
    """One warning listing every skipped file with its reason (plus label fixes), never one per file."""
    skipped = [f"  {f}: {e['error']}" for f, e in entries.items() if e["error"]]
    fixed = [f"  {f}: {e['note']}" for f, e in entries.items() if e["note"]]
    if not skipped and not fixed:
        return
    parts = []
    if skipped:
        parts.append(f"{prefix}skipped {len(skipped)} of {len(entries)} images:\n" + "\n".join(skipped))
    if fixed:
        parts.append(f"{prefix}fixed labels in {len(fixed)} files:\n" + "\n".join(fixed))
    LOGGER.warning("\n".join(parts))


# ------------------------------------------------------------------------------------------------------ dataset
class LoadImagesAndLabels(Dataset):
    """Images + YOLO labels with letterbox / rect batching / mosaic augmentation (YOLOv5 semantics)."""

    def __init__(
        self,
        path: str | Path | list[str | Path],
        img_size: int = 640,
        batch_size: int = 16,
        augment: bool = False,
        hyp: dict | None = None,
        rect: bool = False,
        cache: str | None = None,
        single_cls: bool = False,
        stride: int = 32,
        pad: float = 0.0,
        prefix: str = "",
        nc: int | None = None,
        seed: int = 0,
    ):
        self.img_size = img_size
        self.augment = augment
        self.hyp = {**DEFAULT_AUG, **(hyp or {})}
        self.rect = rect
        self.mosaic = augment and not rect  # rect batches keep each image's aspect: no mosaic
        self.mosaic_border = (-img_size // 2, -img_size // 2)
        self.stride = stride
        self.path = path
        self.prefix = prefix
        self.seed = seed
        self.epoch = 0
        self.rng = np.random.default_rng(seed)  # replaced per sample in __getitem__

        im_files = collect_image_files(path)
        if not im_files:
            raise FileNotFoundError(f"{prefix}no images found in {path} (formats: {', '.join(IMG_FORMATS)})")
        label_files = img2label_paths(im_files)
        entries = self._check_labels(im_files, label_files, nc)
        _report(entries, prefix)
        keep = [i for i, f in enumerate(im_files) if entries[f]["error"] is None]
        if not keep:
            raise FileNotFoundError(f"{prefix}no usable images in {path}: all {len(im_files)} were skipped (reasons "
                                    f"listed above); fix or replace those files")
        self.im_files = [im_files[i] for i in keep]
        self.label_files = [label_files[i] for i in keep]
        self.labels = [np.array(entries[f]["labels"], dtype=np.float32).reshape(-1, 5) for f in self.im_files]
        self.shapes = np.array([entries[f]["shape"] for f in self.im_files], dtype=np.int64).reshape(-1, 2)  # (w, h)
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        n = len(self.im_files)
        self.n = n
        self.indices = np.arange(n)
        self.batch = np.floor(np.arange(n) / batch_size).astype(int)  # batch index of each image
        self.batch_shapes: np.ndarray | None = None
        if rect:
            self._make_rect(batch_size, pad)
        self.npy_files = [str(Path(f).with_suffix(".npy")) for f in self.im_files]
        self.ims: list[np.ndarray | None] = [None] * n
        self.im_hw0: list[tuple[int, int] | None] = [None] * n
        self.im_hw: list[tuple[int, int] | None] = [None] * n
        if cache:
            self._cache_images(cache)

    # ---------------------------------------------------------------------------------------------- setup
    def _check_labels(self, im_files: list[str], label_files: list[str], nc: int | None) -> dict[str, dict]:
        cache_path = Path(label_files[0]).parent.with_suffix(".cache")
        key = files_hash(im_files, label_files, nc)
        cache = _load_cache(cache_path, key)
        if cache is not None:
            return cache["entries"]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(_check_pair, [(f, lb, nc) for f, lb in zip(im_files, label_files)]))
        entries = dict(zip(im_files, results))
        n_bad = sum(e["error"] is not None for e in results)
        n_bg = sum(e["error"] is None and not e["labels"] for e in results)
        LOGGER.info(
            "%sScanned %d images: %d skipped, %d backgrounds; cache %s",
            self.prefix,
            len(im_files),
            n_bad,
            n_bg,
            cache_path,
        )
        _save_cache(cache_path, {"version": CACHE_VERSION, "hash": key, "entries": entries}, self.prefix)
        return entries

    def _make_rect(self, batch_size: int, pad: float) -> None:
        """Sort by aspect ratio and give each batch the smallest stride-multiple shape that fits it."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort(kind="stable")  # equal shapes keep file order
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        ar = ar[order]
        nb = int(self.batch[-1]) + 1
        shapes = np.ones((nb, 2))
        for i in range(nb):
            ari = ar[self.batch == i]
            lo, hi = ari.min(), ari.max()
            if hi < 1:
                shapes[i] = [hi, 1]
            elif lo > 1:
                shapes[i] = [1, 1 / lo]
        self.batch_shapes = (np.ceil(shapes * self.img_size / self.stride + pad) * self.stride).astype(int)  # (h, w)

    def _cache_images(self, cache: str) -> None:
        if cache not in ("ram", "disk"):
            raise ValueError(f"cache must be None, 'ram' or 'disk', got {cache!r}")
        fn = self._cache_to_disk if cache == "disk" else self.load_image
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(fn, range(self.n)))
        if cache == "ram":
            for i, (im, hw0, hw) in enumerate(results):
                self.ims[i], self.im_hw0[i], self.im_hw[i] = im, hw0, hw
            gb = sum(im.nbytes for im, _, _ in results) / 1e9
            LOGGER.info("%sCached %d images in RAM (%.2f GB)", self.prefix, self.n, gb)

    def _cache_to_disk(self, i: int) -> None:
        """Save the decoded full-size image as .npy next to the image (plain array, loaded without pickle)."""
        f = self.npy_files[i]
        if not os.path.exists(f):
            im = read_image(self.im_files[i])
            if im is None:
                raise FileNotFoundError(f"{self.prefix}cannot read image {self.im_files[i]}")
            np.save(f, im, allow_pickle=False)

    # ------------------------------------------------------------------------------------------- loading
    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Return (BGR image resized so its long side is img_size, (h0, w0), (h, w))."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        if os.path.exists(self.npy_files[i]):
            im = np.load(self.npy_files[i], allow_pickle=False)
        else:
            im = read_image(self.im_files[i])
            if im is None:
                raise FileNotFoundError(f"{self.prefix}cannot read image {self.im_files[i]}")
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (max(1, round(w0 * r)), max(1, round(h0 * r))), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """4-image mosaic + random perspective; returns (img_size, img_size) image and [cls, x1, y1, x2, y2]."""
        others = self.rng.choice(self.indices, size=3)
        picks = [index, *(int(k) for k in others)]
        self.rng.shuffle(picks)
        images = [self.load_image(k)[0] for k in picks]
        img4, labels4 = mosaic4(images, [self.labels[k] for k in picks], self.img_size, self.rng)
        h = self.hyp
        return random_perspective(
            img4,
            labels4,
            degrees=h["degrees"],
            translate=h["translate"],
            scale=h["scale"],
            shear=h["shear"],
            perspective=h["perspective"],
            border=self.mosaic_border,
            rng=self.rng,
        )

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation streams of an epoch (set before the epoch's iterator starts its workers)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, Any]:
        index = int(self.indices[index])
        # One random stream per (seed, epoch, sample): augmentations do not depend on the number of workers or on
        # whether the run was resumed, so an interrupted run continues exactly like an uninterrupted one.
        self.rng = np.random.default_rng((self.seed, self.epoch, index))
        hyp = self.hyp
        if self.mosaic and self.rng.random() < hyp["mosaic"]:
            img, labels = self.load_mosaic(index)
            shapes = None
            if self.rng.random() < hyp["mixup"]:
                img, labels = mixup(img, labels, *self.load_mosaic(int(self.rng.choice(self.indices))), rng=self.rng)
        else:
            img, (h0, w0), (h, w) = self.load_image(index)
            shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)
            labels = self.labels[index].copy()
            if len(labels):
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, pad[0], pad[1])
            if self.augment:
                img, labels = random_perspective(
                    img,
                    labels,
                    degrees=hyp["degrees"],
                    translate=hyp["translate"],
                    scale=hyp["scale"],
                    shear=hyp["shear"],
                    perspective=hyp["perspective"],
                    rng=self.rng,
                )
        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True)
        if self.augment:
            augment_hsv(img, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"], rng=self.rng)
            if self.rng.random() < hyp["flipud"]:
                img = np.flipud(img)
                if nl:
                    labels[:, 2] = 1 - labels[:, 2]
            if self.rng.random() < hyp["fliplr"]:
                img = np.fliplr(img)
                if nl:
                    labels[:, 1] = 1 - labels[:, 1]
        labels_out = torch.zeros((nl, 6), dtype=torch.float32)
        if nl:
            labels_out[:, 1:] = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), labels_out, self.im_files[index], shapes

    @staticmethod
    def collate_fn(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple]:
        """Stack images; concatenate targets with column 0 set to the image's index in the batch."""
        ims, labels, paths, shapes = zip(*batch)
        for i, lb in enumerate(labels):
            lb[:, 0] = i
        return torch.stack(ims, 0), torch.cat(labels, 0), paths, shapes


# --------------------------------------------------------------------------------------------------- loader
def seed_worker(worker_id: int) -> None:
    """Give each worker's dataset copy its own augmentation RNG, derived from the loader's generator."""
    seed = torch.initial_seed() % 2**32  # = base seed drawn from the loader generator + worker_id
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "rng"):
        info.dataset.rng = np.random.default_rng(seed)
    np.random.seed(seed)  # for any third-party code that uses the global RNG


def create_dataloader(
    path: str | Path | list[str | Path],
    imgsz: int,
    batch_size: int,
    stride: int,
    hyp: dict | None = None,
    augment: bool = False,
    cache: str | None = None,
    rect: bool = False,
    rank: int = -1,
    workers: int = 8,
    shuffle: bool = False,
    prefix: str = "",
    single_cls: bool = False,
    pad: float = 0.0,
    seed: int = 0,
    nc: int | None = None,
) -> tuple[DataLoader, LoadImagesAndLabels]:
    """Build the dataset and a reproducible DataLoader for it.

    `batch_size` is per process. Under DDP (rank != -1) a DistributedSampler shards the data: call
    `loader.sampler.set_epoch(epoch)` each epoch. Same seed (and worker count) -> same batches.
    """
    if rect and shuffle:
        LOGGER.warning("%srect=True is incompatible with shuffle; using shuffle=False", prefix)
        shuffle = False
    stream_seed = seed + max(rank, 0)  # different augmentation streams per DDP rank
    dataset = LoadImagesAndLabels(
        path,
        imgsz,
        batch_size,
        augment=augment,
        hyp=hyp,
        rect=rect,
        cache=cache,
        single_cls=single_cls,
        stride=int(stride),
        pad=pad,
        prefix=prefix,
        nc=nc,
        seed=stream_seed,
    )
    batch_size = min(batch_size, len(dataset))
    nd = torch.cuda.device_count()
    nw = min((os.cpu_count() or 1) // max(nd, 1), batch_size if batch_size > 1 else 0, workers)
    sampler = None if rank == -1 else DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(stream_seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=nw,
        pin_memory=torch.cuda.is_available(),
        collate_fn=LoadImagesAndLabels.collate_fn,
        worker_init_fn=seed_worker,
        generator=generator,
        # Fresh workers each epoch: the trainer reseeds the generator per epoch, so epoch k gets the same shuffle and
        # augmentations whether or not the run was interrupted and resumed before it.
        persistent_workers=False,
    )
    return loader, dataset
