"""Knowledge distillation (``--teacher-weights``): a recipe's SparseML distillation modifiers, driven by the hooks.

The teacher pulls the model being pruned towards its features until QAT starts, then stops; without a teacher the
modifier stays off and says so; a teacher that cannot work (no distillation modifier to use it, other classes, a
QAT checkpoint, a window that overlaps QAT) is refused before training with a message that says what to change.
"""

from __future__ import annotations

import pytest
import torch
from test_sparsification import PRUNE_QUANT, new_model
from test_sparsification import train as run_loop

from utils.checkpoint import CheckpointError
from utils.sparsification import create_sparsifier
from utils.sparsification.recipes import RecipeError
from utils.sparsification.teacher import load_teacher

# PRUNE_QUANT (GMP 0.5-2, QAT from 3 of 5 epochs) with per-layer distillation until QAT starts.
DISTILLATION = """
distillation_modifiers:
  - !PerLayerDistillationModifier
    start_epoch: 0.0
    end_epoch: eval(qat_start_epoch)
    gain: 0.01
    normalize: True
    project_features: PROJECT
"""


def distilling(project: bool = False, **replacements: str) -> str:
    text = PRUNE_QUANT + DISTILLATION.replace("PROJECT", str(project))
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def start(recipe: str):
    sparsifier = create_sparsifier(recipe)
    model = new_model()
    sparsifier.model_built(model, None)
    return sparsifier, model


@pytest.fixture(scope="module")
def distilled_run():
    sparsifier, model = start(distilling())
    teacher = load_teacher("self", model, torch.device("cpu"))
    return run_loop(sparsifier, model, teacher=teacher)


