"""Neural Magic's YOLOv5 recipes run as written, and shortened with ``--epochs``.

The recipes below are written here in the style of Neural Magic's published YOLOv5 recipes (sparseml's
``integrations/ultralytics-yolov5`` tutorials and SparseZoo recipe cards): variables ``num_epochs``, ``init_lr``,
``quantization_epochs`` ...; a literal 0-3 warm-up window next to ``eval(num_epochs - quantization_epochs)``;
``param_groups`` on the warm-up modifiers; GMP groups listing parameters by name; per-layer distillation with
``project_features`` and an explicit layer list; the legacy ``QuantizationModifier`` options (``submodules``,
``custom_quantizable_module_types``, ``exclude_module_types``, ``quantize_conv_activations``) with BN and observers
frozen one and two epochs after QAT starts; and a ``.md`` card with YAML front matter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.yolo import DetectionModel
from utils.optim import build_optimizer
from utils.sparsification import create_sparsifier
from utils.sparsification.recipes import RecipeError, load_recipe

# From-scratch pruned + quantized recipe, 250 epochs (sparsify-from-scratch style), shortened to a few groups.
PRUNED_QUANT = """
version: 1.1.0

# General Hyperparams
num_epochs: 250
init_lr: 0.01
final_lr: 0.002
weights_warmup_lr: 0
biases_warmup_lr: 0.1

# Pruning Hyperparams
init_sparsity: 0.05
pruning_start_epoch: 4
pruning_end_epoch: 150
pruning_update_frequency: 1.0

# Quantization variables
quantization_epochs: 10
quantization_lr: 1.e-3

# Knowledge distillation variables
per_layer_distillation_gain: 0.01

training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)

  - !LearningRateFunctionModifier
    start_epoch: 3
    end_epoch: eval(num_epochs - quantization_epochs)
    lr_func: linear
    init_lr: eval(init_lr)
    final_lr: eval(final_lr)

  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 3
    lr_func: linear
    init_lr: eval(weights_warmup_lr)
    final_lr: eval(init_lr)
    param_groups: [0, 1]

  - !LearningRateFunctionModifier
    start_epoch: 0
    end_epoch: 3
    lr_func: linear
    init_lr: eval(biases_warmup_lr)
    final_lr: eval(init_lr)
    param_groups: [2]

  - !LearningRateFunctionModifier
    start_epoch: eval(num_epochs - quantization_epochs)
    end_epoch: eval(num_epochs)
    lr_func: cosine
    init_lr: eval(quantization_lr)
    final_lr: 1.e-9

pruning_modifiers:
  - !GMPruningModifier
    params:
      - model.2.cv1.conv.weight
      - model.4.cv1.conv.weight
      - model.13.cv1.conv.weight
      - model.24.m.2.weight
    init_sparsity: eval(init_sparsity)
    final_sparsity: 0.4240
    start_epoch: eval(pruning_start_epoch)
    end_epoch: eval(pruning_end_epoch)
    update_frequency: eval(pruning_update_frequency)

  - !GMPruningModifier
    params:
      - model.7.conv.weight
      - model.8.m.0.cv2.conv.weight
      - model.23.cv3.conv.weight
    init_sparsity: eval(init_sparsity)
    final_sparsity: 0.7602
    start_epoch: eval(pruning_start_epoch)
    end_epoch: eval(pruning_end_epoch)
    update_frequency: eval(pruning_update_frequency)

knowledge_distillation_modifiers:
  - !PerLayerDistillationModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs - quantization_epochs)
    gain: eval(per_layer_distillation_gain)
    project_features: true
    student_layer_names:
    - model.0
    - model.2.cv1
    - model.7
    - model.17.cv3
    - model.24.m.0
    - model.24.m.1
    - model.24.m.2

quantization_modifiers:
  - !QuantizationModifier
    start_epoch: eval(num_epochs - quantization_epochs)
    submodules:
      - model
    custom_quantizable_module_types: ['SiLU']
    exclude_module_types: ['SiLU']
    quantize_conv_activations: False
    disable_quantization_observer_epoch: eval(num_epochs - quantization_epochs + 2)
    freeze_bn_stats_epoch: eval(num_epochs - quantization_epochs + 1)
