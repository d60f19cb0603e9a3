"""torchrun DistributedDataParallel on CPU (gloo): two ranks train with a recipe, rank 0 alone writes the run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from utils.checkpoint import load_checkpoint
from utils.sparsification.structure import unpack_mask

pytestmark = pytest.mark.slow


def test_two_ranks_train_with_a_recipe_and_rank_zero_writes_a_sparse_quantized_run(tmp_path, shapes_dataset):
    project = tmp_path / "runs"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "train.py", "--data", str(shapes_dataset), "--cfg", "yolov5n.yaml", "--weights", "", "--imgsz", "64",
               "--batch-size", "8", "--workers", "0", "--noplots", "--project", str(project), "--name", "ddp",
               "--sparsification-recipe", "recipes/demo.yaml", "--epochs", "3", "--device", "cpu"]
    env = {**os.environ, "NM_DISABLE_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=os.path.dirname(os.path.dirname(__file__)), env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in project.iterdir()) == ["ddp"]  # the other rank made no run folder of its own
    checkpoint = load_checkpoint(project / "ddp" / "weights" / "last.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["sparsification"]["is_quantized"]
    masks = checkpoint["sparsification"]["masks"]
    assert masks, "pruning masks travel with the checkpoint"
    weights = {k.replace(".module.", "."): v for k, v in checkpoint["model"].items()}  # QAT wraps convs
    for name, packed in masks.items():
        kept = unpack_mask(packed)
        weight = weights[name].reshape(kept.shape)
        assert not weight[~kept].any(), f"{name}: pruned weights must be exactly zero"
    assert sum((~unpack_mask(p)).sum().item() for p in masks.values()) > 0
