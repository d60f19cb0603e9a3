"""detect.py: annotated images and YOLO-format labels for a folder of real JPEGs, with .pt and .onnx weights."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
import export
from models.yolo import DetectionModel
from utils.checkpoint import build_checkpoint, save_checkpoint

NAMES = ["circle", "square"]


def confident_model() -> DetectionModel:
    """A random tiny model whose head is biased to see class 0 everywhere, so that NMS keeps real boxes."""
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", nc=len(NAMES))
    model.names = list(NAMES)
    with torch.no_grad():
        for conv in model.detect.m:
            bias = conv.bias.view(model.detect.na, -1)
            bias[:, 4] = 4.0  # objectness ~0.98
            bias[:, 5] = 3.0  # class 0 ~0.95
    return model.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    model = confident_model()
    checkpoint = build_checkpoint(model_yaml=model.yaml, names=NAMES, model_state=model.state_dict(), ema_state=None,
                                  ema_updates=0, optimizer_state=None, scaler_state=None, epoch=0, best_fitness=0.0,
                                  phase_best_fitness={}, options={}, hyp={}, sparsification={}, final=True)
    return save_checkpoint(checkpoint, tmp_path_factory.mktemp("detect") / "best.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate([(96, 128), (120, 80), (100, 100)]):
        image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        cv2.circle(image, (width // 2, height // 2), min(height, width) // 4, (40, 200, 240), -1)
        cv2.rectangle(image, (5, 5), (width // 3, height // 3), (220, 60, 60), -1)
        cv2.imwrite(str(folder / f"photo{index}.jpg"), image)
    return folder


def read_labels(folder: Path) -> dict[str, np.ndarray]:
    return {f.stem: np.loadtxt(f, ndmin=2) for f in sorted(folder.glob("*.txt"))}


def test_pt_weights_write_annotated_images_and_labels(weights: Path, images: Path, tmp_path: Path) -> None:
    save_dir = detect.run(weights=weights, source=images, imgsz=128, conf_thres=0.25, max_det=20, save_txt=True,
                          save_conf=True, project=tmp_path / "runs", name="exp")
    assert save_dir == tmp_path / "runs" / "exp"
    for source in sorted(images.glob("*.jpg")):
        annotated = cv2.imread(str(save_dir / source.name))
        assert annotated is not None and annotated.shape == cv2.imread(str(source)).shape
        assert not np.array_equal(annotated, cv2.imread(str(source)))  # boxes were drawn
    labels = read_labels(save_dir / "labels")
    assert sorted(labels) == ["photo0", "photo1", "photo2"]
    for rows in labels.values():
        assert rows.shape[1] == 6 and 1 <= rows.shape[0] <= 20  # cls x y w h conf
        assert set(rows[:, 0].astype(int)) == {0}
        assert (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all()
        assert (rows[:, 5] >= 0.25).all()

    again = detect.run(weights=weights, source=images, imgsz=128, save_txt=True, nosave=True,
                       project=tmp_path / "runs", name="exp")
    assert again == tmp_path / "runs" / "exp2"
    assert not list(again.glob("*.jpg"))
    assert all(rows.shape[1] == 5 for rows in read_labels(again / "labels").values())


def test_onnx_weights_give_the_same_labels_as_pt(weights: Path, images: Path, tmp_path: Path) -> None:
    onnx_file = export.export_onnx(weights, imgsz=128, device="cpu").path
    runs = tmp_path / "runs"
    from_pt = detect.run(weights=weights, source=images, imgsz=128, save_txt=True, save_conf=True, nosave=True,
                         project=runs, name="pt")
    from_onnx = detect.run(weights=onnx_file, source=str(images / "*.jpg"), imgsz=128, save_txt=True,
                           save_conf=True, project=runs, name="onnx", runtime="onnxruntime", threads=1)
    # the static ONNX graph letterboxes to exactly 128x128 and the .pt run pads only to the stride, so compare
    # the number of images and the class, not the exact boxes
    pt_labels, onnx_labels = read_labels(from_pt / "labels"), read_labels(from_onnx / "labels")
    assert sorted(pt_labels) == sorted(onnx_labels)
    assert all(set(rows[:, 0].astype(int)) == {0} for rows in onnx_labels.values())
    assert len(list(from_onnx.glob("*.jpg"))) == 3


def test_threads_flag_sets_the_onnxruntime_threads(weights: Path, images: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from utils import inference

    onnx_file = export.export_onnx(weights, imgsz=64, device="cpu").path
    seen: list[int | None] = []
    original = inference.onnxruntime_options
    monkeypatch.setattr(inference, "onnxruntime_options", lambda threads=None, spinning=False: (
        seen.append(threads), original(threads, spinning))[1])
    opt = detect.parse_opt(["--weights", str(onnx_file), "--source", str(images / "photo0.jpg"), "--imgsz", "64",
                            "--project", str(tmp_path), "--runtime", "onnxruntime", "--threads", "1"])
    detect.main(opt)
    assert seen == [1]
    with pytest.raises(SystemExit):
        detect.parse_opt(["--weights", str(onnx_file), "--source", str(images), "--threads", "0"])


def test_cli_prints_detections_and_speed(weights: Path, images: Path, tmp_path: Path, capsys) -> None:
    detect.main(detect.parse_opt(["--weights", str(weights), "--source", str(images / "photo0.jpg"), "--imgsz", "64",
                                  "--project", str(tmp_path), "--name", "cli", "--classes", "0", "--agnostic-nms"]))
    out = capsys.readouterr().out
    assert "image 1/1" in out and "circle" in out and "Speed:" in out and "Results saved to" in out
    assert (tmp_path / "cli" / "photo0.jpg").is_file()


def test_bad_source_fails_with_a_clear_error(weights: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit, match="source not found"):
        detect.main(detect.parse_opt(["--weights", str(weights), "--source", str(tmp_path / "missing"),
                                      "--project", str(tmp_path)]))
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00")
    with pytest.raises(SystemExit, match="videos and streams are not supported"):
        detect.main(detect.parse_opt(["--weights", str(weights), "--source", str(video), "--project",
                                      str(tmp_path)]))
    with pytest.raises(SystemExit) as raised:
        detect.parse_opt(["--weights", str(tmp_path / "none.pt"), "--source", str(tmp_path)])
    assert raised.value.code == 2 and "not found" in capsys.readouterr().err
