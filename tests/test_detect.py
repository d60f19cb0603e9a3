"""detect.py: annotated images and videos, YOLO-format labels, crops and predictions.csv for real JPEGs and a real
video on disk, with .pt weights and float and INT8 .onnx files in onnxruntime and DeepSparse."""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import time
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
    with pytest.raises(SystemExit) as raised:
        detect.parse_opt(["--weights", str(tmp_path / "none.pt"), "--source", str(tmp_path)])
    assert raised.value.code == 2 and "not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- videos
HAS_DEEPSPARSE = importlib.util.find_spec("deepsparse") is not None
FRAMES, HEIGHT, WIDTH = 10, 96, 128


def write_video(path: Path, frames: int = FRAMES, fourcc: str = "mp4v") -> Path:
    """A real video written by OpenCV: a bright circle moving left to right over a dark noisy background."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (WIDTH, HEIGHT))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.suffix}"
    rng = np.random.default_rng(1)
    for index in range(frames):
        image = rng.integers(0, 40, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        cv2.circle(image, (20 + 9 * index, HEIGHT // 2), 18, (40, 220, 250), -1)
        writer.write(image)
    writer.release()
    return path


def video_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"cannot read back {path}"
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame[1])
    capture.release()
    return frames


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture(scope="module")
def float_onnx(weights: Path, tmp_path_factory) -> Path:
    """The float export at 64 px, in its own folder (other tests export best.onnx beside ``weights`` at other sizes)."""
    copy = shutil.copy(weights, tmp_path_factory.mktemp("float") / "best.pt")
    return export.export_onnx(copy, imgsz=64, device="cpu").path


@pytest.fixture(scope="module")
def int8_files(tmp_path_factory) -> dict[str, Path]:
    """A QAT checkpoint of the confident model (the training path's recipe and step) exported in both INT8 formats:
    ``integer`` (W.onnx, ConvInteger, for DeepSparse) and ``qdq`` (W.qdq.onnx, for onnxruntime)."""
    from test_export import qat_checkpoint

    from benchmarks.runtime import condition_batchnorm

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=generator)
    model = condition_batchnorm(confident_model(), images)
    checkpoint = qat_checkpoint(model, images, tmp_path_factory.mktemp("int8") / "last.pt")
    # random weights: the export's parity check is not the point here, only that both files run and detect
    report = export.export_onnx(checkpoint, imgsz=64, device="cpu", calib_data=4, int8_format="both")
    files = {"integer": report.path, "qdq": report.others[0].path}
    assert report.summary.ops["ConvInteger"] > 0 and files["qdq"].name == "last.qdq.onnx"
    return files


BACKENDS = [
    pytest.param("pt", None, id="pt"),
    pytest.param("float", "onnxruntime", id="float-onnxruntime"),
    pytest.param("qdq", "onnxruntime", id="int8-qdq-onnxruntime"),
    pytest.param("integer", "deepsparse", id="int8-integer-deepsparse", marks=pytest.mark.skipif(
        not HAS_DEEPSPARSE, reason="DeepSparse is not installed (pip install -r requirements-deploy.txt)")),
]


@pytest.mark.parametrize("model, runtime", BACKENDS)
def test_video_is_annotated_frame_by_frame_in_every_backend(model: str, runtime: str | None, video: Path,
                                                            request: pytest.FixtureRequest, tmp_path: Path,
                                                            capsys) -> None:
    if model == "pt":
        weights = request.getfixturevalue("weights")
    elif model == "float":
        weights = request.getfixturevalue("float_onnx")
    else:
        weights = request.getfixturevalue("int8_files")[model]
    save_dir = detect.run(weights=weights, source=video, imgsz=64, save_txt=True, save_conf=True, max_det=20,
                          project=tmp_path, name="exp", runtime=runtime, threads=1)
    out = capsys.readouterr().out
    assert f"({runtime or 'pytorch'})" in out

    frames = video_frames(save_dir / "clip.mp4")
    assert len(frames) == FRAMES and frames[0].shape == (HEIGHT, WIDTH, 3)
    originals = video_frames(video)
    assert all(not np.array_equal(a, b) for a, b in zip(frames, originals))  # boxes drawn on every frame

    labels = read_labels(save_dir / "labels")
    assert sorted(labels, key=lambda stem: int(stem.rsplit("_", 1)[1])) == [f"clip_{i}" for i in range(1, 11)]
    for rows in labels.values():
        assert 1 <= rows.shape[0] <= 20 and rows.shape[1] == 6  # cls x y w h conf
        assert set(rows[:, 0].astype(int)) == {0}
        assert (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all() and (rows[:, 5] >= 0.25).all()

    lines = [line for line in out.splitlines() if line.startswith("video 1/1")]
    assert [line.split(")")[0] for line in lines] == [f"video 1/1 (frame {i}/10" for i in range(1, 11)]
    assert all(f"{video}: " in line and "circle" in line and line.endswith("ms") for line in lines)
    # 96x128 frames letterbox to 48x64, padded to the stride (.pt) or to the file's fixed 64x64: both 64x64
    speed = next(line for line in out.splitlines() if line.startswith("Speed: "))
    assert re.fullmatch(r"Speed: [\d.]+ms pre-process, [\d.]+ms inference, [\d.]+ms NMS per image at shape "
                        r"\(1, 3, 64, 64\) \(\w+\)", speed), speed


def test_vid_stride_save_crop_save_csv_and_view_img_without_a_display(weights: Path, video: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch, capsys,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with caplog.at_level("WARNING", logger="detect"):
        detect.main(detect.parse_opt(["--weights", str(weights), "--source", str(video), "--imgsz", "64",
                                      "--vid-stride", "3", "--save-txt", "--save-crop", "--save-csv", "--max-det",
                                      "5", "--view-img", "--project", str(tmp_path), "--name", "stride"]))
    assert "--view-img: cannot show windows here (no display" in caplog.text  # warned, and went on
    save_dir = tmp_path / "stride"
    frames = video_frames(save_dir / "clip.mp4")
    assert len(frames) == 4  # source frames 1, 4, 7, 10
    capture = cv2.VideoCapture(str(save_dir / "clip.mp4"))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10 / 3, abs=0.05)  # the output lasts as long as the input
    capture.release()
    out = capsys.readouterr().out
    assert "video 1/1 (frame 4/4)" in out and "(frame 5/" not in out

    labels = read_labels(save_dir / "labels")
    assert sorted(labels) == ["clip_1", "clip_2", "clip_3", "clip_4"]
    crops = sorted((save_dir / "crops" / "circle").glob("*.jpg"))
    detections = sum(len(rows) for rows in labels.values())
    assert len(crops) == detections and {"clip_1.jpg", "clip_4.jpg"} <= {c.name for c in crops}
    assert not (save_dir / "crops" / "square").exists()  # the biased head only sees class 0
    # a crop is the box grown by 2% + 10 px (Ultralytics' save_one_box) and clipped to the frame, without drawings
    _, x, y, w, h = labels["clip_1"][0]
    crop = cv2.imread(str(save_dir / "crops" / "circle" / "clip_1.jpg"))
    expected = [min(size, (centre + (side * 1.02 + 10 / size) / 2) * size) - max(0, (centre - (side * 1.02 + 10 / size)
                / 2) * size) for centre, side, size in ((y, h, HEIGHT), (x, w, WIDTH))]
    assert np.allclose(crop.shape[:2], expected, atol=2)

    with open(save_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Image Name", "Prediction", "Confidence"]
    assert len(rows) - 1 == detections
    assert {row[0] for row in rows[1:]} == {"clip_1", "clip_2", "clip_3", "clip_4"}
    assert all(row[1] == "circle" and 0.25 <= float(row[2]) <= 1 and len(row[2]) == 4 for row in rows[1:])


def test_a_folder_of_images_and_videos(weights: Path, images: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(images, folder)
    write_video(folder / "walk.avi", frames=3, fourcc="MJPG")
    save_dir = detect.run(weights=weights, source=folder, imgsz=64, save_csv=True, project=tmp_path, name="mixed")
    out = capsys.readouterr().out
    assert "image 1/4 " in out and "image 3/4 " in out and "video 4/4 (frame 3/3) " in out
    assert sorted(p.name for p in save_dir.iterdir()) == ["photo0.jpg", "photo1.jpg", "photo2.jpg",
                                                         "predictions.csv", "walk.mp4"]
    assert len(video_frames(save_dir / "walk.mp4")) == 3
    with open(save_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        names = {row["Image Name"] for row in csv.DictReader(f)}
    assert names == {"photo0.jpg", "photo1.jpg", "photo2.jpg", "walk_1", "walk_2", "walk_3"}


def test_a_stream_is_read_until_it_ends(weights: Path, video: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A stream URL takes the live path (a window if a display exists, an mp4 named after the URL, labels per frame);
    the capture is the local video so that no network is used."""
    from utils import sources

    opened = []
    real_open = sources.open_capture
    monkeypatch.setattr(sources, "open_capture", lambda target, kind: (opened.append((target, kind)),
                                                                        real_open(str(video), kind))[1])
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    save_dir = detect.run(weights=weights, source="rtsp://camera.local:554/live/cam1?tcp", imgsz=64, vid_stride=4,
                          save_txt=True, project=tmp_path, name="stream")
    assert opened == [("rtsp://camera.local:554/live/cam1?tcp", "stream")]
    # frames 1, 5, 9 are read as stream frames 1, 2, 3; the model gets the newest each time (the file is read
    # faster than the model runs, so some may be skipped), and always the last one
    labels = sorted(read_labels(save_dir / "labels"))
    assert labels[-1] == "cam1_3" and set(labels) <= {"cam1_1", "cam1_2", "cam1_3"}
    assert len(video_frames(save_dir / "cam1.mp4")) == len(labels)
    assert "stream rtsp://camera.local:554/live/cam1?tcp (frame 3): 64x64 " in capsys.readouterr().out


def test_a_live_source_gives_the_newest_frame_to_a_slow_model(video: Path) -> None:
    from utils.sources import LatestFrames, open_capture

    reader = LatestFrames(open_capture(str(video), "stream"))
    taken = []
    for number, image in reader:
        taken.append(number)
        assert image.shape == (HEIGHT, WIDTH, 3)
        deadline = time.monotonic() + 30
        while not reader.ended and time.monotonic() < deadline:  # a model slower than the source
            time.sleep(0.01)
    assert reader.ended and taken[-1] == FRAMES and len(taken) <= 2 and taken == sorted(set(taken))


@pytest.mark.parametrize("source, message", [
    ("{tmp}/broken.mp4", "cannot open video {tmp}/broken.mp4: OpenCV cannot decode it"),
    ("99", "cannot open camera 99: no camera with that index on this machine"),
    ("rtsp://127.0.0.1:9/live", "cannot open stream rtsp://127.0.0.1:9/live: OpenCV got no video from it"),
    ("{tmp}/notes.doc", "{tmp}/notes.doc is neither an image (bmp"),
    ("{tmp}/missing.mp4", "source not found: {tmp}/missing.mp4 (pass an image, a video, a folder"),
    ("{tmp}", "cannot open video {tmp}/broken.mp4"),  # checked before the folder's images are processed
], ids=["corrupt-video", "missing-camera", "dead-stream", "other-file", "missing-file", "folder-with-corrupt-video"])
def test_bad_video_sources_fail_with_a_clear_error(source: str, message: str, weights: Path, tmp_path: Path,
                                                  capsys) -> None:
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)  # only a local port that refuses: no network
    (tmp_path / "notes.doc").write_text("not a picture")
    opt = detect.parse_opt(["--weights", str(weights), "--source", source.format(tmp=tmp_path), "--project",
                            str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as raised:
        detect.main(opt)
    assert str(raised.value).startswith("detect.py: error: " + message.format(tmp=tmp_path))
    assert not (tmp_path / "runs").exists()  # checked before the model loads or any folder is made


def test_vid_stride_must_be_positive(weights: Path, video: Path, capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        detect.parse_opt(["--weights", str(weights), "--source", str(video), "--vid-stride", "0"])
    assert raised.value.code == 2 and "--vid-stride 0: must be at least 1" in capsys.readouterr().err
