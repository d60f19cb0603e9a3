"""AP, matching, confusion matrix and COCO export/evaluation, including an agreement check with pycocotools."""

import numpy as np
import pytest
import torch

from utils.coco_eval import (
    coco80_to_coco91_class,
    evaluate_coco,
    image_id_from_path,
    labels_to_coco,
    predictions_to_coco,
)
from utils.metrics import ConfusionMatrix, ap_per_class, compute_ap, fitness, match_predictions

IOUV = torch.linspace(0.5, 0.95, 10)


def test_fitness_weights_strict_map():
    assert fitness(np.array([[0.5, 0.5, 0.6, 0.4]])) == pytest.approx([0.1 * 0.6 + 0.9 * 0.4])


def test_compute_ap_methods():
    assert compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]))[0] == pytest.approx(1.0)
    # Ultralytics' trapezoid closes the curve at (1, 0), so perfect predictions top out at 0.995
    assert compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), method="yolov5")[0] == pytest.approx(0.995)
    assert compute_ap(np.array([]), np.array([]))[0] == 0.0


def test_ap_per_class_perfect_predictions():
    tp = np.ones((4, 10), dtype=bool)
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    pred_cls = np.array([0, 1, 0, 1])
    tp_count, fp, p, r, f1, ap, classes = ap_per_class(tp, conf, pred_cls, target_cls=np.array([0, 0, 1, 1]))
    assert classes.tolist() == [0, 1]
    assert ap.shape == (2, 10)
    assert np.allclose(ap, 1.0)
    assert np.allclose(p, 1.0) and np.allclose(r, 1.0, atol=1e-6)
    assert tp_count.tolist() == [2, 2] and fp.tolist() == [0, 0]


def test_ap_per_class_hand_computed_mixed_case():
    # One class, 3 labels; by falling confidence: TP, FP, TP (one label missed).
    # recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3.
    # Recall thresholds 0.00..0.33 (34 of them) read 1, 0.34..0.66 (33) read 2/3, 0.67..1.00 read 0.
    tp = np.array([[True], [False], [True]])
    _, _, _, _, _, ap, _ = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(3))
    assert ap[0, 0] == pytest.approx((34 + 33 * 2 / 3) / 101)


def test_ap_per_class_all_wrong_and_missing_classes():
    tp = np.zeros((3, 10), dtype=bool)
    _, _, p, r, _, ap, classes = ap_per_class(tp, np.array([0.9, 0.5, 0.2]), np.array([0, 0, 2]),
                                              np.array([0, 1]))
    assert classes.tolist() == [0, 1]  # class 2 has no labels: ignored; class 1 has no predictions: AP 0
    assert np.allclose(ap, 0.0) and np.allclose(p, 0.0) and np.allclose(r, 0.0)


def test_ap_per_class_writes_curves(tmp_path):
    tp = np.array([[True], [False], [True]])
    ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(3), plot=True, save_dir=tmp_path,
                 names={0: "cat"})
    assert {p.name for p in tmp_path.glob("*.png")} == {"PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"}


def test_match_predictions_thresholds_duplicates_and_classes():
    labels = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0], [1, 20.0, 20.0, 30.0, 30.0]])
    detections = torch.tensor([[0.0, 0.0, 10.0, 7.2, 0.9, 0],  # IoU 0.72 with label 0
                               [0.0, 0.0, 10.0, 10.0, 0.8, 0],  # IoU 1.0 with label 0: the better match wins
                               [20.0, 20.0, 30.0, 30.0, 0.7, 0],  # right box, wrong class
                               [20.0, 20.0, 30.0, 27.2, 0.6, 1]])  # IoU 0.72 with label 1
    correct = match_predictions(detections, labels, IOUV)
    assert correct.shape == (4, 10) and correct.dtype == torch.bool
    assert not correct[0].any()  # YOLOv5 matches by IoU, not by confidence (COCO would give this one the label)
    assert correct[1].all()
    assert not correct[2].any()
    assert correct[3].tolist() == [True] * 5 + [False] * 5  # passes 0.50..0.70, fails 0.75..0.95
    assert match_predictions(detections, labels[:0], IOUV).sum() == 0
    assert match_predictions(detections[:0], labels, IOUV).shape == (0, 10)


