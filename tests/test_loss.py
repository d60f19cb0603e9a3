"""The YOLOv5 loss on a tiny model: sane values, target assignment, and that it trains."""

import math

import pytest
import torch

from models.yolo import DetectionModel
from utils.loss import ComputeLoss

# The loss entries of YOLOv5's data/hyps/hyp.scratch-low.yaml (label_smoothing is a train.py flag, 0 by default).
HYP_SCRATCH_LOW = {"box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0, "obj_pw": 1.0, "iou_t": 0.20, "anchor_t": 4.0,
                   "fl_gamma": 0.0, "label_smoothing": 0.0}
IMG = 64
TARGETS = torch.tensor([[0, 0, 0.50, 0.50, 0.30, 0.40],
                        [0, 1, 0.20, 0.30, 0.20, 0.20],
                        [1, 2, 0.70, 0.60, 0.50, 0.50]])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DetectionModel("yolov5n.yaml", nc=3)
    m.hyp = dict(HYP_SCRATCH_LOW)
    return m.train()


def _zero_predictions(model, batch=1):
    detect = model.detect
    return [torch.zeros(batch, detect.na, IMG // int(s), IMG // int(s), detect.no) for s in detect.stride]


def test_loss_is_finite_positive_and_scaled_by_batch(model):
    torch.manual_seed(0)
    with torch.no_grad():
        preds = model(torch.rand(2, 3, IMG, IMG))
    loss, items = ComputeLoss(model)(preds, TARGETS)
    assert loss.shape == (1,) and items.shape == (3,)
    assert torch.isfinite(loss).all() and loss.item() > 0
    assert (items > 0).all()
    assert loss.item() == pytest.approx(items.sum().item() * 2, rel=1e-5)
    assert not items.requires_grad


def test_no_targets_leaves_only_objectness(model):
    loss, items = ComputeLoss(model)(_zero_predictions(model), torch.zeros(0, 6))
    assert items[0] == 0 and items[2] == 0 and items[1] > 0


def test_target_goes_to_its_cell_and_the_two_nearest_neighbours(model):
    # On the stride-8 level (8x8 grid) the target center is at (2.4, 4.4): left and upper neighbours are nearer.
    # Its 2x2-cell size is within anchor_t=4 of all three P3 anchors, so each cell is assigned to every anchor.
    targets = torch.tensor([[0, 1, 0.3, 0.55, 0.25, 0.25]])
    tcls, tbox, indices, anchors = ComputeLoss(model).build_targets(_zero_predictions(model), targets)
    b, a, gj, gi = indices[0]
    assert set(zip(a.tolist(), gj.tolist(), gi.tolist())) == {(k, j, i) for k in range(3)
                                                             for j, i in ((4, 2), (4, 1), (3, 2))}
    assert (b == 0).all() and (tcls[0] == 1).all()
    assert ((tbox[0][:, :2] >= -0.5) & (tbox[0][:, :2] < 1.5)).all()
    assert torch.allclose(tbox[0][:, 2:], torch.tensor([2.0, 2.0]))
    assert torch.allclose(anchors[0], model.detect.anchors[0][a])


def test_box_loss_is_near_zero_for_predictions_that_match_the_targets(model):
    targets = torch.tensor([[0, 0, 0.4, 0.6, 0.3, 0.2]])
    compute = ComputeLoss(model)
    matched = _zero_predictions(model)
    _, tbox, indices, anchors = compute.build_targets(matched, targets)
    for level, (b, a, gj, gi) in enumerate(indices):  # invert the head's decoding at every assigned cell
        matched[level][b, a, gj, gi, 0:2] = torch.logit((tbox[level][:, :2] + 0.5) / 2)
        matched[level][b, a, gj, gi, 2:4] = torch.logit((tbox[level][:, 2:] / anchors[level]).sqrt() / 2)
    torch.manual_seed(0)
    random = [torch.randn_like(p) for p in matched]
    box_matched = compute(matched, targets)[1][0].item()
    box_random = compute(random, targets)[1][0].item()
    assert box_matched < 1e-4 < box_random


def test_loss_decreases_with_sgd_on_a_fixed_batch(model):
    torch.manual_seed(0)
    net = DetectionModel("yolov5n.yaml", nc=3)
    net.hyp = dict(HYP_SCRATCH_LOW)
    net.train()
    images = torch.rand(2, 3, IMG, IMG)
    compute = ComputeLoss(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        loss, _ = compute(net(images), TARGETS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.9 * losses[0]


def test_autocast_focal_smoothing_and_wrapped_models(model):
    torch.manual_seed(0)
    images = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        preds = model(images)
        loss, items = ComputeLoss(torch.nn.DataParallel(model))(preds, TARGETS)  # wrapped as train.py wraps it
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()

    model.hyp.update(fl_gamma=1.5, label_smoothing=0.1)
    try:
        preds = [p.float() for p in preds]
        focal, _ = ComputeLoss(model)(preds, TARGETS)
    finally:
        model.hyp.update(fl_gamma=0.0, label_smoothing=0.0)
    assert torch.isfinite(focal).all() and focal.item() != pytest.approx(loss.item())


def test_missing_hyperparameters_are_reported(model):
    bare = DetectionModel("yolov5n.yaml", nc=3)
    with pytest.raises(KeyError, match="hyp"):
        ComputeLoss(bare)
