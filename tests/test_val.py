"""val.py end to end: the numbers it prints equal Ultralytics' rules and pycocotools, recomputed from its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from reference_metrics import pairwise_iou, ultralytics_match, ultralytics_metrics

import val
from models.yolo import DetectionModel
from utils.checkpoint import build_checkpoint, save_checkpoint

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10).numpy()


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory) -> Path:
    """Validation images of the built-in generator (real JPEGs and label files) and their YAML.

    Only the square 128 px images are kept. Validating at 128 then resizes none of them (Ultralytics' val, and ours,
    which reproduces it, maps labels back from a resized image with the height's ratio alone, which would move them
    off the label files this test reads), and val visits them in file order, the order this test reads them in,
    so detections of equal confidence are ranked alike.
    """
    from data.scripts.make_shapes import generate

    root = tmp_path_factory.mktemp("val_shapes")
    generate(root / "shapes", num_train=2, num_val=80, imgsz=128, seed=5)
    for image in sorted((root / "shapes" / "images" / "val").glob("*.jpg")):
        if cv2.imread(str(image)).shape[:2] != (128, 128):
            image.unlink()
            (root / "shapes" / "labels" / "val" / f"{image.stem}.txt").unlink()
    yaml_path = root / "shapes.yaml"
    yaml_path.write_text(json.dumps({"path": str(root / "shapes"), "train": "images/train", "val": "images/val",
                                     "names": {i: str(i) for i in range(6)}}))
    return yaml_path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A tiny random model whose head fires everywhere with anchor-like boxes at varied confidence: thousands of
    overlapping detections, some on the labels, the setting where matching order decides the numbers."""
    torch.manual_seed(1)
    names = [str(i) for i in range(6)]
    model = DetectionModel("yolov5n.yaml", nc=len(names))
    model.names = names
    with torch.no_grad():
        for module in model.modules():  # BatchNorm statistics of a trained model's order, so features vary
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
        for conv in model.detect.m:
            weight = conv.weight.view(model.detect.na, -1, *conv.weight.shape[1:])
            weight[:, :4] *= 0.05  # boxes about the anchors, off the pixel grid (no IoU exactly on a threshold)
            bias = conv.bias.view(model.detect.na, -1)
            bias[:, :4] = 0.1 * torch.randn(model.detect.na, 4)
            bias[:, 4:] = torch.randn(model.detect.na, 1 + len(names))
    checkpoint = build_checkpoint(model_yaml=model.yaml, names=names, model_state=model.state_dict(), ema_state=None,
                                  ema_updates=0, optimizer_state=None, scaler_state=None, epoch=0, best_fitness=0.0,
                                  phase_best_fitness={}, options={}, hyp={}, sparsification={}, final=True)
    return save_checkpoint(checkpoint, tmp_path_factory.mktemp("val") / "model.pt")


def _labels(dataset_yaml: Path) -> dict[str, np.ndarray]:
    """YOLO label rows (class, x, y, w, h normalized) of the validation images, by file stem."""
    folder = dataset_yaml.parent / "shapes" / "labels" / "val"
    return {f.stem: np.loadtxt(f, ndmin=2).reshape(-1, 5) for f in sorted(folder.glob("*.txt"))}


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    return np.concatenate((xywh[:, :2] - xywh[:, 2:4] / 2, xywh[:, :2] + xywh[:, 2:4] / 2), 1)


def test_printed_metrics_equal_ultralytics_rules_on_the_saved_predictions(weights, shapes_dataset, tmp_path):
    (p, r, map50, map50_95, *_), _, _ = val.run(data=str(shapes_dataset), weights=str(weights), imgsz=128,
                                                 single_cls=True, save_txt=True, save_conf=True, project=tmp_path,
                                                 name="txt", plots=False)
    # Recompute from what val wrote (--save-txt --save-conf, normalized xywh) and the label files alone.
    # IoU is unchanged by scaling x and y, so normalized coordinates serve.
    stats = []
    for stem, labels in _labels(shapes_dataset).items():
        prediction_file = tmp_path / "txt" / "labels" / f"{stem}.txt"
        rows = np.loadtxt(prediction_file, ndmin=2) if prediction_file.exists() else np.zeros((0, 6))
        detections = np.concatenate((_xyxy(rows[:, 1:5]), rows[:, 5:6], rows[:, :1]), 1)
        label_boxes = np.concatenate((labels[:, :1], _xyxy(labels[:, 1:5])), 1)
        detections[:, 5], label_boxes[:, 0] = 0, 0  # single class
        correct = ultralytics_match(detections, label_boxes, IOU_THRESHOLDS)
        stats.append((correct, detections[:, 4], detections[:, 5], label_boxes[:, 0]))
    correct, confidence, predicted, label_class = (np.concatenate(x, 0) for x in zip(*stats))
    assert correct[:, 0].sum() >= 10 and len(confidence) > 1000  # real matches among many detections
    expected = ultralytics_metrics(correct, confidence, predicted, label_class)
    # A random model: small but real numbers, so they are compared relative to their size. P and R agree exactly;
    # the mAPs within 1%, because the six digits of the saved confidences rank a few near-equal ones differently.
    assert min(expected.values()) > 0
    assert (p, r) == pytest.approx((expected["P"], expected["R"]), rel=1e-9)
    assert (map50, map50_95) == pytest.approx((expected["mAP50"], expected["mAP50-95"]), rel=1e-2)


def test_save_json_reports_what_pycocotools_computes_from_the_saved_files(weights, shapes_dataset, tmp_path):
    (_, _, map50, map50_95, *_), _, _ = val.run(data=str(shapes_dataset), weights=str(weights), imgsz=128,
                                                 single_cls=True, save_json=True, project=tmp_path, name="json",
                                                 plots=False)
    predictions_path = tmp_path / "json" / "model_predictions.json"
    predictions = json.loads(predictions_path.read_text())
    # Ground truth written here from the label files and image sizes, not by the project's converter; only the
    # image ids val assigned are read from its file.
    ids = {Path(image["file_name"]).stem: image["id"]
           for image in json.loads((tmp_path / "json" / "ground_truth_coco.json").read_text())["images"]}
    images, annotations = [], []
    for stem, labels in _labels(shapes_dataset).items():
        height, width = cv2.imread(str(shapes_dataset.parent / "shapes" / "images" / "val" / f"{stem}.jpg")).shape[:2]
        images.append({"id": ids[stem], "width": width, "height": height})
        for _, x, y, w, h in labels:
            annotations.append({"id": len(annotations) + 1, "image_id": ids[stem], "category_id": 0,
                                "bbox": [(x - w / 2) * width, (y - h / 2) * height, w * width, h * height],
                                "area": w * width * h * height, "iscrowd": 0})
    ground_truth = COCO()
    ground_truth.dataset = {"images": images, "annotations": annotations,
                            "categories": [{"id": 0, "name": "0"}]}
    ground_truth.createIndex()
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(predictions), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] > 0
    assert (map50_95, map50) == pytest.approx((evaluation.stats[0], evaluation.stats[1]), rel=1e-6)


def test_reference_iou_is_the_usual_one():
    # guards the reference the tests above rely on
    iou = pairwise_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 5], [20, 20, 30, 30]]))
    assert iou.tolist() == [[0.5, 0.0]]
