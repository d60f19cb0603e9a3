"""AP, matching, confusion matrix and COCO evaluation, checked against Ultralytics' rules and pycocotools."""

import numpy as np
import pytest
import torch
from reference_metrics import ultralytics_match, ultralytics_metrics

from utils.boxes import box_iou
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
    # Ultralytics' trapezoid (the default) closes the curve at (1, 0), so perfect predictions top out at 0.995
    assert compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]))[0] == pytest.approx(0.995)
    assert compute_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), method="coco")[0] == pytest.approx(1.0)
    assert compute_ap(np.array([]), np.array([]), method="coco")[0] == 0.0


def test_ap_per_class_perfect_predictions():
    tp = np.ones((4, 10), dtype=bool)
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    pred_cls = np.array([0, 1, 0, 1])
    tp_count, fp, p, r, f1, ap, classes = ap_per_class(tp, conf, pred_cls, target_cls=np.array([0, 0, 1, 1]))
    assert classes.tolist() == [0, 1]
    assert ap.shape == (2, 10)
    assert np.allclose(ap, 0.995)  # Ultralytics caps perfect predictions at 0.995
    assert np.allclose(p, 1.0) and np.allclose(r, 1.0, atol=1e-6)
    assert tp_count.tolist() == [2, 2] and fp.tolist() == [0, 0]


def test_ap_per_class_hand_computed_mixed_case():
    # One class, 3 labels; by falling confidence: TP, FP, TP (one label missed).
    # recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3.
    tp = np.array([[True], [False], [True]])
    args = (tp, np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(3))
    # COCO: recall thresholds 0.00..0.33 (34 of them) read 1, 0.34..0.66 (33) read 2/3, 0.67..1.00 read 0.
    assert ap_per_class(*args, ap_method="coco")[5][0, 0] == pytest.approx((34 + 33 * 2 / 3) / 101)
    # Ultralytics: the envelope through (0, 1), (1/3, 1), (1/3, 2/3), (2/3, 2/3), (1, 0), sampled every 0.01 and
    # integrated by trapezoids: [0, .33] at 1, the step .33-.34, [.34, .66] at 2/3, .66-.67, then down to 0 at 1.
    expected = 0.33 + 0.01 * (1 + 2 / 3) / 2 + 0.32 * 2 / 3 + 0.01 * (2 / 3 + 0.66) / 2 + 0.33 * 0.66 / 2
    assert ap_per_class(*args)[5][0, 0] == pytest.approx(expected)


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


def test_a_label_goes_to_the_most_confident_of_its_claimants():
    labels = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0], [1, 20.0, 20.0, 30.0, 30.0]])
    detections = torch.tensor([[0.0, 0.0, 10.0, 7.2, 0.9, 0],  # IoU 0.72 with label 0, the more confident
                               [0.0, 0.0, 10.0, 10.0, 0.8, 0],  # IoU 1.0 with label 0
                               [20.0, 20.0, 30.0, 30.0, 0.7, 0],  # right box, wrong class
                               [20.0, 20.0, 30.0, 27.2, 0.6, 1]])  # IoU 0.72 with label 1
    correct = match_predictions(detections, labels, IOUV)
    assert correct.shape == (4, 10) and correct.dtype == torch.bool
    # Ultralytics and COCO: the confident detection wins the label wherever it qualifies (IoU >= 0.50 .. 0.70);
    # at 0.75 .. 0.95 only the tight one qualifies and takes it.
    assert correct[0].tolist() == [True] * 5 + [False] * 5
    assert correct[1].tolist() == [False] * 5 + [True] * 5
    assert not correct[2].any()
    assert correct[3].tolist() == [True] * 5 + [False] * 5
    # the rule follows confidence, not the order the detections come in
    shuffled = match_predictions(detections[[3, 1, 2, 0]], labels, IOUV)
    assert torch.equal(shuffled, correct[[3, 1, 2, 0]])
    assert match_predictions(detections, labels[:0], IOUV).sum() == 0
    assert match_predictions(detections[:0], labels, IOUV).shape == (0, 10)


