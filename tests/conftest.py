"""Shared fixtures: the official reference checkpoint, a small generated dataset on disk, and the end-to-end
training runs (dense, and sparse + resumed) that several test files check, trained once per session."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT.parent / "shared" / "fixtures" / "ultralytics"

torch.set_num_threads(2)


@pytest.fixture
def official_fixture_dir(request: pytest.FixtureRequest) -> Path:
    """The official yolov5n checkpoint and its expected output; a bare clone lacks them: skip, naming what went
    untested."""
    if not (FIXTURES / "yolov5n-v7.0.pt").exists():
        behaviour = request.node.originalname.removeprefix("test_").replace("_", " ")
        pytest.skip(f"untested: {behaviour} (needs the official yolov5n-v7.0.pt and its reference output in "
                    f"{FIXTURES}, which only the project's shared checkout has)")
    return FIXTURES


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    """A small built-in-style dataset (real JPEGs and labels on disk) and its YAML."""
    from data.scripts.make_shapes import generate

    root = tmp_path_factory.mktemp("shapes")
    generate(root / "shapes", num_train=24, num_val=12, imgsz=128, seed=3)
    names = {i: n for i, n in enumerate(_shape_names())}
    yaml_path = root / "shapes.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump({"path": str(root / "shapes"), "train": "images/train",
                                         "val": "images/val", "names": names}))
    return yaml_path


def _shape_names() -> list[str]:
    import yaml

    with open(ROOT / "data" / "shapes.yaml", encoding="utf-8") as f:
        names = yaml.safe_load(f)["names"]
    return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)


SMALL_RUN = {"imgsz": 64, "batch_size": 4, "workers": 0, "noplots": True}


@pytest.fixture(scope="session")
def dense_run(tmp_path_factory, shapes_dataset) -> Path:
    """last.pt of one dense epoch on ``shapes_dataset``: the model that fine-tuning tests sparsify and distil from."""
    import train

    project = tmp_path_factory.mktemp("dense_run")
    train.run(cfg="yolov5n.yaml", weights="", epochs=1, name="dense", data=str(shapes_dataset), project=str(project),
              **SMALL_RUN)
    return project / "dense" / "weights" / "last.pt"


@dataclass
class ResumedRun:
    weights: Path  # the run's weights folder; last.pt is the resumed run's end
    uninterrupted: dict  # last.pt of the same run before it was cut
    first_part: dict  # the checkpoint it was resumed from (epoch 0)


@pytest.fixture(scope="session")
def resumed_sparse_run(tmp_path_factory, shapes_dataset, dense_run) -> ResumedRun:
    """``dense_run`` fine-tuned by recipes/yolov5n.pruned_quant.yaml over 3 epochs (pruning, then QAT), distilled from
    itself (``--teacher-weights self``), then cut after epoch 0 and finished with ``--resume``: the one end-to-end
    resume that train.py's and distillation's tests share (train.py runs on CPU are the suite's slowest part)."""
    import shutil

    import train
    from utils.checkpoint import load_checkpoint

    project = tmp_path_factory.mktemp("resumed_run")
    train.run(weights=str(dense_run), teacher_weights="self", name="sparse", save_period=1, data=str(shapes_dataset),
              project=str(project), sparsification_recipe=str(ROOT / "recipes" / "yolov5n.pruned_quant.yaml"),
              recipe_args='{"num_epochs": 3, "quantization_epochs": 1}', **SMALL_RUN)
    weights = project / "sparse" / "weights"
    uninterrupted = load_checkpoint(weights / "last.pt")
    shutil.copy(weights / "epoch0.pt", weights / "last.pt")  # the run died after its first (pruning) epoch
    first_part = load_checkpoint(weights / "last.pt")
    train.run(resume=str(weights / "last.pt"))
    return ResumedRun(weights=weights, uninterrupted=uninterrupted, first_part=first_part)