"""

# Sparse transfer learning recipe, 55 epochs (sparse-transfer-learning style): hold the zeros, QAT the last 5.
TRANSFER = """
version: 1.1.0

# General variables
num_epochs: 55
quantization_epochs: 5
quantization_lr: 1.e-5
final_lr: 1.e-9

training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)

  - !LearningRateFunctionModifier
    start_epoch: eval(num_epochs - quantization_epochs)
    end_epoch: eval(num_epochs)
    lr_func: cosine
    init_lr: eval(quantization_lr)
    final_lr: eval(final_lr)

pruning_modifiers:
  - !ConstantPruningModifier
    start_epoch: 0.0
    params: __ALL_PRUNABLE__

quantization_modifiers:
  - !QuantizationModifier
    start_epoch: eval(num_epochs - quantization_epochs)
    submodules:
      - model
    custom_quantizable_module_types: ['SiLU']
    exclude_module_types: ['SiLU']
    quantize_conv_activations: False
    disable_quantization_observer_epoch: eval(num_epochs - quantization_epochs + 2)
    freeze_bn_stats_epoch: eval(num_epochs - quantization_epochs + 1)
"""

def recipe_card(path: Path, recipe: str) -> Path:
    """``recipe`` as a SparseZoo-style recipe card: YAML front matter, then markdown (with a rule of its own)."""
    path.write_text(f"---\n{recipe.strip()}\n---\n\n# YOLOv5 pruned-quantized\n\nHow it was made.\n\n---\n\nResults.\n",
                    encoding="utf-8")
    return path


def epochs_of(manager) -> list[tuple[str, float, float]]:
    return sorted((type(m).__name__, float(m.start_epoch), float(m.end_epoch)) for m in manager.iter_modifiers())


# ----------------------------------------------------------------------------------------- --epochs scaling


def test_epochs_scale_literal_and_variable_epochs_by_the_same_factor():
    """250 epochs as 3: x0.012 for the literal warm-up (0-3) and the variables alike, QAT offsets (+1, +2) and the
    pruning update frequency included; the schedule keeps its shape."""
    manager, _, notes = load_recipe(PRUNED_QUANT, requested_epochs=3)
    assert manager.max_epochs == 3
    by_type = {}
    for modifier in manager.iter_modifiers():
        by_type.setdefault(type(modifier).__name__, []).append(modifier)
    warmups = sorted((m.start_epoch, m.end_epoch, tuple(m.param_groups or ())) for m in by_type[
        "LearningRateFunctionModifier"])
    assert warmups == [(0, pytest.approx(0.036), (0, 1)), (0, pytest.approx(0.036), (2,)),
                       (pytest.approx(0.036), pytest.approx(2.88), ()), (pytest.approx(2.88), 3, ())]
    for gmp in by_type["GMPruningModifier"]:
        assert (gmp.start_epoch, gmp.end_epoch, gmp.update_frequency) == pytest.approx((0.048, 1.8, 0.012))
    (quantization,) = by_type["QuantizationModifier"]
    assert (quantization.start_epoch, quantization.freeze_bn_stats_epoch,
            quantization.disable_quantization_observer_epoch) == pytest.approx((2.88, 2.892, 2.904))
    assert by_type["PerLayerDistillationModifier"][0].end_epoch == pytest.approx(2.88)
    # the log says what changed, literal fields and variables
    assert "recipe num_epochs 250 -> 3: every epoch value x0.012" in notes
    modifiers = next(note for note in notes if note.startswith("recipe modifiers: "))
    for change in ("LearningRateFunctionModifier end_epoch 3 -> 0.036 (x2)", "LearningRateFunctionModifier "
                   "start_epoch 3 -> 0.036", "QuantizationModifier disable_quantization_observer_epoch 242 -> 2.904",
                   "GMPruningModifier update_frequency 1 -> 0.012 (x2)", "EpochRangeModifier end_epoch 250 -> 3"):
        assert change in modifiers
    assert "pruning_update_frequency 1 -> 0.012" in next(n for n in notes if n.startswith("recipe variables: "))


def test_factors_in_expressions_are_not_epochs():
    """``eval(num_epochs * 0.05)``: the 0.05 is a share, not epochs; ``eval(num_epochs - 5)``: the 5 is epochs."""
    recipe = PRUNED_QUANT.replace("quantization_epochs: 10", "quantization_epochs: eval(num_epochs * 0.04)")
    recipe = recipe.replace("pruning_end_epoch: 150", "pruning_end_epoch: eval(num_epochs - 100)")
    manager, _, _ = load_recipe(recipe, requested_epochs=25)
    assert manager.quantization_modifiers[0].start_epoch == pytest.approx(24)  # 25 - 25 * 0.04
    assert manager.pruning_modifiers[0].end_epoch == pytest.approx(15)  # 25 - 100 * 0.1


def test_only_the_epoch_terms_of_an_expression_scale():
    """Shares and round()'s digits stay; offsets and min/max bounds in epochs scale (x0.5 here)."""
    from utils.sparsification.epochs import scale_recipe_epochs

    container = {"num_epochs": 100, "qat_share": 0.05, "quantization_epochs": "eval(max(1, num_epochs * qat_share))",
                 "modifiers": [{"OBJECT.QuantizationModifier": None,
                                "start_epoch": "eval(num_epochs - quantization_epochs)",
                                "freeze_bn_stats_epoch": "eval(round(num_epochs - quantization_epochs + 2, 1))"}]}
    scaled = scale_recipe_epochs(container, 0.5, pinned=set()).container
    assert (scaled["num_epochs"], scaled["qat_share"]) == (50, 0.05)
    assert scaled["quantization_epochs"] == "eval(max(0.5, num_epochs * qat_share))"
    assert scaled["modifiers"][0]["start_epoch"] == "eval(num_epochs - quantization_epochs)"
    assert scaled["modifiers"][0]["freeze_bn_stats_epoch"] == "eval(round(num_epochs - quantization_epochs + 1.0, 1))"
    assert container["num_epochs"] == 100  # a copy: the recipe as read stays as it was


