"""Validate a detector on a dataset: P, R, mAP@0.5, mAP@0.5:0.95, per class and overall, plus speed.

    python val.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --imgsz 320
    python val.py --weights runs/train/exp/weights/best.onnx --data data/shapes.yaml --save-json

Accepts project checkpoints (dense or sparsified: the structure is rebuilt and sparsity/quantization reported),
official YOLOv5 ``.pt`` files and exported ``.onnx`` files (onnxruntime or DeepSparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.boxes import non_max_suppression, scale_boxes, xywh2xyxy, xyxy2xywh  # noqa: E402
from utils.coco_eval import evaluate_coco, labels_to_coco, predictions_to_coco  # noqa: E402
from utils.dataset import create_dataloader  # noqa: E402
from utils.dataset_config import check_dataset  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.inference import add_runtime_arguments, load_backend  # noqa: E402
from utils.logs import setup_script_logging  # noqa: E402
from utils.metrics import ConfusionMatrix, ap_per_class, match_predictions  # noqa: E402
from utils.plots import plot_images  # noqa: E402
from utils.runs import increment_path  # noqa: E402
from utils.sparsification.report import sparsity_report  # noqa: E402

LOGGER = logging.getLogger("val")


class Metrics(NamedTuple):
    """The overall numbers of a validation, in results.csv's column order (a tuple, so it also unpacks and slices)."""

    precision: float
    recall: float
    map50: float
    map: float  # mAP@0.5:0.95
    box_loss: float
    obj_loss: float
    cls_loss: float


