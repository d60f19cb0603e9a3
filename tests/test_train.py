"""train.py end to end on real generated images: outputs, exact resume (of conftest's shared resumed run), and clear
errors for bad flags."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from test_loggers import read_events

import train
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TINY = {"cfg": "yolov5n.yaml", "weights": "", "imgsz": 64, "batch_size": 8, "workers": 0, "noplots": True,
        "hyp": str(train.ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")}


def _train(tmp_path, dataset, **overrides):
    options = {**TINY, "data": str(dataset), "project": str(tmp_path / "runs"), **overrides}
    return train.run(**options)


def test_a_short_run_writes_the_ultralytics_outputs(tmp_path, shapes_dataset):
    summary = _train(tmp_path, shapes_dataset, epochs=2, name="exp", noplots=False)
    run_dir = tmp_path / "runs" / "exp"
    for name in ("weights/last.pt", "weights/best.pt", "results.csv", "results.png", "opt.yaml", "hyp.yaml",
                 "labels.jpg", "confusion_matrix.png", "val_batch0_pred.jpg", "train_batch0.jpg", "train_batch1.jpg",
                 "train_batch2.jpg"):
        assert (run_dir / name).exists(), name
    import cv2

    mosaic = cv2.imread(str(run_dir / "train_batch0.jpg"))  # the first batch: 8 images of 64 px on a 3 x 3 grid
    assert mosaic.shape == (192, 192, 3) and not (run_dir / "train_batch3.jpg").exists()
    assert summary["epochs"] == 2
    last = load_checkpoint(run_dir / "weights" / "last.pt")
    assert last["final"] and last["epoch"] == 1 and last["optimizer"] is None  # stripped at the end
    rows = (run_dir / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,train/box_loss") and rows[0].endswith(",phase,conv_sparsity")
    # TensorBoard, on by default: the same numbers as results.csv, read back with tensorboard's own reader
    events = read_events(run_dir)
    column = rows[0].split(",").index("metrics/mAP_0.5")
    assert [e.value for e in events.Scalars("metrics/mAP_0.5")] == pytest.approx(
        [float(r.split(",")[column]) for r in rows[1:]])
    assert {"x/lr0", "x/lr1", "x/lr2", "train/box_loss", "val/obj_loss", "x/phase"} <= set(events.Tags()["scalars"])
    assert {"results", "val_batch0_pred", "confusion_matrix"} <= set(events.Tags()["images"])
    assert _train(tmp_path, shapes_dataset, epochs=1, name="exp")["save_dir"].endswith("exp2")


def test_an_interrupted_run_resumes_to_the_same_weights(resumed_sparse_run, dense_run):
    """A run cut after epoch 0 and resumed ends with the uninterrupted run's weights and masks (conftest's shared
    resumed run: fine-tuning with a recipe and a teacher, so its schedule, masks and teacher all resume too)."""
    run = resumed_sparse_run
    resumed = load_checkpoint(run.weights / "last.pt")
    assert resumed["epoch"] == run.uninterrupted["epoch"] == 2 and run.first_part["epoch"] == 0
    for key, value in run.uninterrupted["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    expected_masks, got_masks = run.uninterrupted["sparsification"]["masks"], resumed["sparsification"]["masks"]
    assert expected_masks and got_masks.keys() == expected_masks.keys()
    for name, packed in expected_masks.items():
        assert torch.equal(got_masks[name]["bits"], packed["bits"]), name
    run_dir = run.weights.parent
    assert len((run_dir / "results.csv").read_text().strip().splitlines()) == 4  # header + 3 epochs, no repeats
    # The training time adds up over the parts (benchmarks report it), and opt.yaml still names the starting weights.
    first_part = run.first_part["options"]["train_seconds"]
    assert 0 < first_part < resumed["options"]["train_seconds"]
    assert yaml.safe_load((run_dir / "opt.yaml").read_text())["weights"] == str(dense_run)


def test_resuming_a_run_of_before_the_column_rename_keeps_its_conv_sparsity_under_the_new_name(tmp_path):
    """results.csv called the conv weight sparsity ``sparsity`` until 2026-12-05; a resume rewrites the file with
    today's header and keeps the values of the epochs it does not repeat."""
    path = tmp_path / "results.csv"
    old_header = [c if c != "conv_sparsity" else "sparsity" for c in train.RESULT_COLUMNS]
    rows = [[str(epoch), *["0.1"] * 13, "pruned", str(0.5 + epoch / 10)] for epoch in range(3)]
    path.write_text("\n".join(",".join(r) for r in [old_header, *rows]) + "\n")
    train.truncate_results(path, start_epoch=2)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(train.RESULT_COLUMNS) and lines[0].endswith(",phase,conv_sparsity")
    assert [line.split(",")[-1] for line in lines[1:]] == ["0.5", "0.6"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"imgsz": 70}, "multiple of the model's max stride 32"),
    ({"batch_size": 1000}, "larger than the training set"),
    ({"hyp": "missing_hyp.yaml"}, "hyperparameter file not found"),
    ({"cfg": "", "weights": ""}, "--cfg"),
])
def test_bad_flags_exit_with_a_message(tmp_path, shapes_dataset, overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        _train(tmp_path, shapes_dataset, epochs=1, name="bad", **overrides)
    assert exit_info.value.code == 1
    assert message in str(exit_info.value.__cause__)


def test_resume_with_another_recipe_is_refused(tmp_path, shapes_dataset):
    _train(tmp_path, shapes_dataset, epochs=2, name="r", save_period=1)
    weights = tmp_path / "runs" / "r" / "weights"
    shutil.copy(weights / "epoch0.pt", weights / "last.pt")
    with pytest.raises(SystemExit) as exit_info:
        train.run(resume=str(weights / "last.pt"), sparsification_recipe="recipes/demo.yaml")
    assert "different recipe" in str(exit_info.value.__cause__)


def test_patience_stops_a_dense_run_but_not_a_recipe_run_and_zero_never_stops() -> None:
    """--patience as in Ultralytics: N epochs without gain end a dense run; 0 turns early stopping off; a recipe
    run always runs the recipe's epochs (stopping mid-schedule would skip pruning or QAT)."""
    import train

    assert train.stops_early(patience=100, patience_left=0, sparsifying=False)
    assert not train.stops_early(patience=100, patience_left=1, sparsifying=False)
    assert not train.stops_early(patience=100, patience_left=0, sparsifying=True)
    assert not train.stops_early(patience=0, patience_left=-577, sparsifying=False)
