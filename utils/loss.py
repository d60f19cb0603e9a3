"""The YOLOv5 (v6/v7) training loss: CIoU box regression, IoU-targeted objectness, and per-class BCE.

Targets are assigned per detection level: a label goes to every anchor whose width/height ratio to it is within
``anchor_t``, and to its own grid cell plus the two neighbouring cells nearest its center (the predicted center
offset spans (-0.5, 1.5), so neighbours can reach it). This triples the positives and speeds up training.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.boxes import bbox_iou
from utils.device import unwrap

# Neighbour cells a target may also be assigned to: itself, then left, up, right, down (in units of the 0.5 offset).
_CELL_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)
_BALANCE = {3: [4.0, 1.0, 0.4]}  # objectness weight per level, small stride first: small objects dominate
_BALANCE_DEFAULT = [4.0, 1.0, 0.25, 0.06, 0.02]


def smooth_bce(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative BCE targets under label smoothing (arXiv:1902.04103 eq. 3)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal loss (arXiv:1708.02002) wrapped around a ``BCEWithLogitsLoss``: down-weights easy examples."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25) -> None:
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"  # the modulating factor applies per element

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        prob = torch.sigmoid(pred)
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_factor = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_factor * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


class ComputeLoss:
    """Callable loss for a ``DetectionModel`` whose ``hyp`` dict holds the gains (box, obj, cls, anchor_t, ...)."""

    sort_obj_iou = False  # YOLOv5 option: let the highest IoU win when several targets share a cell
    gr = 1.0  # objectness target = IoU (1.0) rather than 1 (0.0)

    def __init__(self, model: nn.Module, autobalance: bool = False) -> None:
        model = unwrap(model)
        detect = model.detect
        device = detect.anchors.device
        hyp = model.hyp
        missing = [k for k in ("box", "obj", "cls", "anchor_t") if k not in hyp]
        if missing:
            raise KeyError(f"model.hyp lacks loss hyperparameters {missing}; load a hyp YAML into model.hyp first")
        self.hyp = hyp

        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp.get("cls_pw", 1.0)], device=device))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp.get("obj_pw", 1.0)], device=device))
        gamma = hyp.get("fl_gamma", 0.0)
        if gamma > 0:
            self.bce_cls, self.bce_obj = FocalLoss(self.bce_cls, gamma), FocalLoss(self.bce_obj, gamma)
        self.cp, self.cn = smooth_bce(hyp.get("label_smoothing", 0.0))

        self.nl, self.na, self.nc = detect.nl, detect.na, detect.nc
        self.anchors = detect.anchors  # (nl, na, 2) in grid units of each level
        self.balance = list(_BALANCE.get(self.nl, _BALANCE_DEFAULT[: self.nl]))
        self.ssi = detect.stride.tolist().index(16) if autobalance else 0  # level whose balance stays 1-relative
        self.autobalance = autobalance
        self.device = device

    def __call__(self, predictions: list[torch.Tensor],
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss for raw head outputs (nl tensors (B, na, ny, nx, nc + 5)) and targets (N, 6) [img, cls, xywh norm].

        Returns the total loss times the batch size (YOLOv5's scale for its learning rates) and the detached
        components [box, obj, cls].
        """
        device = predictions[0].device
        targets = targets.to(device=device, dtype=torch.float32)
        lbox = torch.zeros(1, device=device)
        lobj = torch.zeros(1, device=device)
        lcls = torch.zeros(1, device=device)
        tcls, tbox, indices, anchors = self.build_targets(predictions, targets)

        for i, pred in enumerate(predictions):
            pred = pred.float()  # under autocast the head may emit float16; the loss wants float32
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pred.shape[:4], dtype=pred.dtype, device=device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pred[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]
                iou = bbox_iou(torch.cat((pxy, pwh), 1), tbox[i], CIoU=True).squeeze(-1)
                lbox += (1.0 - iou).mean()

                iou = iou.detach().clamp(0)
                if self.sort_obj_iou:
                    order = iou.argsort()
                    b, a, gj, gi, iou = b[order], a[order], gj[order], gi[order], iou[order]
                if self.gr < 1:
                    iou = (1.0 - self.gr) + self.gr * iou
                tobj[b, a, gj, gi] = iou

                if self.nc > 1:  # a single class is fully described by objectness
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=device), tcls[i]] = self.cp
                    lcls += self.bce_cls(pcls, t)

            level_obj = self.bce_obj(pred[..., 4], tobj)
            lobj += level_obj * self.balance[i]
            if self.autobalance:
                self.balance[i] = self.balance[i] * 0.9999 + 0.0001 / level_obj.detach().item()

        if self.autobalance:
            self.balance = [x / self.balance[self.ssi] for x in self.balance]
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        batch_size = predictions[0].shape[0]
        return (lbox + lobj + lcls) * batch_size, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, predictions: list[torch.Tensor], targets: torch.Tensor):
        """Assign targets to (image, anchor, cell) per level.

        Returns per-level lists: classes, boxes (xy offset within the cell, wh, in grid units), index tuples
        (image, anchor, grid y, grid x), and the matched anchors (grid units).
        """
        na, nt = self.na, targets.shape[0]
        device = targets.device
        tcls, tbox, indices, anchor_list = [], [], [], []
        gain = torch.ones(7, device=device)
        anchor_idx = torch.arange(na, device=device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), anchor_idx[..., None]), 2)  # (na, nt, 7): ..., anchor
        g = 0.5
        offsets_all = _CELL_OFFSETS.to(device) * g

        for i in range(self.nl):
            anchors = self.anchors[i].to(device).float()
            shape = predictions[i].shape  # (B, na, ny, nx, no)
            gain[2:6] = torch.tensor(shape, device=device, dtype=torch.float32)[[3, 2, 3, 2]]
            t = targets * gain  # to grid units
            if nt:
                ratio = t[..., 4:6] / anchors[:, None]
                t = t[torch.max(ratio, 1 / ratio).max(2)[0] < self.hyp["anchor_t"]]

                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy  # distance to the far edge
                left, top = ((gxy % 1 < g) & (gxy > 1)).T  # center in the left/top half: that neighbour too
                right, bottom = ((gxi % 1 < g) & (gxi > 1)).T  # center in the right/bottom half
                keep = torch.stack((torch.ones_like(left), left, top, right, bottom))
                t = t.repeat((5, 1, 1))[keep]
                offsets = (torch.zeros_like(gxy)[None] + offsets_all[:, None])[keep]
            else:
                t = targets[0]
                offsets = 0

            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi = gij[:, 0].clamp_(0, shape[3] - 1)
            gj = gij[:, 1].clamp_(0, shape[2] - 1)
            gij = torch.stack((gi, gj), 1)

            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anchor_list.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anchor_list
