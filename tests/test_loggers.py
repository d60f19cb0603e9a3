"""TensorBoard logging: event files that tensorboard itself reads back, from the logger and from a real run."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
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


@pytest.mark.slow
def test_a_training_run_logs_to_its_run_folder(tmp_path, shapes_dataset):
    train.run(cfg="yolov5n.yaml", weights="", imgsz=64, batch_size=8, workers=0, epochs=2, data=str(shapes_dataset),
              project=str(tmp_path / "runs"), name="exp", noautoanchor=True,
              hyp=str(train.ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"))
    run_dir = tmp_path / "runs" / "exp"
    assert list(run_dir.glob("events.out.tfevents.*"))
    events = read_events(run_dir)
    mean_ap = [e.value for e in events.Scalars("metrics/mAP_0.5")]
    csv_rows = (run_dir / "results.csv").read_text().strip().splitlines()[1:]
    assert len(mean_ap) == len(csv_rows) == 2
    column = (run_dir / "results.csv").read_text().splitlines()[0].split(",").index("metrics/mAP_0.5")
    assert mean_ap == pytest.approx([float(r.split(",")[column]) for r in csv_rows])
    assert {"x/lr0", "x/lr1", "x/lr2", "train/box_loss", "val/obj_loss", "x/phase"} <= set(events.Tags()["scalars"])
    assert {"results", "val_batch0_pred", "confusion_matrix"} <= set(events.Tags()["images"])
