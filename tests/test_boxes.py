"""Box conversions, IoU, letterbox undo and NMS on hand-made boxes."""

import numpy as np
import pytest
import torch

from utils.boxes import (
    bbox_iou,
    box_iou,
    clip_boxes,
    non_max_suppression,
    scale_boxes,
    xywh2xyxy,
    xywhn2xyxy,
    xyxy2xywh,
    xyxy2xywhn,
)

XYXY = [[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 4.0, 2.0]]
XYWH = [[30.0, 50.0, 40.0, 60.0], [2.0, 1.0, 4.0, 2.0]]


@pytest.mark.parametrize("kind", [torch.tensor, np.array])
def test_xyxy_xywh_known_values_and_round_trip(kind):
    xyxy, xywh = kind(XYXY), kind(XYWH)
    converted = xyxy2xywh(xyxy)
    assert type(converted) is type(xyxy)
    assert np.allclose(np.asarray(converted), XYWH)
    assert np.allclose(np.asarray(xywh2xyxy(xywh)), XYXY)
    assert np.allclose(np.asarray(xywh2xyxy(xyxy2xywh(xyxy))), XYXY)
    assert np.allclose(np.asarray(xyxy), XYXY)  # inputs untouched


@pytest.mark.parametrize("kind", [torch.tensor, np.array])
def test_normalized_conversions_round_trip_with_padding(kind):
    normalized = kind([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.2, 0.2]])
    pixels = xywhn2xyxy(normalized, w=200, h=100, padw=5, padh=7)
    assert np.allclose(np.asarray(pixels[0]), [85.0, 37.0, 125.0, 77.0])
    pixels[..., [0, 2]] -= 5
    pixels[..., [1, 3]] -= 7
    assert np.allclose(np.asarray(xyxy2xywhn(pixels, w=200, h=100)), np.asarray(normalized))


def test_xyxy2xywhn_clip_keeps_boxes_inside_the_image():
    out = xyxy2xywhn(np.array([[-10.0, -10.0, 50.0, 150.0]]), w=100, h=100, clip=True)
    assert np.allclose(out, [[0.25, 0.5, 0.5, 1.0]])


def test_box_iou_on_known_boxes():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 5.0]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 4)
    assert torch.allclose(iou, torch.tensor([[1.0, 1 / 3, 0.0, 0.25]]), atol=1e-6)


def test_bbox_iou_is_elementwise_and_variants_order_sensibly():
    b1 = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    b2 = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    iou = bbox_iou(b1, b2, xywh=False)
    assert iou.shape == (2, 1)
    assert torch.allclose(iou.squeeze(1), torch.diag(box_iou(b1, b2)), atol=1e-6)
    giou = bbox_iou(b1, b2, xywh=False, GIoU=True).squeeze(1)
    assert giou[1] < 0  # disjoint boxes: GIoU goes negative with the gap
    ciou = bbox_iou(xyxy2xywh(b1), xyxy2xywh(b1), CIoU=True)
    assert torch.allclose(ciou, torch.ones(2, 1), atol=1e-5)
    diou = bbox_iou(b1, b2, xywh=False, DIoU=True).squeeze(1)
    assert torch.all(diou <= iou.squeeze(1))


def test_clip_boxes_in_place():
    boxes = torch.tensor([[-5.0, -5.0, 700.0, 300.0]])
    clip_boxes(boxes, (200, 640))
    assert boxes.tolist() == [[0.0, 0.0, 640.0, 200.0]]


def test_scale_boxes_undoes_a_letterbox():
    original_shape, letterbox_shape = (300, 600), (640, 640)  # (h, w): gain 16/15, 160 px of padding top and bottom
    gain = 640 / 600
    boxes = torch.tensor([[30.0, 60.0, 300.0, 240.0], [0.0, 0.0, 600.0, 300.0]])
    letterboxed = boxes * gain
    letterboxed[:, [1, 3]] += (640 - 300 * gain) / 2
    assert torch.allclose(scale_boxes(letterbox_shape, letterboxed.clone(), original_shape), boxes, atol=1e-4)
    ratio_pad = ((gain, gain), (0.0, (640 - 300 * gain) / 2))
    assert torch.allclose(scale_boxes(letterbox_shape, letterboxed.clone(), original_shape, ratio_pad), boxes,
                          atol=1e-4)


def _prediction(rows):
    """Decoded rows [x, y, w, h, obj, cls0, cls1] as a batch of one."""
    return torch.tensor([rows], dtype=torch.float32)


def test_nms_keeps_higher_scoring_of_overlapping_same_class_boxes():
    pred = _prediction([[50, 50, 20, 20, 0.9, 0.9, 0.1], [51, 50, 20, 20, 0.8, 0.95, 0.05]])
    (out,) = non_max_suppression(pred, conf_thres=0.25, iou_thres=0.45)
    assert out.shape == (1, 6)
    assert torch.allclose(out[0], torch.tensor([40.0, 40.0, 60.0, 60.0, 0.81, 0.0]))


def test_nms_keeps_overlapping_boxes_of_different_classes_unless_agnostic():
    pred = _prediction([[50, 50, 20, 20, 0.9, 0.9, 0.1], [51, 50, 20, 20, 0.8, 0.05, 0.95]])
    (out,) = non_max_suppression(pred)
    assert sorted(out[:, 5].tolist()) == [0.0, 1.0]
    (agnostic,) = non_max_suppression(pred, agnostic=True)
    assert agnostic.shape[0] == 1 and agnostic[0, 5] == 0


def test_nms_thresholds_filters_and_caps():
    pred = _prediction([[50, 50, 20, 20, 0.9, 0.9, 0.1],
                        [150, 50, 20, 20, 0.2, 0.9, 0.1],  # objectness under threshold
                        [250, 50, 20, 20, 0.5, 0.4, 0.6]])  # obj * cls = 0.3
    (out,) = non_max_suppression(pred, conf_thres=0.25)
    assert out[:, 4].tolist() == pytest.approx([0.81, 0.3])
    (only_class_0,) = non_max_suppression(pred, classes=[0])
    assert only_class_0[:, 5].tolist() == [0.0]
    (capped,) = non_max_suppression(pred, max_det=1)
    assert capped.shape[0] == 1
    (multi,) = non_max_suppression(pred, conf_thres=0.1, multi_label=True)
    # at 0.1: box 1 passes as class 0 only (0.81, 0.09), box 2 as class 0 (0.18), box 3 as both (0.2, 0.3)
    assert sorted(multi[:, 5].tolist()) == [0.0, 0.0, 0.0, 1.0]


def test_nms_handles_empty_batches_and_model_tuples():
    pred = torch.zeros(2, 10, 7)
    out = non_max_suppression((pred, []))
    assert len(out) == 2 and all(o.shape == (0, 6) for o in out)


def test_ciou_of_nearly_identical_boxes_is_finite():
    # float32 rounding can put the IoU of two almost equal boxes a hair above 1; CIoU's alpha must not become 0 / 0
    torch.manual_seed(0)
    boxes = torch.rand(10000, 4) * 4 + 0.1
    ciou = bbox_iou(boxes, boxes + torch.randn_like(boxes) * 1e-7, CIoU=True)
    assert torch.isfinite(ciou).all() and torch.allclose(ciou, torch.ones_like(ciou), atol=1e-4)
