"""Autoanchor: the anchors' best possible recall on the training boxes, evolved when it is poor, kept in checkpoints."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train
from models.yolo import DetectionModel
from utils.autoanchor import GOOD_RECALL, anchor_fit, box_sizes, check_anchors
from utils.checkpoint import load_checkpoint
from utils.weights import load_weights

COCO_ANCHORS = np.array([[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119], [116, 90], [156, 198],
                         [373, 326]], dtype=np.float32)


def dataset_of(sizes_px: np.ndarray, image: int = 320) -> SimpleNamespace:
    """What check_anchors reads of a dataset: image shapes (w, h) and normalized labels, one box per image."""
    labels = [np.array([[0, 0.5, 0.5, w / image, h / image]], dtype=np.float32) for w, h in sizes_px]
    return SimpleNamespace(shapes=np.full((len(labels), 2), image), labels=labels)


def test_best_possible_recall_counts_boxes_within_anchor_t_of_some_anchor():
    anchors = np.array([[10.0, 10.0]])
    sizes = np.array([[10.0, 10.0], [50.0, 50.0], [30.0, 12.0]])  # ratios 1, 1/5 (too far), min(1/3, 0.83)
    recall, per_box = anchor_fit(anchors, sizes, anchor_t=4.0)
    assert recall == pytest.approx(2 / 3) and per_box == pytest.approx(2 / 3)


def test_box_sizes_scale_labels_to_the_training_size_of_each_image():
    dataset = SimpleNamespace(shapes=np.array([[640, 320], [100, 200]]),
                              labels=[np.array([[0, 0.5, 0.5, 0.5, 0.5]]), np.zeros((0, 5))])
    sizes = box_sizes(dataset, imgsz=320)
    assert sizes.shape == (1, 2)
    assert 0.9 * 160 <= sizes[0, 0] <= 1.1 * 160 and sizes[0, 0] / sizes[0, 1] == pytest.approx(2.0)  # 320x160 image


def test_tiny_objects_get_new_anchors_that_recall_them_and_the_model_decodes_with_them():
    rng = np.random.default_rng(0)
    sizes = rng.uniform(2, 6, size=(400, 2))  # many beyond a quarter of COCO's smallest anchor (10 x 13)
    model = DetectionModel("yolov5n.yaml", nc=2).eval()
    model(torch.zeros(1, 3, 64, 64))  # decoding grids built with the old anchors
    result = check_anchors(dataset_of(sizes), model, anchor_t=4.0, imgsz=320)
    assert result.recall_before < 0.9 and result.replaced and result.recall_after >= GOOD_RECALL
    installed = (model.detect.anchors * model.detect.stride.view(-1, 1, 1)).view(-1, 2).numpy()
    assert np.allclose(installed, result.anchors, atol=1e-3)
    assert (np.diff(installed.prod(1)) >= 0).all()  # smallest anchors on the finest grid
    assert anchor_fit(installed, box_sizes(dataset_of(sizes), 320), 4.0)[0] >= GOOD_RECALL
    decoded = model(torch.zeros(1, 3, 64, 64))[0]
    assert decoded[..., 2:4].max() < 3 * 2 ** 2 * installed.max()  # boxes from the new anchors, not stale grids


def test_anchors_that_fit_are_left_alone():
    model = DetectionModel("yolov5n.yaml", nc=2)
    before = model.detect.anchors.clone()
    result = check_anchors(dataset_of(COCO_ANCHORS * 1.2), model, anchor_t=4.0, imgsz=320)
    assert result.recall_before == 1.0 and not result.replaced
    assert torch.equal(model.detect.anchors, before)


@pytest.mark.slow
def test_training_on_small_objects_evolves_anchors_saves_them_and_noautoanchor_keeps_the_yaml(tmp_path,
                                                                                             shapes_dataset):
    options = {"cfg": "yolov5n.yaml", "weights": "", "imgsz": 32, "batch_size": 8, "workers": 0, "noplots": True,
               "epochs": 1, "data": str(shapes_dataset), "project": str(tmp_path / "runs"),
               "hyp": str(train.ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")}
    yaml_anchors = DetectionModel("yolov5n.yaml", nc=6).detect.anchors
    train.run(**options, name="auto")
    saved = load_checkpoint(tmp_path / "runs" / "auto" / "weights" / "last.pt")["model"]["model.24.anchors"]
    assert not torch.allclose(saved, yaml_anchors)  # 128 px images at 32: objects of a few pixels
    assert torch.equal(load_weights(tmp_path / "runs" / "auto" / "weights" / "best.pt").model.detect.anchors, saved)
    train.run(**options, name="fixed", noautoanchor=True)
    kept = load_checkpoint(tmp_path / "runs" / "fixed" / "weights" / "last.pt")["model"]["model.24.anchors"]
    assert torch.equal(kept, yaml_anchors)