def test_recipe_args_variables_are_not_scaled():
    manager, _, notes = load_recipe(PRUNED_QUANT, {"quantization_epochs": 2}, requested_epochs=25)
    assert manager.max_epochs == 25
    assert manager.quantization_modifiers[0].start_epoch == pytest.approx(23)  # 25 - 2
    assert manager.quantization_modifiers[0].disable_quantization_observer_epoch == pytest.approx(23.2)  # + 2 x 0.1
    assert "quantization_epochs" not in next(n for n in notes if n.startswith("recipe variables: "))


def test_a_schedule_that_scaling_breaks_names_the_modifier_the_field_and_the_fix():
    """quantization_epochs pinned at 10 in a 3-epoch run would start QAT at -7."""
    with pytest.raises(RecipeError) as error:
        load_recipe(PRUNED_QUANT, {"quantization_epochs": 10}, requested_epochs=3)
    message = str(error.value)
    assert "--epochs 3 scales every epoch by 0.012, which breaks the schedule" in message
    assert "QuantizationModifier (quantization_modifiers #1) start_epoch would be -7 (before epoch 0)" in message
    assert "GMPruningModifier (pruning_modifiers #1) end_epoch would be 1.8, after QuantizationModifier" in message
    assert "Fix: --recipe-args sets quantization_epochs, which --epochs does not scale" in message


def test_a_pruning_window_shorter_than_one_update_is_refused():
    with pytest.raises(RecipeError, match=r"GMPruningModifier \(pruning_modifiers #1\) pruning window 0.048-1.8 "
                                          r"would be shorter than one update \(update_frequency 2\)"):
        load_recipe(PRUNED_QUANT, {"pruning_update_frequency": 2.0}, requested_epochs=3)


def test_observers_switched_off_before_any_qat_step_are_refused():
    """Scaled to 3 epochs, QAT starts at 2.88 and the observers stop at 2.904: with 12 steps per epoch no step falls
    in between, so the quantizers would keep their initial scales (every weight rounds to zero)."""
    sparsifier = create_sparsifier(PRUNED_QUANT, requested_epochs=3)
    model = DetectionModel("yolov5n.yaml")
    sparsifier.model_built(model, None)
    with pytest.raises(RecipeError, match=r"disable_quantization_observer_epoch 2.904 comes before any training step "
                                          r"with QAT on \(start_epoch 2.88; with 12 steps per epoch the first QAT "
                                          r"step is at 2.91667\)"):
        sparsifier.optimizer_built(model, build_optimizer(model), torch.amp.GradScaler("cuda", enabled=False),
                                   steps_per_epoch=12, start_epoch=0, default_epochs=3)


