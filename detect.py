"""Run detection on images, videos, a camera or a stream with a .pt checkpoint or an exported .onnx (onnxruntime or
DeepSparse).

Usage:
    python detect.py --weights runs/train/exp/weights/best.pt --source data/images
    python detect.py --weights best.onnx --source 'images/*.jpg' --runtime deepsparse --save-txt --save-conf
    python detect.py --weights best.onnx --source clip.mp4 --vid-stride 2 --save-crop --save-csv
    python detect.py --weights best.onnx --source 0                       # camera 0, shown in a window
    python detect.py --weights best.onnx --source rtsp://host:554/stream  # or rtmp://, http(s)://

Writes annotated images and videos (``<video stem>.mp4``) to ``runs/detect/exp``, ``exp2``, ...; with
``--save-txt`` YOLO labels (``cls x y w h [conf]``, normalized to the original image) to ``labels/<image stem>.txt``
or ``labels/<video stem>_<frame>.txt``, with ``--save-crop`` each detection to ``crops/<class>/<name>.jpg``, with
``--save-csv`` one row per detection to ``predictions.csv``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.augment import letterbox
from utils.boxes import non_max_suppression, scale_boxes
from utils.inference import Backend, add_runtime_arguments, load_backend
from utils.logs import setup_script_logging
from utils.plots import color, draw_box
from utils.runs import increment_path
from utils.sources import Frame, display_problem, open_source
from utils.sparsification.zoo import is_zoo_stub

LOGGER = logging.getLogger("detect")


def _label_name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def describe(detections: torch.Tensor, names: list[str]) -> str:
    """'2 circles, 1 square' as YOLOv5 prints it, or '(no detections)'."""
    counts = Counter(int(c) for c in detections[:, 5].tolist())
    if not counts:
        return "(no detections)"
    return ", ".join(f"{n} {_label_name(names, c)}{'s' * (n > 1)}" for c, n in sorted(counts.items()))


def yolo_label_lines(detections: torch.Tensor, image_shape: tuple[int, ...], save_conf: bool) -> list[str]:
    """``cls x y w h [conf]`` lines, box centre and size normalized by the original image's width and height."""
    height, width = image_shape[:2]
    lines = []
    for x1, y1, x2, y2, conf, cls in detections.tolist():
        values = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
        fields = [str(int(cls)), *(f"{v:.6f}" for v in values)] + ([f"{conf:.6f}"] if save_conf else [])
        lines.append(" ".join(fields))
    return lines


def annotate(image: np.ndarray, detections: torch.Tensor, names: list[str], line_thickness: int = 3,
             hide_labels: bool = False, hide_conf: bool = False) -> np.ndarray:
    """Draw boxes and labels on a BGR image in place and return it."""
    for x1, y1, x2, y2, conf, cls in detections.tolist():
        label = "" if hide_labels else _label_name(names, int(cls)) + ("" if hide_conf else f" {conf:.2f}")
        draw_box(image, (x1, y1, x2, y2), label, color(int(cls)), line_width=line_thickness)
    return image


def _image_size(imgsz: list[int] | tuple[int, ...] | int) -> tuple[int, int]:
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    return (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])


def to_batch(image: np.ndarray, size: tuple[int, int], stride: int, auto: bool) -> tuple[torch.Tensor, tuple]:
    """A BGR image letterboxed to a (1, 3, H, W) uint8 RGB batch, and the (ratio, pad) that maps boxes back."""
    boxed, ratio, pad = letterbox(image, size, auto=auto, stride=stride)
    batch = torch.from_numpy(np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1))).unsqueeze(0)
    return batch, (ratio, pad)


def crop_box(image: np.ndarray, xyxy: list[float], gain: float = 1.02, pad: int = 10) -> np.ndarray:
    """The box grown by ``gain`` and ``pad`` pixels (Ultralytics' save_one_box), clipped to the image."""
    x1, y1, x2, y2 = xyxy
    half_width, half_height = ((x2 - x1) * gain + pad) / 2, ((y2 - y1) * gain + pad) / 2
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    height, width = image.shape[:2]
    left, right = max(int(centre_x - half_width), 0), min(int(centre_x + half_width), width)
    top, bottom = max(int(centre_y - half_height), 0), min(int(centre_y + half_height), height)
    return image[top:bottom, left:right]