class ValResult(NamedTuple):
    """What ``run`` returns: the overall metrics, mAP@0.5:0.95 per class, and milliseconds per image."""

    metrics: Metrics
    maps: np.ndarray
    speeds_ms: tuple[float, float, float]  # pre-process, inference, NMS


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=str, default=str(ROOT / "data" / "shapes.yaml"), help="dataset YAML")
    parser.add_argument("--weights", type=str, required=True, help="model .pt or .onnx")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    parser.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    parser.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    parser.add_argument("--task", default="val", choices=["train", "val", "test", "speed"])
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu")
    parser.add_argument("--workers", type=int, default=8, help="max dataloader workers")
    parser.add_argument("--single-cls", action="store_true", help="treat as single-class dataset")
    parser.add_argument("--verbose", action="store_true", help="report mAP by class")
    parser.add_argument("--save-txt", action="store_true", help="save results to *.txt")
    parser.add_argument("--save-conf", action="store_true", help="save confidences in --save-txt labels")
    parser.add_argument("--save-json", action="store_true", help="save a COCO-JSON results file and score it")
    parser.add_argument("--project", default=str(ROOT / "runs" / "val"), help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    parser.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    parser.add_argument("--ap-method", default="yolov5", choices=["yolov5", "coco"],
                        help="AP integration: Ultralytics' interpolated trapezoid (as its val prints) or COCO's")

    add_runtime_arguments(parser)
    opt = parser.parse_args(argv)
    return opt


def _forward(model, images: torch.Tensor, with_raw: bool):
    """Decoded predictions and (for PyTorch models, when a loss is wanted) the raw head outputs."""
    output = model(images)
    if isinstance(output, (tuple, list)):
        return output[0], (output[1] if with_raw and len(output) > 1 else None)
    return output, None


def _coco_ground_truth(dataset, names: dict[int, str], single_cls: bool) -> dict:
    labels = [lb.copy() for lb in dataset.labels]
    if single_cls:
        for lb in labels:
            lb[:, 0] = 0
    shapes_wh = [(int(w), int(h)) for w, h in dataset.shapes]
    return labels_to_coco(dataset.im_files, labels, shapes_wh, names, image_ids=list(range(len(dataset.im_files))))


def run(data: dict | str, weights: str | None = None, batch_size: int = 32, imgsz: int = 640,
        conf_thres: float = 0.001, iou_thres: float = 0.6, max_det: int = 300, task: str = "val", device: str = "",
        workers: int = 8, single_cls: bool = False, verbose: bool = False, save_txt: bool = False,
        save_conf: bool = False, save_json: bool = False, project: str | Path = ROOT / "runs" / "val",
        name: str = "exp", exist_ok: bool = False, half: bool = False, model=None, dataloader=None,
        save_dir: Path = Path(""), plots: bool = True, compute_loss=None, runtime: str | None = None,
        threads: int | None = None, ap_method: str = "yolov5") -> ValResult:
    """Validate ``weights`` (or, during training, ``model``) on ``data``; see ValResult."""
    training = model is not None
    data = data if isinstance(data, dict) else check_dataset(data)
    if training:
        device = next(model.parameters()).device
        model.eval()
        stride = int(model.stride.max())
        names = dict(enumerate(model.names))
        quantization_note = ""
    else:
        device = select_device(device)
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        (save_dir / "labels" if save_txt else save_dir).mkdir(parents=True, exist_ok=True)
        model = load_backend(weights, device=device, runtime=runtime, threads=threads)
        stride = int(model.stride)
        names = dict(enumerate(model.names)) if model.names else {i: str(i) for i in range(int(data["nc"]))}
        if getattr(model, "imgsz", None) and model.imgsz[0] != imgsz:
            LOGGER.info("%s has a fixed input of %s; validating at that size", weights, model.imgsz)
            imgsz = int(model.imgsz[0])
        quantization_note = _sparsity_note(model)
        if task == "speed":
            conf_thres, iou_thres, plots = 0.25, 0.45, False
        if dataloader is None:
            split = task if task in ("train", "val", "test") else "val"
            if not data.get(split):
                raise ValueError(f"{data.get('yaml_file', 'dataset')}: no '{split}' split to validate on")
            fixed_shape = getattr(model, "imgsz", None) is not None
            dataloader = create_dataloader(data[split], imgsz, batch_size if not fixed_shape else model.batch_size,
                                           stride, rect=not fixed_shape, pad=0.5 if not fixed_shape else 0.0,
                                           workers=workers, prefix=f"{split}: ", single_cls=single_cls)[0]
    if half and device.type != "cuda":
        raise ValueError("--half needs a CUDA device")

    nc = 1 if single_cls else int(data["nc"])
    iouv = torch.linspace(0.5, 0.95, 10, device=device)
    confusion_matrix = ConfusionMatrix(nc=nc)
    seen = 0
    speeds = [0.0, 0.0, 0.0]
    loss = torch.zeros(3, device=device)
    stats: list[tuple] = []
    json_records: list[dict] = []
    dataset = dataloader.dataset
    index_of = {str(p): i for i, p in enumerate(dataset.im_files)}
    header = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
    progress = tqdm(dataloader, desc=header, bar_format="{l_bar}{bar:10}{r_bar}", file=sys.stdout,
                    disable=training)
    plotted_batch = None
    with torch.no_grad():
        for batch_index, (images, targets, paths, shapes) in enumerate(progress):
            t0 = time.perf_counter()
            images = images.to(device, non_blocking=True)
            images = images.half() / 255 if half else images.float() / 255
            targets = targets.to(device)
            batch, _, height, width = images.shape
            t1 = time.perf_counter()
            predictions, raw = _forward(model, images, with_raw=compute_loss is not None)
            t2 = time.perf_counter()
            if compute_loss is not None and raw is not None:
                loss += compute_loss([x.float() for x in raw], targets)[1]
            targets[:, 2:] *= torch.tensor((width, height, width, height), device=device)
            predictions = non_max_suppression(predictions.float(), conf_thres, iou_thres, multi_label=True,
                                              agnostic=single_cls, max_det=max_det)
            t3 = time.perf_counter()
            speeds = [speeds[0] + t1 - t0, speeds[1] + t2 - t1, speeds[2] + t3 - t2]

            for si, prediction in enumerate(predictions):
                labels = targets[targets[:, 0] == si, 1:]
                num_labels, num_predictions = labels.shape[0], prediction.shape[0]
                original_shape, ratio_pad = shapes[si][0], shapes[si][1]
                correct = torch.zeros(num_predictions, iouv.numel(), dtype=torch.bool, device=device)
                seen += 1
                if num_predictions == 0:
                    if num_labels:
                        stats.append((correct, *torch.zeros((2, 0), device=device), labels[:, 0]))
                        if plots:
                            confusion_matrix.process_batch(None, labels)
                    continue
                if single_cls:
                    prediction[:, 5] = 0
                predn = prediction.clone()
                scale_boxes(images[si].shape[1:], predn[:, :4], original_shape, ratio_pad)
                if num_labels:
                    target_boxes = xywh2xyxy(labels[:, 1:5])
                    scale_boxes(images[si].shape[1:], target_boxes, original_shape, ratio_pad)
                    labelsn = torch.cat((labels[:, 0:1], target_boxes), 1)
                    correct = match_predictions(predn, labelsn, iouv)
                    if plots:
                        confusion_matrix.process_batch(predn, labelsn)
                stats.append((correct, prediction[:, 4], prediction[:, 5], labels[:, 0]))
                if save_txt:
                    _save_txt(predn, save_conf, original_shape, save_dir / "labels" / f"{Path(paths[si]).stem}.txt")
                if save_json:
                    json_records += predictions_to_coco(predn, index_of.get(str(paths[si]), Path(paths[si]).stem))
            if plots and batch_index == 0:
                plotted_batch = (images.cpu(), targets.cpu(), paths, [p.cpu() for p in predictions])

    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*stats)]
    mp = mr = map50 = map50_95 = 0.0
    ap_classes = np.zeros(0, dtype=int)
    p = r = ap50 = ap = np.zeros(0)
    if len(stats) and stats[0].any():
        _tp, _fp, p, r, _f1, ap, ap_classes = ap_per_class(*stats, plot=plots, save_dir=save_dir, names=names,
                                                       ap_method=ap_method)
        ap50, ap = ap[:, 0], ap.mean(1)
        mp, mr, map50, map50_95 = p.mean(), r.mean(), ap50.mean(), ap.mean()
    instances = np.bincount(stats[3].astype(int), minlength=nc) if len(stats) else np.zeros(nc, dtype=int)

    row = "%22s" + "%11i" * 2 + "%11.3g" * 4
    LOGGER.info(header)
    LOGGER.info(row, "all", seen, instances.sum(), mp, mr, map50, map50_95)
    if instances.sum() == 0:
        LOGGER.warning("no labels found in the %s set: metrics cannot be computed", task)
    if (verbose or (nc < 50 and not training)) and nc > 1 and len(stats):
        for i, c in enumerate(ap_classes):
            LOGGER.info(row, names.get(int(c), str(c)), seen, instances[c], p[i], r[i], ap50[i], ap[i])
    speed_ms = tuple(x / max(seen, 1) * 1e3 for x in speeds)
    if not training:
        LOGGER.info("Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape %s",
                    *speed_ms, (batch_size, 3, imgsz, imgsz))
        if quantization_note:
            LOGGER.info(quantization_note)
    if plots:
        confusion_matrix.plot(save_dir=save_dir, names=names)
        if plotted_batch is not None:
            images_b, targets_b, paths_b, preds_b = plotted_batch
            plot_images(images_b, targets_b, paths_b, save_dir / "val_batch0_labels.jpg", names)
            plot_images(images_b, _predictions_to_targets(preds_b), paths_b, save_dir / "val_batch0_pred.jpg", names)

    if save_json and json_records:
        predictions_path = save_dir / f"{Path(weights or 'model').stem}_predictions.json"
        with open(predictions_path, "w", encoding="utf-8") as f:
            json.dump(json_records, f)

        ground_truth = _coco_ground_truth(dataset, {i: names.get(i, str(i)) for i in range(nc)}, single_cls)
        with open(save_dir / "ground_truth_coco.json", "w", encoding="utf-8") as f:
            json.dump(ground_truth, f)
        map50_95, map50 = evaluate_coco(ground_truth, json_records)
        LOGGER.info("pycocotools: mAP@0.5:0.95 %.4f  mAP@0.5 %.4f  (saved %s)", map50_95, map50, predictions_path)

    if not training:
        LOGGER.info("results saved to %s", save_dir)
    maps = np.zeros(nc) + map50_95
    for i, c in enumerate(ap_classes):
        maps[c] = ap[i]
    model_losses = (loss.cpu() / max(len(dataloader), 1)).tolist()
    return ValResult(Metrics(float(mp), float(mr), float(map50), float(map50_95), *model_losses), maps, speed_ms)


