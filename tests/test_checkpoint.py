"""Checkpoints are plain data, load with weights_only=True, and are written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models.yolo import DetectionModel
from utils.checkpoint import CheckpointError, build_checkpoint, float_state_dict, load_checkpoint, save_checkpoint
from utils.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(model: DetectionModel, epoch: int = 0) -> dict:
    return build_checkpoint(model_yaml=model.yaml, names=model.names, model_state=float_state_dict(model),
                            ema_state=None, ema_updates=0, optimizer_state=None, scaler_state=None, epoch=epoch,
                            best_fitness=0.0, phase_best_fitness={}, options={"weights": os.curdir}, hyp={},
                            sparsification={}, final=True)


def test_round_trip_loads_weights_only_and_rebuilds_the_same_model(tmp_path):
    model = DetectionModel("yolov5n.yaml", nc=2).eval()
    model.names = ["cat", "dog"]
    path = save_checkpoint(_checkpoint(model), tmp_path / "last.pt")
    raw = torch.load(path, weights_only=True)  # would raise if anything but plain data was stored
    assert raw["format_version"] == 1
    loaded = load_weights(path)
    assert loaded.source == "project" and loaded.names == ["cat", "dog"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded.model(x)[0])


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = DetectionModel("yolov5n.yaml", nc=1)
    path = save_checkpoint(_checkpoint(model, epoch=1), tmp_path / "last.pt")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="previous checkpoint"):
        save_checkpoint(_checkpoint(model, epoch=2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_truncated_checkpoint_is_reported_with_its_name(tmp_path):
    model = DetectionModel("yolov5n.yaml", nc=1)
    path = save_checkpoint(_checkpoint(model), tmp_path / "last.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="last.pt"):
        load_weights(path)


def test_a_released_checkpoint_holds_the_ema_weights_in_half_precision_and_loads_as_float(tmp_path):
    """The file handed on (the demo's weights/yolov5n-shapes.pt) keeps the weights a run validates with, the EMA,
    at a quarter of the size of a run's checkpoint with model, EMA and optimizer; it loads as a float32 model."""
    torch.manual_seed(0)
    model, ema = DetectionModel("yolov5n.yaml", nc=2).eval(), DetectionModel("yolov5n.yaml", nc=2).eval()
    checkpoint = _checkpoint(model)
    checkpoint.update(ema=float_state_dict(ema), ema_updates=10, final=False,
                      optimizer={"state": {}, "param_groups": []},
                      options={"save_dir": str(tmp_path / "runs" / "dense"), "epochs": 3,
                               "hyp": str(ROOT / "data" / "hyps" / "hyp.short.yaml")})
    run_file = save_checkpoint(checkpoint, tmp_path / "best.pt")
    from utils.checkpoint import release_checkpoint

    released = release_checkpoint(run_file, tmp_path / "release.pt")
    raw = torch.load(released, weights_only=True)
    assert raw["ema"] is None and raw["optimizer"] is None and raw["final"]
    # no path of the training machine travels with the file
    assert raw["options"] == {"save_dir": "dense", "epochs": 3, "hyp": "data/hyps/hyp.short.yaml"}
    assert {v.dtype for v in raw["model"].values() if v.is_floating_point()} == {torch.float16}
    assert released.stat().st_size < 0.3 * run_file.stat().st_size
    loaded = load_weights(released).model
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, got, other = ema(x)[0], loaded(x)[0], model(x)[0]
    assert torch.allclose(got, expected, rtol=0.01, atol=0.05)  # the EMA's weights, rounded to float16
    assert not torch.allclose(got, other, rtol=0.01, atol=0.05)  # ... not the raw model's


def test_a_sparsified_checkpoint_is_not_released_in_half_precision(tmp_path):
    model = DetectionModel("yolov5n.yaml", nc=1)
    checkpoint = _checkpoint(model)
    checkpoint["sparsification"] = {"stages": ["recipe text"]}
    path = save_checkpoint(checkpoint, tmp_path / "last.pt")
    from utils.checkpoint import release_checkpoint

    with pytest.raises(CheckpointError, match="last.pt carries a sparsification state"):
        release_checkpoint(path, tmp_path / "release.pt")


def test_the_shipped_demo_weights_name_no_path_of_the_machine_that_trained_them():
    raw = torch.load(ROOT / "weights" / "yolov5n-shapes.pt", weights_only=True)
    assert not [value for value in raw["options"].values() if isinstance(value, str) and value.startswith("/")]
