"""TensorBoard logging: event files that tensorboard itself reads back (a real run's: tests/test_train.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from models.yolo import DetectionModel
from utils.loggers import TensorBoardLogger, conv_weight_sparsity


def read_events(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events


def test_epochs_phase_sparsity_and_images_are_written_for_tensorboard(tmp_path):
    model = DetectionModel("yolov5n.yaml", nc=2)
    with torch.no_grad():
        model.model[2].cv1.conv.weight[:8] = 0  # a pruned layer: half of its 16 output channels
    logger = TensorBoardLogger(tmp_path)
    rows = [{"epoch": 0, "train/box_loss": 0.1, "metrics/mAP_0.5": 0.2, "metrics/mAP_0.5:0.95": 0.1, "x/lr0": 0.01,
             "phase": "dense", "sparsity": 0.0},
            {"epoch": 1, "train/box_loss": 0.09, "metrics/mAP_0.5": 0.3, "metrics/mAP_0.5:0.95": 0.15,
             "x/lr0": 0.005, "phase": "pruned", "sparsity": 0.4}]
    for row in rows:
        logger.log_epoch(row["epoch"], row, model)
    cv2.imwrite(str(tmp_path / "val_batch0_pred.jpg"), np.full((32, 48, 3), 200, dtype=np.uint8))
    logger.log_images(tmp_path, 1)
    logger.close()

    events = read_events(tmp_path)
    assert [e.value for e in events.Scalars("metrics/mAP_0.5:0.95")] == pytest.approx([0.1, 0.15])
    assert [e.value for e in events.Scalars("x/lr0")] == pytest.approx([0.01, 0.005])
    assert [e.value for e in events.Scalars("x/phase")] == [0.0, 1.0]  # dense, pruned
    assert [e.value for e in events.Scalars("sparsity/model.2.cv1.conv.weight")] == pytest.approx([0.5, 0.5])
    assert "sparsity/model.3.conv.weight" not in events.Tags()["scalars"]  # unpruned layers: histogram only
    assert events.Histograms("sparsity/conv_layers")[0].histogram_value.max == pytest.approx(0.5)
    image = events.Images("val_batch0_pred")[0]
    assert (image.width, image.height) == (48, 32)
    assert conv_weight_sparsity(model)["model.2.cv1.conv.weight"] == 0.5