# --------------------------------------------------------------------------------------- NM recipe features


def test_recipe_card_front_matter_is_the_recipe(tmp_path: Path):
    card = recipe_card(tmp_path / "recipe.md", PRUNED_QUANT)
    from_card, source, _ = load_recipe(str(card))
    assert source == str(card)
    assert epochs_of(from_card) == epochs_of(load_recipe(PRUNED_QUANT)[0])


def test_param_groups_warm_up_weights_from_zero_and_group_2_from_biases_warmup_lr():
    """NM's warm-up modifiers name optimizer groups by index; the groups are in the order of Ultralytics v7.0 and
    Neural Magic's fork (0 biases, 1 weights with decay, 2 BatchNorm weights)."""
    sparsifier = create_sparsifier(PRUNED_QUANT, requested_epochs=25)
    model = DetectionModel("yolov5n.yaml")
    sparsifier.model_built(model, None)
    optimizer = build_optimizer(model, lr=0.01)
    sparsifier.optimizer_built(model, optimizer, torch.amp.GradScaler("cuda", enabled=False), steps_per_epoch=4,
                               start_epoch=0, default_epochs=25)
    sparsifier.epoch_start(0)
    assert [group["lr"] for group in optimizer.param_groups] == [0.0, 0.0, pytest.approx(0.1)]
    sparsifier.finalize(model)


def test_explicit_teacher_layer_names_are_checked_against_the_teacher():
    """A yolov5s teacher for a yolov5n student, layer by layer (``project_features`` maps the widths); a teacher
    layer name the teacher lacks is refused before training, with the closest names."""
    from utils.sparsification.teacher import load_teacher

    layers = "    - model.0\n    - model.2.cv1\n    - model.7\n    - model.17.cv3\n    - model.24.m.0\n"
    layers += "    - model.24.m.1\n    - model.24.m.2\n"
    recipe = PRUNED_QUANT.replace(layers, layers + "    teacher_layer_names:\n" + layers.replace("model.7\n",
                                                                                               "model.7.cnv\n"))
    sparsifier = create_sparsifier(recipe, requested_epochs=25)
    model = DetectionModel("yolov5n.yaml")
    sparsifier.model_built(model, None)
    teacher = load_teacher("self", DetectionModel("yolov5s.yaml"), torch.device("cpu"))
    with pytest.raises(RecipeError, match=r"PerLayerDistillationModifier teacher layer 'model.7.cnv' is not a module "
                                          r"of the --teacher-weights model; closest: model.7.conv"):
        sparsifier.optimizer_built(model, build_optimizer(model), torch.amp.GradScaler("cuda", enabled=False),
                                   steps_per_epoch=4, start_epoch=0, default_epochs=25, teacher=teacher)


def test_misspelt_legacy_quantization_module_types_are_named():
    """SparseML's legacy modifier compares these with type names, so 'SiLu' would silently quantize SiLU."""
    sparsifier = create_sparsifier(TRANSFER.replace("exclude_module_types: ['SiLU']", "exclude_module_types: ['SiLu']"))
    with pytest.raises(RecipeError, match=r"QuantizationModifier exclude_module_types 'SiLu' is not a layer type of "
                                          r"torch.nn or of this model; closest: SiLU"):
        sparsifier.model_built(DetectionModel("yolov5n.yaml"), None)


@pytest.mark.parametrize("cfg", ["yolov5n.yaml", "yolov5s.yaml"])
def test_named_parameters_and_layers_fit_both_models(cfg: str):
    """The recipes' parameter and layer names (Ultralytics v7.0 names) exist in yolov5n and yolov5s alike."""
    model = DetectionModel(cfg)
    for recipe in (PRUNED_QUANT, TRANSFER):
        sparsifier = create_sparsifier(recipe, requested_epochs=3)
        sparsifier.model_built(model, None)
    (quantization,) = sparsifier.manager.quantization_modifiers
    assert type(quantization).__module__.endswith("legacy_modifier_quantization")


