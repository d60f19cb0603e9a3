"""Training and validation throughput: images per second of yolov5n/s on random data."""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.runs import ROOT
from models.yolo import DetectionModel
from utils.boxes import non_max_suppression
from utils.loss import ComputeLoss


def _hyp() -> dict:
    import yaml

    with open(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f)


def _random_batch(batch: int, imgsz: int, nc: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, imgsz, imgsz, generator=generator)
    rows = []
    for i in range(batch):
        for _ in range(4):
            w, h = (torch.rand(2, generator=generator) * 0.3 + 0.05).tolist()
            x, y = (torch.rand(2, generator=generator) * 0.6 + 0.2).tolist()
            rows.append([i, float(torch.randint(nc, (1,), generator=generator)), x, y, w, h])
    return images, torch.tensor(rows)


def throughput(cfg: str, imgsz: int, batch: int, steps: int) -> dict:
    """Training (forward + backward + SGD step) and inference (forward + NMS) images per second."""
    nc = 6
    model = DetectionModel(cfg, nc=nc)
    model.hyp = _hyp()
    loss_fn = ComputeLoss(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, targets = _random_batch(batch, imgsz, nc)
    model.train()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss, _ = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - start)
    train_ips = batch / statistics.median(times)
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(steps + 1):
            start = time.perf_counter()
            non_max_suppression(model(images)[0], 0.001, 0.6)
            if i:
                times.append(time.perf_counter() - start)
    return {"model": cfg.replace(".yaml", ""), "imgsz": imgsz, "batch": batch,
            "train_images_per_s": round(train_ips, 2), "val_images_per_s": round(batch / statistics.median(times), 2)}