def _predictions_to_targets(predictions: list[torch.Tensor]) -> torch.Tensor:
    """NMS output to the (image, class, x, y, w, h, conf) rows ``plot_images`` draws."""
    rows = []
    for i, p in enumerate(predictions):
        p = p[:50]
        rows.append(torch.cat((torch.full((p.shape[0], 1), i), p[:, 5:6], xyxy2xywh(p[:, :4]), p[:, 4:5]), 1))
    return torch.cat(rows, 0) if rows else torch.zeros((0, 7))


def _save_txt(predn: torch.Tensor, save_conf: bool, shape, file: Path) -> None:
    gain = torch.tensor(shape, device=predn.device)[[1, 0, 1, 0]]
    with open(file, "a", encoding="utf-8") as f:
        for *xyxy, conf, cls in predn.tolist():
            xywh = (xyxy2xywh(torch.tensor(xyxy, device=predn.device).view(1, 4)) / gain).view(-1).tolist()
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(("%g " * len(line)).rstrip() % line + "\n")


def _sparsity_note(backend) -> str:
    """One line on sparsity and quantization for PyTorch models."""
    model = getattr(backend, "model", None)
    if not isinstance(model, torch.nn.Module):
        return ""

    return "sparsity: " + sparsity_report(model).summary_line()


def main(opt: argparse.Namespace):
    setup_script_logging(opt.verbose, force=True)
    try:
        return run(**vars(opt))
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        LOGGER.error("error: %s", error)
        raise SystemExit(1) from error


if __name__ == "__main__":
    main(parse_opt())
