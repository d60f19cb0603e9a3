"""Run detection on images with a .pt checkpoint or an exported .onnx (onnxruntime or DeepSparse).

Usage:
    python detect.py --weights runs/train/exp/weights/best.pt --source data/images
    python detect.py --weights best.onnx --source 'images/*.jpg' --runtime deepsparse --save-txt --save-conf

Writes annotated images and, with ``--save-txt``, YOLO labels (``cls x y w h [conf]``, normalized to the original
image) to ``runs/detect/exp``, ``exp2``, ...
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch

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
    from utils.plots import color, draw_box

    for x1, y1, x2, y2, conf, cls in detections.tolist():
        label = "" if hide_labels else _label_name(names, int(cls)) + ("" if hide_conf else f" {conf:.2f}")
        draw_box(image, (x1, y1, x2, y2), label, color(int(cls)), line_width=line_thickness)
    return image


def _image_size(imgsz: list[int] | tuple[int, ...] | int) -> tuple[int, int]:
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    return (sizes[0], sizes[0]) if len(sizes) == 1 else (sizes[0], sizes[1])


def run(weights: str | Path = "yolov5s.pt", source: str | Path = "data/images", imgsz: int | tuple[int, ...] = 640,
        conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 1000, device: str = "cpu",
        save_txt: bool = False, save_conf: bool = False, nosave: bool = False, classes: list[int] | None = None,
        agnostic_nms: bool = False, project: str | Path = "runs/detect", name: str = "exp", exist_ok: bool = False,
        line_thickness: int = 3, hide_labels: bool = False, hide_conf: bool = False,
        runtime: str | None = None, threads: int | None = None) -> Path:
    """Detect objects in every image of ``source``; returns the folder the results were written to."""
    from utils.boxes import non_max_suppression, scale_boxes
    from utils.inference import list_images, load_backend, load_letterboxed
    from utils.runs import increment_path

    files = list_images(source)
    backend = load_backend(weights, device=device, runtime=runtime, threads=threads)
    size = _image_size(imgsz)
    if backend.imgsz is not None and tuple(backend.imgsz) != size:
        LOGGER.info("%s has a fixed input of %s; using it instead of --imgsz %s", weights, backend.imgsz, size)
        size = tuple(backend.imgsz)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
    LOGGER.info("%s", backend)

    seconds = [0.0, 0.0, 0.0]  # pre-process, inference, NMS
    shape = None
    for index, file in enumerate(files, 1):
        start = time.perf_counter()
        # A fixed-size graph needs exactly its size; otherwise pad only to the next stride multiple (faster).
        image, original, ratio_pad = load_letterboxed(file, size, stride=backend.stride, auto=backend.dynamic)
        batch = image.unsqueeze(0)
        shape = tuple(batch.shape)
        loaded = time.perf_counter()
        prediction = backend(batch)
        inferred = time.perf_counter()
        detections = non_max_suppression(prediction, conf_thres, iou_thres, classes=classes,
                                         agnostic=agnostic_nms, max_det=max_det)[0]
        detections[:, :4] = scale_boxes(batch.shape[2:], detections[:, :4], original.shape, ratio_pad).round()
        done = time.perf_counter()
        for i, value in enumerate((loaded - start, inferred - loaded, done - inferred)):
            seconds[i] += value

        if save_txt:
            lines = yolo_label_lines(detections, original.shape, save_conf)
            (save_dir / "labels" / f"{file.stem}.txt").write_text("".join(f"{line}\n" for line in lines))
        if not nosave:
            annotated = annotate(original, detections, backend.names, line_thickness, hide_labels, hide_conf)
            if not cv2.imwrite(str(save_dir / file.name), annotated):
                raise OSError(f"could not write {save_dir / file.name}")
        print(f"image {index}/{len(files)} {file}: {batch.shape[2]}x{batch.shape[3]} "
              f"{describe(detections, backend.names)}, {(inferred - loaded) * 1e3:.1f}ms")

    per_image = [1e3 * s / len(files) for s in seconds]
    print(f"Speed: {per_image[0]:.1f}ms pre-process, {per_image[1]:.1f}ms inference, {per_image[2]:.1f}ms NMS per "
          f"image at shape {shape} ({backend.runtime})")
    saved = f", {len(list((save_dir / 'labels').glob('*.txt')))} labels saved to {save_dir / 'labels'}" \
        if save_txt else ""
    print(f"Results saved to {save_dir}{saved}")
    return save_dir


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Detect objects in images with a .pt or .onnx YOLOv5 model")
    parser.add_argument("--weights", type=str, required=True, help="model .pt or .onnx")
    parser.add_argument("--source", type=str, required=True, help="image, folder, glob or .txt list of images")
    parser.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference h, w")
    parser.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=1000, help="maximum detections per image")
    parser.add_argument("--device", default="cpu", help="cuda device, i.e. 0, or cpu")
    parser.add_argument("--save-txt", action="store_true", help="save results to labels/*.txt")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--nosave", action="store_true", help="do not save annotated images")
    parser.add_argument("--classes", nargs="+", type=int, help="filter by class: --classes 0, or --classes 0 2 3")
    parser.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    parser.add_argument("--project", default="runs/detect", help="save results to project/name")
    parser.add_argument("--name", default="exp", help="save results to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--line-thickness", default=3, type=int, help="bounding box thickness (pixels)")
    parser.add_argument("--hide-labels", action="store_true", help="hide labels")
    parser.add_argument("--hide-conf", action="store_true", help="hide confidences")
    from utils.inference import add_runtime_arguments

    add_runtime_arguments(parser)
    opt = parser.parse_args(argv)
    is_stub = opt.weights.startswith("zoo:")  # resolved (mirror or download) when the model loads
    if not is_stub and not Path(opt.weights).is_file():
        parser.error(f"--weights {opt.weights} not found")
    if not is_stub and Path(opt.weights).suffix.lower() not in (".pt", ".onnx"):
        parser.error(f"--weights {opt.weights}: pass a .pt checkpoint, an .onnx file or a zoo: stub")
    if not 0 <= opt.conf_thres <= 1 or not 0 <= opt.iou_thres <= 1:
        parser.error("--conf-thres and --iou-thres must be in [0, 1]")
    return opt


def main(opt: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(**vars(opt))
    except (FileNotFoundError, ValueError, ImportError, OSError, RuntimeError) as error:  # e.g. CheckpointError
        raise SystemExit(f"detect.py: error: {error}") from error


if __name__ == "__main__":
    main(parse_opt(sys.argv[1:]))