def save_crops(image: np.ndarray, detections: torch.Tensor, names: list[str], folder: Path, name: str) -> int:
    """Each detection cut from the clean image to ``folder/<class>/<name>.jpg`` (``<name>_2.jpg``, ... if several)."""
    saved = Counter()
    for *xyxy, _, cls in detections.tolist():
        label = _label_name(names, int(cls))
        saved[label] += 1
        path = folder / label / (f"{name}.jpg" if saved[label] == 1 else f"{name}_{saved[label]}.jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        crop = crop_box(image, xyxy)
        if crop.size and not cv2.imwrite(str(path), crop):
            raise OSError(f"could not write {path}")
    return sum(saved.values())


CSV_HEADER = ("Image Name", "Prediction", "Confidence")  # Ultralytics' predictions.csv columns


def csv_rows(name: str, detections: torch.Tensor, names: list[str]) -> list[tuple[str, str, str]]:
    """predictions.csv rows of one image or frame: its name, the class name and the confidence (2 decimals)."""
    return [(name, _label_name(names, int(cls)), f"{conf:.2f}") for *_, conf, cls in detections.tolist()]


class VideoWriters:
    """One mp4 (mp4v) per video, camera or stream, at the frame rate and size of its frames."""

    def __init__(self, save_dir: Path) -> None:
        self.save_dir = save_dir
        self.writers: dict[str, tuple[cv2.VideoWriter, Path]] = {}

    def write(self, frame: Frame, image: np.ndarray) -> Path:
        """Append ``image`` to the video of ``frame``'s source, opening it on its first frame."""
        if frame.path not in self.writers:
            path = self.save_dir / f"{frame.stem}.mp4"
            height, width = image.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), frame.fps, (width, height))
            if not writer.isOpened():
                raise OSError(f"could not open {path} for writing (mp4v); check the folder is writable")
            self.writers[frame.path] = (writer, path)
        writer, path = self.writers[frame.path]
        writer.write(image)
        return path

    def close(self) -> None:
        for writer, _ in self.writers.values():
            writer.release()
        self.writers.clear()


class Viewer:
    """Shows annotated frames with cv2.imshow, one window per source; ``q`` in a window stops a camera or stream."""

    def __init__(self) -> None:
        self.windows: set[str] = set()

    def show(self, title: str, image: np.ndarray) -> bool:
        """Show ``image``; returns True when the user pressed q."""
        if title not in self.windows:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
            cv2.resizeWindow(title, image.shape[1], image.shape[0])
            self.windows.add(title)
        cv2.imshow(title, image)
        return cv2.waitKey(1) & 0xFF == ord("q")

    def close(self) -> None:
        for title in self.windows:
            cv2.destroyWindow(title)


def run(weights: str | Path = "yolov5s.pt", source: str | Path = "data/images", imgsz: int | tuple[int, ...] = 640,
        conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 1000, device: str = "cpu",
        view_img: bool = False, save_txt: bool = False, save_csv: bool = False, save_conf: bool = False,
        save_crop: bool = False, nosave: bool = False, classes: list[int] | None = None, agnostic_nms: bool = False,
        project: str | Path = "runs/detect", name: str = "exp", exist_ok: bool = False, line_thickness: int = 3,
        hide_labels: bool = False, hide_conf: bool = False, vid_stride: int = 1, runtime: str | None = None,
        threads: int | None = None) -> Path:
    """Detect objects in every image and video frame of ``source``; returns the folder the results went to.

    ``source``: an image, a video, a folder, a glob or a .txt list of those, a camera index (``0``) or a stream URL.
    """
    frames = open_source(source, vid_stride)  # checks the source before the (slow) model load
    try:
        backend = load_backend(weights, device=device, runtime=runtime, threads=threads)
    except BaseException:
        frames.close()
        raise
    size = _image_size(imgsz)
    if backend.imgsz is not None and tuple(backend.imgsz) != size:
        LOGGER.info("%s has a fixed input of %s; using it instead of --imgsz %s", weights, backend.imgsz, size)
        size = tuple(backend.imgsz)
    problem = display_problem() if view_img or frames.live else None
    if view_img and problem:
        LOGGER.warning("--view-img: cannot show windows here (%s); continuing without them", problem)
    view_img = (view_img or frames.live) and problem is None
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    LOGGER.info("%s", backend)
    options = {"conf_thres": conf_thres, "iou_thres": iou_thres, "classes": classes, "agnostic": agnostic_nms,
               "max_det": max_det}
    drawing = {"line_thickness": line_thickness, "hide_labels": hide_labels, "hide_conf": hide_conf}
    videos, viewer = VideoWriters(save_dir), Viewer() if view_img else None
    csv_file = open(save_dir / "predictions.csv", "w", newline="", encoding="utf-8") if save_csv else None
    csv_writer = csv.writer(csv_file) if csv_file else None
    if csv_writer:
        csv_writer.writerow(CSV_HEADER)
    seconds, shape, count, crops = [0.0, 0.0, 0.0], None, 0, 0
    try:
        for frame in frames:
            batch, detections, times = detect_frame(backend, frame.image, size, options)
            shape, count = tuple(batch.shape), count + 1
            seconds = [total + value for total, value in zip(seconds, times)]
            if save_txt:
                lines = yolo_label_lines(detections, frame.image.shape, save_conf)
                (save_dir / "labels" / f"{frame.name}.txt").write_text("".join(f"{line}\n" for line in lines))
            if csv_writer:
                csv_writer.writerows(csv_rows(frame.name if frame.kind != "image" else Path(frame.path).name,
                                              detections, backend.names))
            if save_crop:
                crops += save_crops(frame.image, detections, backend.names, save_dir / "crops", frame.name)
            print(f"{frame.describe()}: {batch.shape[2]}x{batch.shape[3]} {describe(detections, backend.names)}, "
                  f"{times[1] * 1e3:.1f}ms")
            if nosave and viewer is None:
                continue
            annotated = annotate(frame.image.copy() if save_crop else frame.image, detections, backend.names,
                                 **drawing)
            if viewer is not None and viewer.show(str(frame.path), annotated) and frames.live:
                break
            if not nosave:
                _save_annotated(frame, annotated, save_dir, videos)
    except KeyboardInterrupt:  # Ctrl-C ends a camera or stream; what was written so far stays readable
        print("Interrupted: stopping")
    finally:
        frames.close()
        videos.close()
        if viewer is not None:
            viewer.close()
        if csv_file:
            csv_file.close()
    _print_summary(save_dir, seconds, count, shape, backend.runtime, save_txt, crops)
    return save_dir