def test_teacher_adds_a_loss_while_pruning_and_none_once_qat_starts(distilled_run):
    assert any("distillation (PerLayerDistillationModifier) from the --teacher-weights model" in note
               for note in distilled_run.plan.notes)
    assert all(distilled_run.distillation[epoch] > 0 for epoch in (0, 1, 2))
    assert all(distilled_run.distillation[epoch] == 0 for epoch in (3, 4))
    final = distilled_run.checkpoints[4]["sparsification"]
    assert final["is_quantized"] and final["phase"] == "pruned_quantized"
    assert final["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert "PerLayerDistillationModifier" in final["recipe"]


def test_teacher_stays_frozen_and_returns_raw_outputs_like_the_student():
    model = new_model()
    teacher = load_teacher("self", model, torch.device("cpu"))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    images = torch.rand(2, 3, 64, 64)
    outputs = teacher(images)
    assert [o.shape for o in outputs] == [o.shape for o in model.train()(images)]
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # eval: BN statistics untouched


def test_without_a_teacher_the_modifier_is_off_and_the_loss_unchanged():
    sparsifier, model = start(distilling())
    run = run_loop(sparsifier, model, stop_after=1)
    assert any("PerLayerDistillationModifier off: no --teacher-weights" in note for note in run.plan.notes)
    assert run.distillation == {0: 0.0, 1: 0.0}


def test_projections_are_checkpointed_and_restored_on_resume():
    sparsifier, model = start(distilling(project=True))
    run = run_loop(sparsifier, model, stop_after=0, teacher=load_teacher("self", model, torch.device("cpu")))
    checkpoint = run.checkpoints[0]
    (entry,) = [m for m in checkpoint["sparsification"]["modifiers"] if m["type"] == "PerLayerDistillationModifier"]
    assert len(entry["projection"]) == 60  # every Conv2d of yolov5n, Detect's included

    resumed = create_sparsifier(distilling(project=True))
    model = new_model()
    model.load_state_dict(checkpoint["model"])
    resumed.model_built(model, checkpoint["sparsification"], resume=True)
    resumed_run = run_loop(resumed, model, start_epoch=1, checkpoint=checkpoint, stop_after=1,
                        teacher=load_teacher("self", model, torch.device("cpu")))
    assert resumed_run.distillation[1] > 0
    modifier = next(m for m in resumed.manager.iter_modifiers() if type(m).__name__ == "PerLayerDistillationModifier")
    first = next(iter(entry["projection"]))
    assert modifier._projection[first].weight.shape == entry["projection"][first]["weight"].shape


def test_teacher_without_a_distillation_modifier_is_refused():
    sparsifier, model = start(PRUNE_QUANT)
    with pytest.raises(RecipeError, match="--teacher-weights is set but .* has no distillation modifier; add a "
                                          "!PerLayerDistillationModifier"):
        run_loop(sparsifier, model, teacher=load_teacher("self", model, torch.device("cpu")))


def test_teacher_without_a_recipe_is_refused():
    sparsifier, model = start("")
    with pytest.raises(ValueError, match="--teacher-weights needs a recipe with a distillation modifier"):
        run_loop(sparsifier, model, teacher=load_teacher("self", model, torch.device("cpu")))


def refused_with_a_teacher(recipe: str, message: str) -> None:
    sparsifier, model = start(recipe)
    with pytest.raises(RecipeError, match=message):
        run_loop(sparsifier, model, teacher=load_teacher("self", model, torch.device("cpu")))
    assert sparsifier.manager.initialized is False  # refused before SparseML touched the model


def test_distillation_overlapping_qat_is_refused_before_training():
    refused_with_a_teacher(distilling(**{"end_epoch: eval(qat_start_epoch)\n    gain": "end_epoch: 5\n    gain"}),
                           r"PerLayerDistillationModifier ends at epoch 5, after QAT starts at 3; set its end_epoch "
                           r"to the QAT start")


def test_distilled_layer_names_must_exist():
    refused_with_a_teacher(
        distilling(**{"    gain: 0.01\n": "    gain: 0.01\n    student_layer_names: ['model.2.cv1.conv2']\n"}),
        r"student layer 'model.2.cv1.conv2' is not a module of this model; closest: model.2.cv1.conv")


def test_teacher_of_other_classes_is_refused(official_fixture_dir):
    student = new_model()  # 3 classes; the official fixture predicts 80
    fixture = official_fixture_dir / "yolov5n-v7.0.pt"
    with pytest.raises(CheckpointError, match=r"the teacher predicts 80 classes and the model being trained 3; use "
                                              r"a teacher trained on the same dataset"):
        load_teacher(str(fixture), student, torch.device("cpu"))


@pytest.mark.slow
def test_train_py_distils_from_the_dense_checkpoint_it_fine_tunes(tmp_path, shapes_dataset, dense_run):
    import train
    import val
    from utils.checkpoint import load_checkpoint

    common = {"data": str(shapes_dataset), "imgsz": 64, "batch_size": 4, "workers": 0, "noplots": True,
              "project": str(tmp_path / "runs")}
    dense = dense_run
    summary = train.run(weights=str(dense), teacher_weights=str(dense), name="sparse",
                        sparsification_recipe=str(train.ROOT / "recipes" / "yolov5n.pruned_quant.yaml"),
                        recipe_args='{"num_epochs": 2, "quantization_epochs": 1}', **common)
    log = (tmp_path / "runs" / "sparse" / "train.log").read_text(encoding="utf-8")
    assert "distillation (PerLayerDistillationModifier) from the --teacher-weights model" in log
    assert summary["epochs"] == 2
    final = load_checkpoint(tmp_path / "runs" / "sparse" / "weights" / "last.pt")
    assert final["sparsification"]["is_quantized"]
    assert "PerLayerDistillationModifier" in final["sparsification"]["recipe"]
    metrics, _, _ = val.run(data=str(shapes_dataset), weights=str(tmp_path / "runs" / "sparse" / "weights" / "last.pt"),
                            imgsz=64, batch_size=4, project=str(tmp_path / "val"), plots=False)
    assert len(metrics) == 7


@pytest.mark.slow
def test_a_resumed_self_distilled_run_ends_as_the_uninterrupted_one(resumed_sparse_run, dense_run):
    """--teacher-weights self keeps the starting model as teacher.pt, so --resume distils from the same teacher and
    ends where the uninterrupted run ended (conftest's shared resumed run)."""
    from utils.checkpoint import load_checkpoint

    run = resumed_sparse_run
    dense = load_checkpoint(dense_run)
    kept = load_checkpoint(run.weights / "teacher.pt")  # the starting model, not a copy made at resume time
    for name, value in (dense["ema"] or dense["model"]).items():
        assert torch.equal(kept["model"][name], value), name
    assert run.uninterrupted["options"]["teacher_weights"] == str(run.weights / "teacher.pt")
    assert "PerLayerDistillationModifier" in run.uninterrupted["sparsification"]["recipe"]
    resumed = load_checkpoint(run.weights / "last.pt")
    assert resumed["options"]["teacher_weights"] == str(run.weights / "teacher.pt")
    assert resumed["epoch"] == run.uninterrupted["epoch"] == 2
    for name, value in run.uninterrupted["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
