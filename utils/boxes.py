"""Box formats, IoU variants, rescaling between letterboxed and original images, and non-maximum suppression.

Conventions: ``xyxy`` is (x1, y1, x2, y2) corners, ``xywh`` is (x_center, y_center, width, height); a trailing ``n``
means normalized to [0, 1] by the image size. Converters accept torch tensors and numpy arrays alike, and return the
same kind they were given.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision

Array = torch.Tensor | np.ndarray


def _empty_like(x: Array) -> Array:
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xyxy2xywh(x: Array) -> Array:
    """Corners to center/size."""
    y = _empty_like(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywh2xyxy(x: Array) -> Array:
    """Center/size to corners."""
    y = _empty_like(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xywhn2xyxy(x: Array, w: int = 640, h: int = 640, padw: float = 0, padh: float = 0) -> Array:
    """Normalized center/size labels to pixel corners in an image of size (w, h) placed at offset (padw, padh)."""
    y = _empty_like(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x: Array, w: int = 640, h: int = 640, clip: bool = False, eps: float = 0.0) -> Array:
    """Pixel corners to normalized center/size; ``clip`` first clamps the corners to the image shrunk by ``eps``."""
    if clip:
        x = _empty_like(x)
        clip_boxes(x, (h - eps, w - eps))
    y = _empty_like(x)
    y[..., 0] = ((x[..., 0] + x[..., 2]) / 2) / w
    y[..., 1] = ((x[..., 1] + x[..., 3]) / 2) / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def clip_boxes(boxes: Array, shape: tuple[int, ...]) -> Array:
    """Clamp xyxy boxes in place to an image of ``shape`` (height, width, ...); returns them for chaining."""
    height, width = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, width)
        boxes[..., 1].clamp_(0, height)
        boxes[..., 2].clamp_(0, width)
        boxes[..., 3].clamp_(0, height)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, width)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, height)
    return boxes


def scale_boxes(img1_shape: tuple[int, ...], boxes: Array, img0_shape: tuple[int, ...],
                ratio_pad: tuple | None = None) -> Array:
    """Map xyxy boxes (in place) from a letterboxed image of ``img1_shape`` back to the original ``img0_shape``.

    ``ratio_pad`` is ``((gain, gain), (padw, padh))`` as recorded by the letterbox; without it the letterbox is
    recomputed from the two shapes (uniform gain, padding split evenly on both sides).
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        pad = (img1_shape[1] - img0_shape[1] * gain) / 2, (img1_shape[0] - img0_shape[0] * gain) / 2
    else:
        gain = ratio_pad[0][0]
        pad = ratio_pad[1]
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., :4] /= gain
    return clip_boxes(boxes, img0_shape)


def box_area(box: torch.Tensor) -> torch.Tensor:
    """Area of xyxy boxes (..., 4)."""
    return (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])


def box_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    (a1, a2), (b1, b2) = box1.unsqueeze(1).chunk(2, 2), box2.unsqueeze(0).chunk(2, 2)
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(0).prod(2)
    return inter / (box_area(box1)[:, None] + box_area(box2)[None, :] - inter + eps)


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, GIoU: bool = False, DIoU: bool = False,
             CIoU: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise IoU (or GIoU / DIoU / CIoU) of broadcastable boxes (..., 4) -> (..., 1), as the box loss needs.

    GIoU: arXiv:1902.09630. DIoU and CIoU: arXiv:1911.08287.
    """
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.chunk(4, -1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.chunk(4, -1)
        w1, h1 = b1_x2 - b1_x1, (b1_y2 - b1_y1).clamp(eps)
        w2, h2 = b2_x2 - b2_x1, (b2_y2 - b2_y1).clamp(eps)

    inter = ((torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0)
             * (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not (GIoU or DIoU or CIoU):
        return iou

    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # enclosing box width
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)  # enclosing box height
    if GIoU and not (DIoU or CIoU):
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw ** 2 + ch ** 2 + eps  # squared enclosing diagonal
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4  # squared center distance
    if CIoU:
        v = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))).pow(2)
        with torch.no_grad():  # clamp: rounding can push iou past 1 for identical boxes, and 0 / 0 would be NaN
            alpha = v / ((1 - iou).clamp(min=0) + v + eps)
        return iou - (rho2 / c2 + v * alpha)
    return iou - rho2 / c2


def non_max_suppression(prediction: torch.Tensor | tuple | list, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: list[int] | None = None, agnostic: bool = False, multi_label: bool = False,
                        max_det: int = 300, max_nms: int = 30000) -> list[torch.Tensor]:
    """Filter decoded predictions (B, N, 5 + nc) [x, y, w, h, obj, cls...] to per-image detections.

    Returns a list of B tensors (n, 6): x1, y1, x2, y2, confidence (obj * cls), class. Classes suppress only each
    other unless ``agnostic`` (``batched_nms`` offsets boxes per class, like YOLOv5's ``max_wh`` shift); with
    ``multi_label`` a box may be kept once per class whose confidence passes the threshold (better mAP, slower).
    At most ``max_nms`` highest-confidence boxes per image enter NMS, and ``max_det`` leave it.
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres must be in [0, 1], got {conf_thres}")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres must be in [0, 1], got {iou_thres}")
    if isinstance(prediction, (list, tuple)):  # eval-mode model output (decoded, raw)
        prediction = prediction[0]

    batch_size, nc = prediction.shape[0], prediction.shape[2] - 5
    multi_label &= nc > 1
    candidates = prediction[..., 4] > conf_thres
    output = [torch.zeros((0, 6), device=prediction.device)] * batch_size
    for index, x in enumerate(prediction):
        x = x[candidates[index]]
        if not x.shape[0]:
            continue
        x = x.float()
        x[:, 5:] *= x[:, 4:5]  # class confidence = objectness * class probability
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (x[:, 5:] > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], x[i, 5 + j, None], j[:, None].float()), 1)
        else:
            conf, j = x[:, 5:].max(1, keepdim=True)
            x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if not x.shape[0]:
            continue
        x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        groups = torch.zeros_like(x[:, 5]) if agnostic else x[:, 5]
        keep = torchvision.ops.batched_nms(x[:, :4], x[:, 4], groups.long(), iou_thres)
        output[index] = x[keep[:max_det]]
    return output
