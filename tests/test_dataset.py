"""Specification tests for the dataset pipeline: generator, YAML checking, label checking, loading, batching."""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from data.scripts import make_shapes
from utils.augment import letterbox, random_perspective
from utils.dataset import LoadImagesAndLabels, create_dataloader, img2label_paths, parse_label_text
from utils.dataset_config import DatasetConfigError, check_dataset

REPO = Path(__file__).resolve().parents[1]

HYP = yaml.safe_load((REPO / "data" / "hyps" / "hyp.scratch-low.yaml").read_text())


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes.generate(tmp_path_factory.mktemp("gen") / "shapes", 8, 4, 96, seed=0)


def _write(path: Path, im: np.ndarray, labels: str | None = None) -> Path:
    """Write an image under .../images/... and (optionally) its label file under .../labels/..."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), im)
    if labels is not None:
        lb = Path(img2label_paths([str(path)])[0])
        lb.parent.mkdir(parents=True, exist_ok=True)
        lb.write_text(labels)
    return path


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "utils.dataset" and r.levelno == logging.WARNING]


# ------------------------------------------------------------------------------------------------- generator
def test_generator_is_deterministic_fast_and_valid(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    a = make_shapes.generate(tmp_path / "a", 6, 2, 96, seed=1)
    assert time.perf_counter() - t0 < 10
    b = make_shapes.generate(tmp_path / "b", 6, 2, 96, seed=1)
    c = make_shapes.generate(tmp_path / "c", 6, 2, 96, seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 8 + 1  # images + labels + shapes_meta.yaml
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    labels_a = [(a / "labels/train" / f"{i:06d}.txt").read_text() for i in range(6)]
    assert labels_a != [(c / "labels/train" / f"{i:06d}.txt").read_text() for i in range(6)]
    for text in labels_a:
        rows = np.array([line.split() for line in text.splitlines()], dtype=float)
        assert 1 <= len(rows) <= 8
        assert set(rows[:, 0]) <= set(range(len(make_shapes.NAMES)))
        assert (rows[:, 1:] >= 0).all() and (rows[:, 1:] <= 1).all() and (rows[:, 3:] > 0).all()
        assert all(len(v.split(".")[1]) == 6 for v in text.split()[1:5])
    meta = yaml.safe_load((a / "shapes_meta.yaml").read_text())
    assert meta["counts"] == {"train": 6, "val": 2} and meta["seed"] == 1 and len(meta["names"]) >= 5
    stamp = (a / "labels/train/000000.txt").stat().st_mtime_ns
    make_shapes.generate(a, 6, 2, 96, seed=1)  # complete: skipped
    assert (a / "labels/train/000000.txt").stat().st_mtime_ns == stamp


def test_shapes_yaml_matches_generator() -> None:
    cfg = yaml.safe_load((REPO / "data" / "shapes.yaml").read_text())
    assert cfg["path"] == "datasets/shapes" and cfg["download"].startswith("python ")
    assert list(cfg["names"].values()) == list(make_shapes.NAMES)


# ---------------------------------------------------------------------------------------------------- labels
def test_label_round_trip_and_background(tmp_path: Path) -> None:
    im = np.full((40, 60, 3), 90, np.uint8)
    _write(tmp_path / "images" / "a.jpg", im, "0 0.5 0.5 0.2 0.4\n3 0.25 0.75 0.1 0.125\n")
    _write(tmp_path / "images" / "b.png", im, "")  # background
    _write(tmp_path / "images" / "c.png", im, "2 0.1 0.2 0.5 0.2 0.3 0.6\n")  # polygon -> box
    _write(tmp_path / "images" / "d.png", im)  # no label file: background
    ds = LoadImagesAndLabels(tmp_path / "images", img_size=64, batch_size=2, nc=4)
    assert [Path(f).name for f in ds.im_files] == ["a.jpg", "b.png", "c.png", "d.png"]
    np.testing.assert_allclose(ds.labels[0], [[0, 0.5, 0.5, 0.2, 0.4], [3, 0.25, 0.75, 0.1, 0.125]], atol=1e-6)
    assert ds.labels[1].shape == (0, 5) and ds.labels[3].shape == (0, 5)
    np.testing.assert_allclose(ds.labels[2], [[2, 0.3, 0.4, 0.4, 0.4]], atol=1e-6)
    assert ds.shapes.tolist() == [[60, 40]] * 4 and ds.n == 4 and list(ds.indices) == [0, 1, 2, 3]
    cache = tmp_path / "labels.cache"
    assert cache.is_file() and json.loads(cache.read_text())["version"] >= 1  # plain JSON, no pickle
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.3 0.3\n")  # size/mtime change invalidates
    ds = LoadImagesAndLabels(tmp_path / "images", img_size=64, batch_size=2, nc=4)
    np.testing.assert_allclose(ds.labels[0], [[1, 0.5, 0.5, 0.3, 0.3]])


def test_parse_label_text_rules() -> None:
    labels, note = parse_label_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 1.0004 0 0.1 0.1\n", nc=2)
    assert len(labels) == 2 and labels[1, 1] == 1.0 and "duplicate" in note
    for bad in ("0 0.5 0.5 0.2\n", "5 0.5 0.5 0.2 0.2\n", "0 1.2 0.5 0.2 0.2\n", "0 x 0.5 0.2 0.2\n", "-1 .5 .5 .1 .1"):
        with pytest.raises(ValueError):
            parse_label_text(bad, nc=5)


def test_bad_files_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    im = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    img_dir = tmp_path / "images"
    _write(img_dir / "good.jpg", im, "0 0.5 0.5 0.5 0.5\n")
    _write(img_dir / "dup.jpg", im, "1 0.5 0.5 0.5 0.5\n1 0.5 0.5 0.5 0.5\n")
    (img_dir / "zero.jpg").write_bytes(b"")
    full = (img_dir / "good.jpg").read_bytes()
    (img_dir / "trunc.jpg").write_bytes(full[: len(full) // 2])
    (img_dir / "garbage.png").write_bytes(b"not an image at all")
    _write(img_dir / "badcls.jpg", im, "9 0.5 0.5 0.5 0.5\n")
    _write(img_dir / "badxy.jpg", im, "0 1.5 0.5 0.5 0.5\n")
    _write(img_dir / "badcols.jpg", im, "0 0.5 0.5 0.5\n")
    caplog.set_level(logging.WARNING, logger="utils.dataset")
    ds = LoadImagesAndLabels(img_dir, img_size=64, batch_size=2, nc=3)
    assert sorted(Path(f).name for f in ds.im_files) == ["dup.jpg", "good.jpg"]
    assert len(ds.labels[0]) == 1  # dup.jpg: duplicate row removed
    records = _warnings(caplog)
    assert len(records) == 1
    msg = records[0].getMessage()
    for name in ("zero.jpg", "trunc.jpg", "garbage.png", "badcls.txt", "badxy.txt", "badcols.txt"):
        assert name in msg
    caplog.clear()
    LoadImagesAndLabels(img_dir, img_size=64, batch_size=2, nc=3)  # from the cache: same single report
    assert len(_warnings(caplog)) == 1 and "trunc.jpg" in _warnings(caplog)[0].getMessage()


def test_no_images_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        LoadImagesAndLabels(tmp_path / "empty", img_size=64)


# ---------------------------------------------------------------------------------------------------- images
def test_image_modes_load_as_3ch_uint8(tmp_path: Path) -> None:
    d = tmp_path / "images"
    _write(d / "gray.png", np.full((32, 48), 200, np.uint8), "")
    _write(d / "rgba.png", np.dstack([np.full((32, 48, 3), (10, 20, 30), np.uint8), np.full((32, 48), 255, np.uint8)]))
    _write(d / "deep.png", np.full((32, 48, 3), 40000, np.uint16))
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :32] = (255, 0, 0)  # RGB: left half red; EXIF 6 = rotate 90 CW -> red on top, 32 wide x 64 tall
    exif = Image.Image().getexif()
    exif[274] = 6
    Image.fromarray(stored).save(d / "exif.jpg", exif=exif.tobytes(), quality=95)
    ds = LoadImagesAndLabels(d, img_size=64, batch_size=1)
    items = {Path(f).name: ds[i] for i, f in enumerate(ds.im_files)}
    shapes = {Path(f).name: tuple(s) for f, s in zip(ds.im_files, ds.shapes)}
    assert shapes["exif.jpg"] == (32, 64)  # (w, h) after orientation
    for name, (img, _, _, _) in items.items():
        assert img.dtype == torch.uint8 and img.shape == (3, 64, 64), name
    assert abs(int(items["gray.png"][0][0, 32, 32]) - 200) <= 1
    assert items["rgba.png"][0][:, 32, 32].tolist() == [30, 20, 10]  # RGB order
    assert abs(int(items["deep.png"][0][0, 32, 32]) - (40000 >> 8)) <= 1
    img, _, _, shape = items["exif.jpg"]
    assert shape[0] == (64, 32) and shape[1][1] == (16.0, 0.0)  # (h0, w0); pad left/right
    top, bottom = img[:, 8, 32].tolist(), img[:, 56, 32].tolist()
    assert top[0] > 200 and top[1] < 60 and max(bottom) < 60


def test_huge_images_are_capped_on_load(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "big.jpg", np.zeros((300, 600, 3), np.uint8), "")
    ds = LoadImagesAndLabels(tmp_path / "images", img_size=64)
    im, hw0, hw = ds.load_image(0)
    assert hw0 == (300, 600) and hw == (32, 64) and im.shape == (32, 64, 3)


# --------------------------------------------------------------------------------------------------- batches
def test_batch_contract_and_scale_back(shapes_root: Path) -> None:
    loader, ds = create_dataloader(shapes_root / "images" / "train", 96, 4, 32, workers=0, nc=6)
    images, targets, paths, shapes = next(iter(loader))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 96, 96)
    assert targets.dtype == torch.float32 and targets.shape[1] == 6
    assert isinstance(paths, tuple) and all(isinstance(p, str) for p in paths) and len(shapes) == 4
    assert (targets[:, 2:] >= 0).all() and (targets[:, 2:] <= 1).all()
    for i in range(4):
        k = ds.im_files.index(paths[i])
        t = targets[targets[:, 0] == i].numpy()
        assert np.array_equal(t[:, 1], ds.labels[k][:, 0])
        (h0, w0), ((rh, rw), (padw, padh)) = shapes[i]
        assert (w0, h0) == tuple(ds.shapes[k])
        xc = (t[:, 2] * 96 - padw) / rw / w0  # undo letterbox as scale_boxes does
        yc = (t[:, 3] * 96 - padh) / rh / h0
        np.testing.assert_allclose(xc, ds.labels[k][:, 1], atol=2 / w0)
        np.testing.assert_allclose(yc, ds.labels[k][:, 2], atol=2 / h0)


def test_augmented_batches_are_reproducible(shapes_root: Path) -> None:
    def first_batches(seed: int, workers: int) -> list:
        loader, _ = create_dataloader(
            shapes_root / "images" / "train", 96, 4, 32, hyp=HYP, augment=True, shuffle=True, workers=workers, seed=seed
        )
        return [b for b, _ in zip(loader, range(2))]

    a, b, c = first_batches(0, 0), first_batches(0, 0), first_batches(1, 0)
    for x, y in zip(a, b):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]
    assert not torch.equal(a[0][0], c[0][0])
    images, targets, _, shapes = a[0]
    assert images.shape == (4, 3, 96, 96) and shapes == (None,) * 4  # mosaic (hyp mosaic=1.0)
    assert (targets[:, 2:] >= 0).all() and (targets[:, 2:] <= 1).all()
    w1, w2 = first_batches(3, 2), first_batches(3, 2)
    assert torch.equal(w1[1][0], w2[1][0]) and torch.equal(w1[1][1], w2[1][1])


def test_rect_batches(tmp_path: Path) -> None:
    d = tmp_path / "images"
    for name, (w, h) in {"a": (64, 32), "b": (64, 48), "c": (32, 64), "d": (64, 64)}.items():
        _write(d / f"{name}.png", np.zeros((h, w, 3), np.uint8), "0 0.5 0.5 0.5 0.5\n")
    loader, ds = create_dataloader(d, 128, 2, 32, rect=True, workers=0)
    assert [Path(f).stem for f in ds.im_files] == ["a", "b", "d", "c"]  # sorted by h/w
    assert ds.batch_shapes.tolist() == [[96, 128], [128, 128]]
    (i0, _, _, s0), (i1, _, _, _) = list(loader)
    assert i0.shape == (2, 3, 96, 128) and i1.shape == (2, 3, 128, 128)
    assert s0[0] == ((32, 64), ((2.0, 2.0), (0.0, 16.0)))


def test_cache_modes_give_same_images(shapes_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(shapes_root, root)
    base = LoadImagesAndLabels(root / "images" / "val", img_size=96)[1][0]
    for mode in ("ram", "disk"):
        ds = LoadImagesAndLabels(root / "images" / "val", img_size=96, cache=mode)
        assert torch.equal(ds[1][0], base)
    assert len(list((root / "images" / "val").glob("*.npy"))) == 4


def test_letterbox_and_identity_perspective() -> None:
    im = np.zeros((50, 100, 3), np.uint8)
    out, ratio, (dw, dh) = letterbox(im, 64)
    assert out.shape == (64, 64, 3) and ratio == (0.64, 0.64) and (dw, dh) == (0.0, 16.0)
    out, _, (dw, dh) = letterbox(im, 64, auto=True, stride=32)  # minimum rectangle: no padding needed
    assert out.shape == (32, 64, 3) and (dw, dh) == (0.0, 0.0)
    targets = np.array([[1, 10, 10, 30, 40]], np.float32)
    same, t = random_perspective(im, targets, 0, 0, 0, 0, 0)
    assert same.shape == im.shape and np.allclose(t, targets)


# ------------------------------------------------------------------------------------------------ YAML checks
def _yaml(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_check_dataset_errors_name_the_yaml(tmp_path: Path) -> None:
    with pytest.raises(DatasetConfigError, match="nope.yaml"):
        check_dataset(tmp_path / "nope.yaml")
    f = _yaml(tmp_path / "data" / "noval.yaml", {"path": ".", "train": "images", "names": ["a"]})
    with pytest.raises(DatasetConfigError, match=r"noval\.yaml.*val"):
        check_dataset(f)
    f = _yaml(tmp_path / "data" / "nc.yaml", {"train": "a", "val": "b", "nc": 3, "names": ["a", "b"]})
    with pytest.raises(DatasetConfigError, match=r"nc\.yaml.*nc=3"):
        check_dataset(f)
    f = _yaml(tmp_path / "data" / "missing.yaml", {"path": str(tmp_path / "x"), "train": "t", "val": "v", "nc": 1})
    with pytest.raises(DatasetConfigError, match=r"missing\.yaml.*not found"):
        check_dataset(f)


def test_check_dataset_resolves_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "datasets" / "toy" / "images" / "val").mkdir(parents=True)
    f = _yaml(
        tmp_path / "data" / "toy.yaml",
        {"path": "datasets/toy", "train": ["images/train", "images/extra"], "val": "images/val", "names": {0: "a"}},
    )
    monkeypatch.chdir(tmp_path / "data")  # not found from cwd -> relative to the YAML's parent's parent
    out = check_dataset(f)
    root = tmp_path / "datasets" / "toy"
    assert out["path"] == str(root) and out["val"] == str(root / "images" / "val")
    assert out["train"] == [str(root / "images" / "train"), str(root / "images" / "extra")]
    assert out["test"] is None and out["names"] == {0: "a"} and out["nc"] == 1 and out["yaml_file"] == str(f)


def test_download_python_command_builds_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = "python data/scripts/make_shapes.py --out datasets/tiny --train 3 --val 2 --imgsz 64"
    names = dict(enumerate(make_shapes.NAMES))
    f = _yaml(
        tmp_path / "data" / "tiny.yaml",
        {"path": "datasets/tiny", "train": "images/train", "val": "images/val", "names": names, "download": cmd},
    )
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    out = check_dataset(f)
    assert out["path"] == str(tmp_path / "datasets" / "tiny")
    assert len(list(Path(out["val"]).glob("*.jpg"))) == 2 and len(list(Path(out["train"]).glob("*.jpg"))) == 3
    with pytest.raises(DatasetConfigError, match="autodownload"):
        check_dataset(
            _yaml(tmp_path / "data" / "t2.yaml", {**yaml.safe_load(f.read_text()), "path": "nowhere"}),
            autodownload=False,
        )


@pytest.mark.parametrize("name", ["coco.yaml", "coco128.yaml"])
def test_real_yaml_offline_fails_fast(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def offline(url: str, timeout: float | None = None, **_: object) -> None:
        calls.append((url, timeout))
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    f = tmp_path / "repo" / "data" / name
    f.parent.mkdir(parents=True)
    shutil.copy(REPO / "data" / name, f)
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(DatasetConfigError) as err:
        check_dataset(f)
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert name in msg and "manually" in msg and "datasets" in msg
    assert len(calls) == 1 and calls[0][0].startswith("https://") and 0 < calls[0][1] <= 10
    assert not (tmp_path / "datasets").exists()  # nothing half-written
    cfg = yaml.safe_load((REPO / "data" / name).read_text())
    assert len(cfg["names"]) == 80 and cfg["names"][0] == "person" and cfg["names"][79] == "toothbrush"