def test_confusion_matrix(tmp_path):
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0], [1, 20.0, 20.0, 30.0, 30.0]])
    detections = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.9, 0],  # correct
                               [20.0, 20.0, 30.0, 30.0, 0.8, 0],  # class 1 taken for class 0
                               [50.0, 50.0, 60.0, 60.0, 0.7, 1],  # on background
                               [0.0, 0.0, 10.0, 10.0, 0.1, 1]])  # under the confidence threshold
    cm.process_batch(detections, labels)
    cm.process_batch(None, labels[:1])  # an image with no detections: its label is missed
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 0]]
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [1, 1]
    assert cm.plot(tmp_path, names=["a", "b"]).exists()


def test_coco_export_helpers():
    assert len(coco80_to_coco91_class()) == 80 and coco80_to_coco91_class()[-1] == 90
    assert image_id_from_path("images/000000397133.jpg") == 397133
    assert image_id_from_path("a/street.png") == "street"
    gt = labels_to_coco(["a/1.jpg"], [np.array([[2, 0.5, 0.5, 0.5, 0.25]])], [(200, 100)], ["x", "y", "z"])
    assert gt["images"] == [{"id": 1, "file_name": "1.jpg", "height": 100, "width": 200}]
    ann = gt["annotations"][0]
    assert ann["bbox"] == [50.0, 37.5, 100.0, 25.0] and ann["category_id"] == 2 and ann["area"] == 2500.0
    assert ann["id"] == 1 and ann["iscrowd"] == 0
    assert [c["id"] for c in gt["categories"]] == [0, 1, 2]
    records = predictions_to_coco(torch.tensor([[50.0, 37.5, 150.0, 62.5, 0.9, 2]]), 1, class_map=[5, 6, 7])
    assert records == [{"image_id": 1, "category_id": 7, "bbox": [50.0, 37.5, 100.0, 25.0], "score": 0.9}]
    with pytest.raises(ValueError):
        labels_to_coco(["a/1.jpg", "b/1.jpg"], [np.zeros((0, 5))] * 2, [(10, 10)] * 2, ["x"])


