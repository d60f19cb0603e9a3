"""The demo starts from the shipped dense model and applies a recipe the way its printed command says."""

from __future__ import annotations

from pathlib import Path

import yaml

import demo
from benchmarks import accuracy as protocol
from utils.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_start_is_a_dense_yolov5n_of_the_demo_data() -> None:
    loaded = load_weights(demo.START)
    data = yaml.safe_load((ROOT / demo.DATA).read_text(encoding="utf-8"))
    assert loaded.source == "project" and loaded.names == list(data["names"].values())
    assert loaded.checkpoint["options"]["data"] == demo.DATA and loaded.checkpoint["options"]["imgsz"] == demo.IMGSZ
    assert loaded.checkpoint["sparsification"] == {} and loaded.checkpoint["optimizer"] is None
    weights = [p for name, p in loaded.model.named_parameters() if name.endswith("conv.weight")]
    assert all(bool((w != 0).any()) for w in weights)  # dense: no layer pruned
    assert demo.START.stat().st_size < 5e6


def test_the_fine_tune_sets_only_variables_its_recipe_defines_at_the_protocols_rates() -> None:
    args = demo.recipe_args(12)
    assert set(args) <= protocol.recipe_variables(demo.RECIPE)
    assert {k: args[k] for k in protocol.SPARSITY_ARGS} == protocol.SPARSITY_ARGS
    assert {k: args[k] for k in ("init_lr", "final_lr", "qat_init_lr")} == \
        {k: protocol.FINETUNE_ARGS[k] for k in ("init_lr", "final_lr", "qat_init_lr")}
    assert args["pruning_end_epoch"] < 12 - args["quantization_epochs"]  # pruning ends before QAT starts
