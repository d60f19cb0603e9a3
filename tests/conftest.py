"""Shared fixtures: tiny models, the official reference checkpoint, and a small generated dataset on disk."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT.parent / "shared" / "fixtures" / "ultralytics"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def official_fixture_dir() -> Path:
    if not (FIXTURES / "yolov5n-v7.0.pt").exists():
        pytest.skip(f"reference checkpoint folder {FIXTURES} is not present on this machine")
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