def test_a_detection_whose_best_label_is_taken_stays_false_as_in_ultralytics():
    # Labels A and B overlap. Detection 0 (conf 0.9) and detection 1 (conf 0.8) both have A as best label; detection 1
    # also overlaps B at IoU 0.6. Ultralytics keeps one candidate per detection (its best), so detection 1 is a false
    # positive; COCO's greedy matching would hand it B instead. We print what Ultralytics prints.
    labels = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0], [0, 0.0, 4.0, 10.0, 14.0]])
    detections = torch.tensor([[0.0, 0.0, 10.0, 10.0, 0.9, 0], [0.0, 1.0, 10.0, 11.0, 0.8, 0]])
    iou_with_b = box_iou(labels[1:, 1:], detections[1:, :4]).item()
    assert 0.5 < iou_with_b < box_iou(labels[:1, 1:], detections[1:, :4]).item()
    correct = match_predictions(detections, labels, IOUV[:1])
    assert correct[:, 0].tolist() == [True, False]
    expected = ultralytics_match(detections.numpy(), labels.numpy(), IOUV[:1].numpy())
    assert correct.numpy().tolist() == expected.tolist()


def _overlapping_scene(rng: np.random.Generator, nc: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Crowded labels and, per label, several detections of different confidence and IoU (val at conf 0.001)."""
    n = int(rng.integers(3, 9))
    xy = rng.uniform(0, 120, size=(n, 2))
    boxes = np.concatenate((xy, xy + rng.uniform(20, 60, size=(n, 2))), 1)
    classes = rng.integers(0, nc, size=n)
    dets = []
    for box, cls in zip(boxes, classes):
        size = np.tile(box[2:] - box[:2], 2)
        for _ in range(int(rng.integers(1, 5))):
            dets.append([*(box + rng.normal(0, rng.uniform(0.02, 0.2), 4) * size), rng.uniform(0.001, 1), cls])
    dets = np.array(dets)
    return (torch.tensor(np.concatenate((classes[:, None], boxes), 1), dtype=torch.float32),
            torch.tensor(dets, dtype=torch.float32))


def test_matching_equals_the_ultralytics_rule_on_crowded_scenes():
    rng = np.random.default_rng(7)
    differs_from_iou_first = 0
    for _ in range(60):
        labels, dets = _overlapping_scene(rng)
        ours = match_predictions(dets, labels, IOUV).numpy()
        expected = ultralytics_match(dets.numpy(), labels.numpy(), IOUV.numpy())
        assert ours.tolist() == expected.tolist()
        iou_first = ultralytics_match(dets.numpy(), labels.numpy(), IOUV.numpy(), confidence_first=False)
        differs_from_iou_first += int((iou_first != expected).any())
    assert differs_from_iou_first > 20  # the scenes exercise the order: IoU-first matching would differ here


def test_val_metrics_equal_the_ultralytics_computation():
    # P and R at the smoothed-F1 optimum, and both mAPs, against the from-scratch computation of the same rules.
    rng = np.random.default_rng(3)
    stats = []
    for _ in range(25):
        labels, dets = _overlapping_scene(rng, nc=3)
        stats.append((match_predictions(dets, labels, IOUV).numpy(), dets[:, 4].numpy(), dets[:, 5].numpy(),
                      labels[:, 0].numpy()))
    correct, conf, pred_cls, target_cls = (np.concatenate(x, 0) for x in zip(*stats))
    _, _, p, r, _, ap, _ = ap_per_class(correct, conf, pred_cls, target_cls)
    expected = ultralytics_metrics(correct, conf, pred_cls, target_cls)
    assert 0.2 < expected["mAP50-95"] < expected["mAP50"] < 0.95 and 0.2 < expected["P"] < 1
    assert p.mean() == pytest.approx(expected["P"], abs=1e-9)
    assert r.mean() == pytest.approx(expected["R"], abs=1e-9)
    assert ap[:, 0].mean() == pytest.approx(expected["mAP50"], abs=1e-9)
    assert ap.mean() == pytest.approx(expected["mAP50-95"], abs=1e-9)


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


def _separated_set(seed: int, n_images: int = 8, nc: int = 3, width: int = 640,
                   height: int = 480) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: labels (m, 5) and detections (n, 6), in pixels, rounded as the COCO JSON keeps them.

    Labels sit in disjoint grid cells, so no detection reaches IoU 0.5 with two labels and Ultralytics' and COCO's
    matching rules coincide. Most labels get several detections: a confident one and tighter, less confident twins
    (where matching by IoU instead of confidence gives a different answer), plus misses, wrong classes and
    background false positives down to confidence 0.001, as in val.
    """
    rng = np.random.default_rng(seed)
    images = []
    cell = 160
    for _ in range(n_images):
        cells = rng.permutation((width // cell) * (height // cell))[:int(rng.integers(3, 9))]
        origin = np.stack((cells % (width // cell), cells // (width // cell)), 1) * cell
        wh = rng.uniform(30, 120, size=(len(cells), 2))
        xy = origin + rng.uniform(5, cell - 5 - wh)
        boxes = np.concatenate((xy, xy + wh), 1)
        classes = rng.integers(0, nc, size=len(cells))
        dets = []
        for box, cls, size in zip(boxes, classes, wh):
            if rng.random() < 0.15:
                continue  # missed
            jitter = rng.normal(0, 0.08, size=4) * np.concatenate((size, size))
            conf = rng.uniform(0.05, 1)
            wrong_class = rng.random() < 0.1
            dets.append([*(box + jitter), conf, (cls + 1) % nc if wrong_class else cls])
            for _ in range(int(rng.integers(0, 3))):
                dets.append([*(box + 0.4 * jitter), conf * rng.uniform(0.2, 0.95), cls])
        for _ in range(int(rng.integers(0, 4))):  # background false positives
            xy0 = rng.uniform([0, 0], [width - 100, height - 100])
            dets.append([*xy0, *(xy0 + rng.uniform(20, 100, 2)), rng.uniform(0.001, 0.7), rng.integers(0, nc)])
        dets = np.array(dets).reshape(-1, 6)
        dets[:, :4] = dets[:, :4].clip(0, [width, height, width, height]).round(3)
        dets[:, 4] = dets[:, 4].clip(0.001, 1).round(5)
        labels = np.concatenate((classes[:, None], boxes.round(3)), 1)
        images.append((torch.tensor(labels, dtype=torch.float64), torch.tensor(dets, dtype=torch.float64)))
    return images


def _coco_map(images, width: int = 640, height: int = 480, nc: int = 3) -> tuple[float, float]:
    """pycocotools' (mAP@0.5, mAP@0.5:0.95) for the set."""
    files = [f"{i}.jpg" for i in range(len(images))]
    yolo_labels = []
    for labels, _ in images:
        xyxy = labels[:, 1:].numpy()
        xywhn = np.stack(((xyxy[:, 0] + xyxy[:, 2]) / 2 / width, (xyxy[:, 1] + xyxy[:, 3]) / 2 / height,
                          (xyxy[:, 2] - xyxy[:, 0]) / width, (xyxy[:, 3] - xyxy[:, 1]) / height), 1)
        yolo_labels.append(np.concatenate((labels[:, :1].numpy(), xywhn), 1))
    gt = labels_to_coco(files, yolo_labels, [(width, height)] * len(files), [f"c{i}" for i in range(nc)])
    records = [r for i, (_, dets) in enumerate(images) for r in predictions_to_coco(dets, i)]
    coco_map, coco_map50 = evaluate_coco(gt, records)
    return coco_map50, coco_map


def _our_map(images, matcher=None) -> tuple[float, float]:
    """Our (mAP@0.5, mAP@0.5:0.95) with COCO's AP sampling, so that only matching can differ from pycocotools."""
    stats = []
    for labels, dets in images:
        correct = match_predictions(dets, labels, IOUV).numpy() if matcher is None else matcher(dets, labels)
        stats.append((correct, dets[:, 4].numpy(), dets[:, 5].numpy(), labels[:, 0].numpy()))
    tp, conf, pred_cls, target_cls = (np.concatenate(x, 0) for x in zip(*stats))
    ap = ap_per_class(tp, conf, pred_cls, target_cls, ap_method="coco")[5]
    return float(ap[:, 0].mean()), float(ap.mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_equals_pycocotools_with_several_detections_per_object(seed):
    images = _separated_set(seed)
    coco = _coco_map(images)
    ours = _our_map(images)
    assert 0.3 < coco[1] < coco[0] < 0.95  # a non-trivial set
    assert ours == pytest.approx(coco, abs=2e-4)
    # the set exercises the order: handing each label to its best-IoU claimant reads at least 0.01 lower
    def iou_first(dets, labels):
        return ultralytics_match(dets.numpy(), labels.numpy(), IOUV.numpy(), confidence_first=False)

    iou_first_map = _our_map(images, iou_first)
    assert coco[0] - iou_first_map[0] > 0.01 and coco[1] - iou_first_map[1] > 0.005


def test_evaluate_coco_perfect_and_empty():
    gt = labels_to_coco(["7.jpg"], [np.array([[0, 0.5, 0.5, 0.2, 0.2], [1, 0.2, 0.2, 0.1, 0.1]])], [(100, 100)],
                        ["a", "b"])
    dets = torch.tensor([[40.0, 40.0, 60.0, 60.0, 0.9, 0], [15.0, 15.0, 25.0, 25.0, 0.8, 1]])
    assert evaluate_coco(gt, predictions_to_coco(dets, 7)) == pytest.approx((1.0, 1.0))
    assert evaluate_coco(gt, []) == (0.0, 0.0)
