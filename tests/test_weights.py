"""Which weight files load (utils/weights.py): official releases v5.0 - v7.0 by the class names their pickles use,
and nothing that names other code."""

from __future__ import annotations

import builtins
import os

import pytest
import torch

from models import yolo
from models.common import Bottleneck
from models.yolo import DetectionModel
from utils.checkpoint import CheckpointError
from utils.weights import load_weights, read_weights_file

# Ultralytics v5.0 yolov5s.yaml (Focus stem, SPP, C3 without shortcut after SPP) at yolov5n widths.
V5_YAML = {
    "nc": 80, "depth_multiple": 0.33, "width_multiple": 0.25,
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
    "backbone": [[-1, 1, "Focus", [64, 3]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
                 [-1, 1, "Conv", [256, 3, 2]], [-1, 9, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]],
                 [-1, 9, "C3", [512]], [-1, 1, "Conv", [1024, 3, 2]], [-1, 1, "SPP", [1024, [5, 9, 13]]],
                 [-1, 3, "C3", [1024, False]]],
    "head": [[-1, 1, "Conv", [512, 1, 1]], [-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 6], 1, "Concat", [1]],
             [-1, 3, "C3", [512, False]], [-1, 1, "Conv", [256, 1, 1]], [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
             [[-1, 4], 1, "Concat", [1]], [-1, 3, "C3", [256, False]], [-1, 1, "Conv", [256, 3, 2]],
             [[-1, 14], 1, "Concat", [1]], [-1, 3, "C3", [512, False]], [-1, 1, "Conv", [512, 3, 2]],
             [[-1, 10], 1, "Concat", [1]], [-1, 3, "C3", [1024, False]],
             [[17, 20, 23], 1, "Detect", ["nc", "anchors"]]],
}


class ReleaseModel(DetectionModel):
    """Pickles as ``models.yolo.Model``, the name v5.0 - v6.2 release files use for the model class."""


ReleaseModel.__module__, ReleaseModel.__qualname__, ReleaseModel.__name__ = "models.yolo", "Model", "Model"


def _save_release_file(model: DetectionModel, path, model_class_name: str, monkeypatch) -> None:
    """Write ``model`` as an Ultralytics release does: the pickled module (float16) in a dict, ``ema: None``."""
    for bottleneck in (m for m in model.modules() if isinstance(m, Bottleneck)):
        del bottleneck.add_op  # Ultralytics' Bottleneck adds inline: release pickles have no Add module
    if model_class_name == "Model":
        monkeypatch.setattr(yolo, "Model", ReleaseModel)  # pickle checks that the written name finds the class
        model.__class__ = ReleaseModel
    torch.save({"epoch": -1, "best_fitness": None, "model": model.half(), "ema": None, "updates": None,
                "optimizer": None, "opt": {"imgsz": 640}, "date": "2022-01-01"}, path)
    monkeypatch.undo()


@pytest.mark.parametrize(("release", "cfg", "class_name"), [
    ("v5.0", V5_YAML, "Model"),
    ("v6.0-v6.2", "yolov5n.yaml", "Model"),
    ("v7.0", "yolov5n.yaml", "DetectionModel"),
])
def test_release_files_load_by_the_class_names_they_pickle(tmp_path, monkeypatch, release, cfg, class_name):
    model = DetectionModel(cfg, nc=4).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.half().float()(x)[0]
    path = tmp_path / f"yolov5-{release}.pt"
    _save_release_file(model, path, class_name, monkeypatch)
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert f"models.yolo.{class_name}" in names and "models.common.C3" in names
    assert ("models.common.Focus" in names and "models.common.SPP" in names) == (release == "v5.0")
    loaded = load_weights(path)
    assert loaded.source == "ultralytics" and type(loaded.model) is DetectionModel and loaded.model.nc == 4
    with torch.no_grad():
        assert torch.allclose(loaded.model(x)[0], expected, atol=1e-4)


class _Call:
    def __init__(self, function, argument) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self):
        return (self.function, (self.argument,))


@pytest.mark.parametrize(("function", "argument"), [(os.system, "echo pwned"), (builtins.eval, "print('pwned')")])
def test_a_file_naming_other_code_is_refused_with_its_name(tmp_path, capfd, function, argument):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Call(function, argument), "epoch": -1}, path)
    with pytest.raises(CheckpointError) as error:
        read_weights_file(path)
    message = str(error.value)
    assert f"{function.__module__}.{function.__name__}" in message  # posix.system / builtins.eval
    assert "evil.pt" in message and "refused without running it" in message and "state_dict()" in message
    assert "pwned" not in capfd.readouterr().out
