"""COCO-format export and pycocotools evaluation, for ``val.py --save-json`` on any dataset.

For the real COCO dataset, predictions use the official 91-id category numbering (``coco80_to_coco91_class``) and
are scored against the official annotation JSON. For any other dataset, ``labels_to_coco`` writes the ground truth
from the YOLO labels themselves, with category ids equal to the class indices, so the same evaluator applies.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from utils.boxes import xyxy2xywh

LOGGER = logging.getLogger(__name__)


def coco80_to_coco91_class() -> list[int]:
    """Official COCO category id of each of the 80 contiguous YOLO classes (the 2014 paper listed 91 ids)."""
    return [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
            34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
            62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90]


def image_id_from_path(path: str | Path) -> int | str:
    """COCO's image id convention: the numeric file stem (``000000397133.jpg`` -> 397133), else the stem itself."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


def _to_numpy(x: torch.Tensor | np.ndarray | Sequence) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def labels_to_coco(image_files: Sequence[str | Path], labels: Sequence[np.ndarray], shapes: Sequence[Sequence[int]],
                   names: dict[int, str] | Sequence[str], class_map: Sequence[int] | None = None,
                   image_ids: Sequence[int | str] | None = None) -> dict:
    """COCO ground-truth dict from YOLO labels.

    Args:
        image_files: image paths; ids default to ``image_id_from_path`` of each (they must be unique).
        labels: per image, (n, 5) rows [class, x_center, y_center, w, h] normalized to [0, 1].
        shapes: per image, the original (width, height) in pixels: the order of the dataset's ``shapes`` array.
        names: class names, by index. class_map: category id of each class index (default: the index itself).
    """
    names = dict(enumerate(names)) if not isinstance(names, dict) else names
    if image_ids is None:
        image_ids = [image_id_from_path(f) for f in image_files]
        if len(set(image_ids)) != len(image_ids):
            raise ValueError("image file stems are not unique; pass image_ids explicitly")
    if not len(image_files) == len(labels) == len(shapes) == len(image_ids):
        raise ValueError("image_files, labels, shapes and image_ids must have one entry per image")

    images, annotations = [], []
    for file, image_id, image_labels, (width, height) in zip(image_files, image_ids, labels, shapes):
        images.append({"id": image_id, "file_name": Path(file).name, "height": int(height), "width": int(width)})
        for cls, xc, yc, w, h in _to_numpy(image_labels).reshape(-1, 5):
            box_w, box_h = w * width, h * height
            annotations.append({
                "id": len(annotations) + 1,  # COCOeval treats id 0 as 'unmatched', so ids start at 1
                "image_id": image_id,
                "category_id": class_map[int(cls)] if class_map else int(cls),
                "bbox": [round(float((xc - w / 2) * width), 3), round(float((yc - h / 2) * height), 3),
                         round(float(box_w), 3), round(float(box_h), 3)],
                "area": float(box_w * box_h),
                "iscrowd": 0,
            })
    categories = [{"id": class_map[int(k)] if class_map else int(k), "name": str(v)} for k, v in names.items()]
    return {"info": {"description": "converted from YOLO labels"}, "licenses": [], "images": images,
            "annotations": annotations, "categories": categories}


def predictions_to_coco(detections: torch.Tensor | np.ndarray, image_id: int | str,
                        class_map: Sequence[int] | None = None) -> list[dict]:
    """COCO result records for one image's detections (n, 6) [x1, y1, x2, y2, conf, class] in original pixels.

    ``class_map`` maps class indices to category ids: ``coco80_to_coco91_class()`` for the real COCO dataset,
    None (identity) for ground truth made by ``labels_to_coco``.
    """
    detections = _to_numpy(detections).reshape(-1, 6)
    boxes = xyxy2xywh(detections[:, :4])
    boxes[:, :2] -= boxes[:, 2:] / 2  # center to top-left corner
    return [{"image_id": image_id,
             "category_id": class_map[int(cls)] if class_map else int(cls),
             "bbox": [round(float(v), 3) for v in box],
             "score": round(float(score), 5)}
            for box, score, cls in zip(boxes, detections[:, 4], detections[:, 5])]


def evaluate_coco(gt: str | Path | dict, predictions: str | Path | list[dict], iou_type: str = "bbox",
                  image_ids: Sequence[int | str] | None = None) -> tuple[float, float]:
    """Score predictions with pycocotools; returns (mAP@0.5:0.95, mAP@0.5).

    ``gt`` is a COCO JSON path or dict, ``predictions`` a result JSON path or list of records. ``image_ids`` limits
    the evaluation to those images (val on a subset). pycocotools' printed summary goes to this module's logger.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(predictions, (str, Path)):
        with open(predictions, encoding="utf-8") as f:
            predictions = json.load(f)
    if not predictions:
        LOGGER.warning("COCO evaluation: no predictions, mAP is 0")
        return 0.0, 0.0

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        if isinstance(gt, dict):
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(gt)
            coco_gt.createIndex()
        else:
            coco_gt = COCO(str(gt))
        coco_dt = coco_gt.loadRes(copy.deepcopy(list(predictions)))  # loadRes edits the records in place
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    LOGGER.info(printed.getvalue())
    map50_95, map50 = (max(float(x), 0.0) for x in evaluator.stats[:2])  # -1 means no ground truth at all
    return map50_95, map50