# ------------------------------------------------------------------------------- train.py and export.py


@pytest.fixture(scope="module")
def nine_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 training images: at batch 1, 9 steps per epoch, enough for one step between a QAT start scaled to 1.818 of
    2 epochs and observers switched off at 1.891 (the step at 1.889)."""
    import yaml

    from data.scripts.make_shapes import generate

    root = tmp_path_factory.mktemp("nine")
    generate(root / "shapes", num_train=9, num_val=2, imgsz=64, seed=5)
    names = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "shapes.yaml").read_text())["names"]
    dataset = root / "shapes.yaml"
    dataset.write_text(yaml.safe_dump({"path": str(root / "shapes"), "train": "images/train", "val": "images/val",
                                       "names": names}))
    return dataset


def _train_and_export(tmp_path: Path, dataset: Path, cfg: str, recipe: str, **options):
    import export
    import train
    from utils.checkpoint import load_checkpoint

    summary = train.run(cfg=cfg, weights="", data=str(dataset), imgsz=64, batch_size=1, workers=0, noplots=True,
                        noval=True, nosave=True, sparsification_recipe=recipe, project=str(tmp_path / "runs"),
                        name="nm", hyp=str(train.ROOT / "data" / "hyps" / "hyp.scratch-low.yaml"), **options)
    last = Path(summary["save_dir"]) / "weights" / "last.pt"
    report = export.export_onnx(last, imgsz=64, data=str(dataset), device="cpu", int8_format="integer")
    return summary, load_checkpoint(last), report


@pytest.mark.slow
def test_pruned_recipe_card_trains_two_epochs_on_yolov5s_and_exports(tmp_path: Path, nine_images: Path):
    """The 250-epoch card, pruning only (its QAT modifier left out), as 2 epochs of 9 steps on yolov5s: warm-up by
    param group, GMP on named parameters to each group's sparsity, distillation with learned projections from a
    'self' teacher; the checkpoint holds the recipe as run and exports to a checked ONNX file."""
    card = recipe_card(tmp_path / "yolov5s.pruned.md", PRUNED_QUANT.split("quantization_modifiers:")[0])
    summary, last, report = _train_and_export(tmp_path, nine_images, "yolov5s.yaml", str(card), epochs=2,
                                              teacher_weights="self")
    assert summary["epochs"] == 2
    state = last["sparsification"]
    assert state["phase"] == "pruned" and not state["is_quantized"]
    assert load_recipe(state["recipe"])[0].max_epochs == 2  # the recipe as run, which export and --resume rebuild
    weights = last["model"]
    for name, target in (("model.7.conv.weight", 0.7602), ("model.2.cv1.conv.weight", 0.424)):
        assert float((weights[name] == 0).float().mean()) == pytest.approx(target, abs=0.01), name
    assert int((weights["model.3.conv.weight"] == 0).sum()) == 0  # not listed: dense
    assert not report.quantized and report.check.passed, report.check.line()
    assert report.check.file_zeros == report.check.model_zeros > 0


@pytest.mark.slow
def test_transfer_recipe_trains_two_epochs_on_yolov5n_and_exports_int8(tmp_path: Path, nine_images: Path):
    """The 55-epoch transfer recipe as 2 epochs of 9 steps: QAT from 1.818 with the legacy options, BN frozen at
    1.855 and observers at 1.891, so the step at 1.889 calibrates the quantizers; the checkpoint rebuilds for an
    INT8 export whose zeros are not weights rounded away."""
    recipe = tmp_path / "yolov5n.transfer.yaml"
    recipe.write_text(TRANSFER, encoding="utf-8")
    summary, last, report = _train_and_export(tmp_path, nine_images, "yolov5n.yaml", str(recipe), epochs=2)
    assert summary["epochs"] == 2
    state = last["sparsification"]
    assert state["phase"] == "quantized" and state["is_quantized"]
    assert report.quantized and report.check.passed, report.check.line()
    assert report.summary.ops["ConvInteger"] == 60  # submodules: [model] quantizes Detect's convs too
    assert report.check.file_zeros < 0.05 * report.summary.conv_weight_elements