def _synthetic_set(seed: int = 0, duplicates: float = 0.2, n_images: int = 6, nc: int = 3, width: int = 640,
                   height: int = 480) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: labels (m, 5) and detections (n, 6), in pixels.

    Includes misses, wrong classes, background false positives and IoUs spread over 0.4..1; a fraction
    ``duplicates`` of the detections get a looser, usually less confident twin (the case where YOLOv5's IoU-first
    matching and COCO's confidence-first matching can pick different winners).
    """
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        n = int(rng.integers(2, 7))
        xy = rng.uniform([0, 0], [width - 120, height - 120], size=(n, 2))
        wh = rng.uniform(20, 120, size=(n, 2))
        boxes = np.concatenate((xy, xy + wh), 1)
        classes = rng.integers(0, nc, size=n)
        dets = []
        for box, cls, size in zip(boxes, classes, wh):
            if rng.random() < 0.15:
                continue  # missed
            jitter = rng.normal(0, 0.06, size=4) * np.concatenate((size, size))
            conf = rng.uniform(0.2, 1)
            wrong_class = rng.random() < 0.1
            dets.append([*(box + jitter), conf, (cls + 1) % nc if wrong_class else cls])
            if rng.random() < duplicates:
                dets.append([*(box + 2.5 * jitter), conf * rng.uniform(0.3, 1.1), cls])
        for _ in range(int(rng.integers(0, 3))):  # background false positives
            xy0 = rng.uniform([0, 0], [width - 100, height - 100])
            dets.append([*xy0, *(xy0 + rng.uniform(20, 100, 2)), rng.uniform(0.05, 0.7), rng.integers(0, nc)])
        dets = np.array(dets).reshape(-1, 6)
        dets[:, :4] = dets[:, :4].clip(0, [width, height, width, height])
        dets[:, :4] = dets[:, :4].round(3)  # what the COCO JSON keeps
        dets[:, 4] = dets[:, 4].clip(0, 1).round(5)
        labels = np.concatenate((classes[:, None], boxes.round(3)), 1)
        images.append((torch.tensor(labels, dtype=torch.float32), torch.tensor(dets, dtype=torch.float32)))
    return images


def _ours_and_coco(images, width: int = 640, height: int = 480, nc: int = 3) -> tuple[float, float, float, float]:
    """(ours mAP@0.5, ours mAP@0.5:0.95, COCO mAP@0.5, COCO mAP@0.5:0.95)."""
    stats = []
    for labels, dets in images:
        correct = match_predictions(dets, labels, IOUV)
        stats.append((correct.numpy(), dets[:, 4].numpy(), dets[:, 5].numpy(), labels[:, 0].numpy()))
    tp, conf, pred_cls, target_cls = (np.concatenate(x, 0) for x in zip(*stats))
    *_, ap, _ = ap_per_class(tp, conf, pred_cls, target_cls)

    files = [f"{i}.jpg" for i in range(len(images))]
    yolo_labels = []
    for labels, _ in images:
        xyxy = labels[:, 1:].numpy().astype(np.float64)
        xywhn = np.stack(((xyxy[:, 0] + xyxy[:, 2]) / 2 / width, (xyxy[:, 1] + xyxy[:, 3]) / 2 / height,
                          (xyxy[:, 2] - xyxy[:, 0]) / width, (xyxy[:, 3] - xyxy[:, 1]) / height), 1)
        yolo_labels.append(np.concatenate((labels[:, :1].numpy(), xywhn), 1))
    gt = labels_to_coco(files, yolo_labels, [(width, height)] * len(files), [f"c{i}" for i in range(nc)])
    records = [r for i, (_, dets) in enumerate(images) for r in predictions_to_coco(dets, i)]
    coco_map, coco_map50 = evaluate_coco(gt, records)
    return float(ap[:, 0].mean()), float(ap.mean()), coco_map50, coco_map


def test_map_equals_pycocotools_when_matching_is_unambiguous():
    # No detection competes with another for a label, so IoU-first and confidence-first matching coincide:
    # what remains is the AP computation, which must then reproduce pycocotools (up to float32 IoUs).
    ours_map50, ours_map, coco_map50, coco_map = _ours_and_coco(_synthetic_set(seed=1, duplicates=0.0))
    assert 0.3 < coco_map < coco_map50 < 0.95  # a non-trivial set
    assert ours_map50 == pytest.approx(coco_map50, abs=1e-3)
    assert ours_map == pytest.approx(coco_map, abs=1e-3)


def test_map_agrees_with_pycocotools_with_duplicate_detections():
    # The gap is matching policy alone: YOLOv5 gives a label to its best-IoU detection, COCO to its most confident
    # one, so a confident loose twin becomes a false positive for us and a true positive for COCO (ours reads lower).
    # Observed here (seed 4): mAP@0.5 ours 0.6726 vs COCO 0.6818, mAP@0.5:0.95 ours 0.4511 vs COCO 0.4537.
    # Over seeds 0-9 with 40% twins: gaps 0 to 0.045 (mAP@0.5) and 0 to 0.027 (mAP@0.5:0.95); with no twins, 0.
    ours_map50, ours_map, coco_map50, coco_map = _ours_and_coco(_synthetic_set(seed=4, duplicates=0.4))
    assert ours_map50 < coco_map50  # the difference is real: this set exercises it
    assert 0.3 < coco_map < coco_map50 < 0.95
    assert ours_map50 == pytest.approx(coco_map50, abs=0.02)
    assert ours_map == pytest.approx(coco_map, abs=0.02)


def test_evaluate_coco_perfect_and_empty():
    gt = labels_to_coco(["7.jpg"], [np.array([[0, 0.5, 0.5, 0.2, 0.2], [1, 0.2, 0.2, 0.1, 0.1]])], [(100, 100)],
                        ["a", "b"])
    dets = torch.tensor([[40.0, 40.0, 60.0, 60.0, 0.9, 0], [15.0, 15.0, 25.0, 25.0, 0.8, 1]])
    assert evaluate_coco(gt, predictions_to_coco(dets, 7)) == pytest.approx((1.0, 1.0))
    assert evaluate_coco(gt, []) == (0.0, 0.0)