def detect_frame(backend: Backend, image: np.ndarray, size: tuple[int, int],
                 options: dict) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float, float]]:
    """Letterbox, infer and NMS one BGR image: (batch, detections in image pixels, (pre, inference, NMS) seconds)."""
    start = time.perf_counter()
    # A fixed-size graph needs exactly its size; otherwise pad only to the next stride multiple (faster).
    batch, ratio_pad = to_batch(image, size, backend.stride, auto=backend.dynamic)
    loaded = time.perf_counter()
    prediction = backend(batch)
    inferred = time.perf_counter()
    detections = non_max_suppression(prediction, **options)[0]
    detections[:, :4] = scale_boxes(batch.shape[2:], detections[:, :4], image.shape, ratio_pad).round()
    done = time.perf_counter()
    return batch, detections, (loaded - start, inferred - loaded, done - inferred)


def _save_annotated(frame: Frame, annotated: np.ndarray, save_dir: Path, videos: VideoWriters) -> None:
    if frame.kind != "image":
        videos.write(frame, annotated)
    elif not cv2.imwrite(str(save_dir / Path(frame.path).name), annotated):
        raise OSError(f"could not write {save_dir / Path(frame.path).name}")


def _print_summary(save_dir: Path, seconds: list[float], count: int, shape: tuple | None, runtime: str,
                   save_txt: bool, crops: int) -> None:
    per_image = [1e3 * s / max(count, 1) for s in seconds]
    print(f"Speed: {per_image[0]:.1f}ms pre-process, {per_image[1]:.1f}ms inference, {per_image[2]:.1f}ms NMS per "
          f"image at shape {shape} ({runtime})")
    saved = f", {len(list((save_dir / 'labels').glob('*.txt')))} labels saved to {save_dir / 'labels'}" \
        if save_txt else ""
    saved += f", {crops} crops saved to {save_dir / 'crops'}" if crops else ""
    print(f"Results saved to {save_dir}{saved}")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Detect objects in images with a .pt or .onnx YOLOv5 model")
    parser.add_argument("--weights", type=str, required=True, help="model .pt or .onnx")
    parser.add_argument("--source", type=str, required=True,
                        help="image, video, folder, glob, .txt list, camera index (0) or stream URL (rtsp://...)")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference h, w")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    parser.add_argument("--device", default="cpu", help="cuda device, i.e. 0, or cpu")
    parser.add_argument("--view-img", action="store_true", help="show results in a window (needs a display)")
    parser.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt")
    parser.add_argument("--save-csv", action="store_true", help="save detections to predictions.csv")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-crop", action="store_true", help="save each detection to crops/<class>/")
    parser.add_argument("--nosave", action="store_true", help="do not save annotated images and videos")
    parser.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    parser.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    parser.add_argument("--project", default="runs/detect", help="save results to project/name")
    parser.add_argument("--name", default="exp", help="save results to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    parser.add_argument("--hide-labels", action="store_true", help="hide labels")
    parser.add_argument("--hide-conf", action="store_true", help="hide confidences")
    parser.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride: process every Nth frame")

    add_runtime_arguments(parser)
    opt = parser.parse_args(argv)
    is_stub = is_zoo_stub(opt.weights)  # resolved (mirror or download) when the model loads
    if not is_stub and not Path(opt.weights).is_file():
        parser.error(f"--weights {opt.weights} not found")
    if not is_stub and Path(opt.weights).suffix.lower() not in (".pt", ".onnx"):
        parser.error(f"--weights {opt.weights}: pass a .pt checkpoint, an .onnx file or a zoo: stub")
    if opt.vid_stride < 1:
        parser.error(f"--vid-stride {opt.vid_stride}: must be at least 1 (1 processes every frame)")
    if not 0 <= opt.conf_thres <= 1 or not 0 <= opt.iou_thres <= 1:
        parser.error("--conf-thres and --iou-thres must be in [0, 1]")
    return opt


def main(opt: argparse.Namespace) -> None:
    setup_script_logging()
    try:
        run(**vars(opt))
    except (FileNotFoundError, ValueError, ImportError, OSError, RuntimeError) as error:  # e.g. CheckpointError
        raise SystemExit(f"detect.py: error: {error}") from error


if __name__ == "__main__":
    main(parse_opt(sys.argv[1:]))
