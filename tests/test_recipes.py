"""The shipped recipes: they parse, their patterns fit the models they name, and they do what recipes/README.md says.

The README table is the specification: each row's epochs, QAT epochs, final sparsities and share of conv weights
pruned are checked against the recipe itself (and, for yolov5n, against the weights after the pruning modifiers ran).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from models.yolo import DetectionModel
from utils.sparsification import compat
from utils.sparsification.report import sparsity_report

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(p.name for p in RECIPES_DIR.glob("*.yaml"))
# The project recipes share one QuantizationModifier block: one of them, the demo and the guide's bare modifier.
QAT_RECIPES_ON_YOLOV5N = ["yolov5n.pruned_quant.yaml", "demo.yaml", "sparseml_guide_example.yaml"]
# Every ConvNd/Linear weight, as SparseML's __ALL_PRUNABLE__ means it.
ALL_PRUNABLE = "__ALL_PRUNABLE__"


def _readme_rows() -> dict[str, dict[str, str]]:
    lines = (RECIPES_DIR / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Recipe |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[cells["Recipe"].strip("`")] = cells
    return rows


ROWS = _readme_rows()


def _floats(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d+", text)]


def _model_for(recipe: str) -> str:
    return "yolov5s" if recipe.startswith("yolov5s") else "yolov5n"


@pytest.fixture(scope="module")
def manager_class(tmp_path_factory: pytest.TempPathFactory):
    """SparseML's manager; its modifier logger (made once per process) writes under a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NM_TEST_MODE", "1")
        patch.setenv("NM_TEST_LOG_DIR", str(tmp_path_factory.mktemp("sparse_logs")))
        from sparseml.pytorch.optim import ScheduledModifierManager  # required: an import error fails, not skips

        yield ScheduledModifierManager


@pytest.fixture(scope="module")
def models() -> dict[str, DetectionModel]:
    return {name: DetectionModel(f"{name}.yaml") for name in ("yolov5n", "yolov5s")}


@pytest.fixture
def quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No Python logger for applied modifiers: it logs every parameter (slow) into ./sparse_logs (not the repo's)."""
    monkeypatch.chdir(tmp_path)
    from sparseml.pytorch.utils import LoggerManager

    return LoggerManager(log_python=False)


def _pruning(manager) -> list:
    return [m for m in manager.modifiers if "Pruning" in type(m).__name__]


def _quantization(manager) -> list:
    return [m for m in manager.modifiers if type(m).__name__ == "QuantizationModifier"]


def _targets(manager, model: torch.nn.Module) -> dict[str, float]:
    """Parameter name -> final sparsity of every GMP-pruned weight; fails if a pattern matches nothing."""
    from sparseml.pytorch.utils.helpers import get_named_layers_and_params_by_regex, get_prunable_layers

    targets: dict[str, float] = {}
    for modifier in _pruning(manager):
        if type(modifier).__name__ != "GMPruningModifier":
            continue
        params = modifier.params
        if params == ALL_PRUNABLE or params == [ALL_PRUNABLE]:
            names = [f"{name}.weight" for name, _ in get_prunable_layers(model)]
        else:
            found = get_named_layers_and_params_by_regex(model, params, params_strict=True)
            names = [f"{item.layer_name}.{item.param_name}" for item in found]
        for name in names:
            assert name not in targets, f"{name} is pruned by two modifiers"
            targets[name] = modifier.final_sparsity
    return targets


def test_readme_lists_exactly_the_shipped_recipes() -> None:
    assert sorted(ROWS) == RECIPES
    assert len(RECIPES) == 15


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_explains_its_knobs(recipe: str) -> None:
    text = (RECIPES_DIR / recipe).read_text(encoding="utf-8")
    assert text.startswith("#"), "a recipe starts with a comment block"
    header = text.split("version:")[0]
    assert "Knobs:" in header and "--recipe-args" in header and "--epochs" in header
    assert re.search(r"^num_epochs: \d+", text, re.M)


@pytest.mark.parametrize("recipe", RECIPES)
def test_schedule_matches_readme(recipe: str, manager_class) -> None:
    manager = manager_class.from_yaml(str(RECIPES_DIR / recipe))
    row = ROWS[recipe]
    assert manager.max_epochs == int(row["Epochs"])

    quantization = _quantization(manager)
    if row["QAT epochs"] == "—" or row["QAT epochs"].startswith("all"):  # all: a quantized start's QAT continues
        assert not quantization
    else:
        (modifier,) = quantization
        assert manager.max_epochs - modifier.start_epoch == pytest.approx(float(row["QAT epochs"]))
        assert modifier.freeze_bn_stats_epoch is not None and modifier.freeze_bn_stats_epoch >= modifier.start_epoch
        if recipe != "sparseml_guide_example.yaml":  # the guide's bare modifier leaves observers running
            assert modifier.start_epoch < modifier.disable_quantization_observer_epoch <= manager.max_epochs

    pruning = _pruning(manager)
    if "holds" in row["Final sparsity"]:
        assert [type(m).__name__ for m in pruning] == ["ConstantPruningModifier"]
        assert pruning[0].params == ALL_PRUNABLE
    elif row["Final sparsity"] == "—":
        assert not pruning
    else:
        assert sorted({m.final_sparsity for m in pruning}) == sorted(_floats(row["Final sparsity"]))
        for modifier in pruning:  # pruning ends before QAT starts
            assert 0 <= modifier.start_epoch < modifier.end_epoch <= min(
                [q.start_epoch for q in quantization] or [manager.max_epochs])


@pytest.mark.parametrize("recipe", RECIPES)
def test_patterns_fit_the_model_and_share_pruned_matches_readme(recipe: str, manager_class, models) -> None:
    manager = manager_class.from_yaml(str(RECIPES_DIR / recipe))
    model = models[_model_for(recipe)]
    targets = _targets(manager, model)
    report = sparsity_report(model)
    expected = sum(layer.params * targets.get(layer.name, 0.0) for layer in report.layers) / report.conv_params

    cell = ROWS[recipe]["Conv weights pruned"]
    if cell.endswith("%"):
        assert expected == pytest.approx(float(cell[:-1]) / 100, abs=0.0006)
    else:  # transfer: whatever the checkpoint brings
        assert not targets
    if ".pruned" in recipe:
        assert expected >= 0.75
        assert max(targets.values()) >= 0.75
    if recipe != "sparseml_guide_example.yaml":  # project recipes keep the stem and Detect dense
        assert not [name for name in targets if name.startswith(("model.0.", "model.24."))]


@pytest.mark.parametrize("recipe", RECIPES)
def test_epoch_variables_scale_with_num_epochs(recipe: str, manager_class) -> None:
    """Overriding num_epochs stretches the whole schedule: every epoch is an eval() of it."""
    base = manager_class.from_yaml(str(RECIPES_DIR / recipe))
    doubled = manager_class.from_yaml(str(RECIPES_DIR / recipe),
                                      recipe_variables={"num_epochs": 2 * base.max_epochs})
    assert doubled.max_epochs == 2 * base.max_epochs

    def schedule(manager) -> list[tuple[str, float, float]]:
        return sorted((type(m).__name__, m.start_epoch, m.end_epoch) for m in manager.modifiers)

    for (name, start, end), (_, start2, end2) in zip(schedule(base), schedule(doubled)):
        assert start2 == pytest.approx(2 * start if start > 0 else start), name
        assert end2 == pytest.approx(2 * end if end > 0 else end), name


def test_the_scratch_recipe_is_pruned_quant_under_the_yolov5_learning_rate(manager_class) -> None:
    """yolov5n.pruned_quant_scratch.yaml has no learning-rate modifiers (train.py keeps YOLOv5's scheduler and
    warm-up, as in a dense run) and no distillation; its layer groups, sparsities and QAT are pruned_quant's."""
    scratch = manager_class.from_yaml(str(RECIPES_DIR / "yolov5n.pruned_quant_scratch.yaml"))
    base = manager_class.from_yaml(str(RECIPES_DIR / "yolov5n.pruned_quant.yaml"))
    assert not scratch.learning_rate_modifiers and base.learning_rate_modifiers
    assert not [m for m in scratch.modifiers if "Distillation" in type(m).__name__]
    assert sorted((m.params, m.final_sparsity, m.mask_type) for m in _pruning(scratch)) == sorted(
        (m.params, m.final_sparsity, m.mask_type) for m in _pruning(base))
    (quant,), (base_quant,) = _quantization(scratch), _quantization(base)
    assert (quant.ignore, quant.scheme, quant.scheme_overrides) == (
        base_quant.ignore, base_quant.scheme, base_quant.scheme_overrides)
    assert min(m.start_epoch for m in _pruning(scratch)) == 10  # dense first: magnitudes mean something by then


def test_pruning_modifiers_reach_the_readme_sparsity(manager_class, quiet) -> None:
    """The share computed from the targets is what SparseML's masks actually produce."""
    recipe = "demo.yaml"
    model = DetectionModel("yolov5n.yaml")
    manager = manager_class.from_yaml(str(RECIPES_DIR / recipe))
    manager_class(_pruning(manager)).apply(model, loggers=quiet)  # every modifier at its final state
    report = sparsity_report(model)
    assert report.conv_sparsity == pytest.approx(float(ROWS[recipe]["Conv weights pruned"][:-1]) / 100, abs=0.001)
    stem = next(layer for layer in report.layers if layer.name == "model.0.conv.weight")
    assert stem.zeros == 0


@pytest.mark.parametrize("recipe", QAT_RECIPES_ON_YOLOV5N)
def test_quantization_modifier_applies_to_yolov5n(recipe: str, manager_class, quiet) -> None:
    """ignore/scheme_overrides names exist in the model (SparseML is strict about them) and QAT runs a forward."""
    compat.apply_compat()
    model = DetectionModel("yolov5n.yaml")
    manager = manager_class.from_yaml(str(RECIPES_DIR / recipe))
    manager_class(_quantization(manager)).apply(model, loggers=quiet)
    report = sparsity_report(model)
    float_layers = {layer.name for layer in report.layers if not layer.quantized}
    if recipe == "sparseml_guide_example.yaml":
        assert report.quantized_layers == len(report.layers) == 60 and not float_layers
    else:  # the project recipes keep Detect's output convs (model.24, in float_modules) in floating point
        assert float_layers == {f"model.24.m.{i}.weight" for i in range(3)} and report.quantized_layers == 57
    assert report.fake_quantize_modules > 100
    if recipe == "sparseml_guide_example.yaml":
        # The guide's bare modifier also wraps Concat (a list input) in a QuantWrapper: only the structure is
        # checked here; running it is the training integration's business.
        return
    model.eval()
    with torch.no_grad():
        prediction = model(torch.rand(1, 3, 64, 64))[0]
    assert prediction.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 85)


def test_float_modules_variable_decides_what_stays_float(manager_class, quiet) -> None:
    """Without model.24 in float_modules, Detect's output convs are quantized too (the speed-first setting)."""
    compat.apply_compat()
    model = DetectionModel("yolov5n.yaml")
    variables = {"float_modules": ["SiLU", "Upsample", "Concat", "MaxPool2d"]}
    manager = manager_class.from_yaml(str(RECIPES_DIR / "yolov5n.pruned_quant.yaml"), recipe_variables=variables)
    manager_class(_quantization(manager)).apply(model, loggers=quiet)
    report = sparsity_report(model)
    assert report.quantized_layers == len(report.layers) == 60


@pytest.mark.parametrize("strategy", ["tensor", "channel"])
def test_weight_strategy_variable_sets_one_weight_scale_per_conv_or_per_output_channel(strategy: str, manager_class,
                                                                                     quiet) -> None:
    """weight_strategy: tensor (the default) gives each quantized conv one weight scale, channel one per output
    channel, for every quantized conv including the stem (which keeps its asymmetric uint8 input)."""
    compat.apply_compat()
    model = DetectionModel("yolov5n.yaml")
    variables = {"weight_strategy": strategy} if strategy == "channel" else None
    manager = manager_class.from_yaml(str(RECIPES_DIR / "yolov5n.quant.yaml"), recipe_variables=variables)
    manager_class(_quantization(manager)).apply(model, loggers=quiet)
    weight_quantizers = {name: module.weight_fake_quant for name, module in model.named_modules()
                         if hasattr(module, "weight_fake_quant")}
    expected = torch.per_channel_symmetric if strategy == "channel" else torch.per_tensor_symmetric
    assert len(weight_quantizers) == 57  # every conv but Detect's three (float_modules)
    assert {quantizer.qscheme for quantizer in weight_quantizers.values()} == {expected}
    stem = next(module for name, module in model.named_modules() if name.startswith("model.0.")
                and hasattr(module, "weight_fake_quant"))
    assert stem.weight_fake_quant.qscheme == expected


@pytest.mark.parametrize("recipe", ["yolov5n.pruned.yaml", "yolov5n.pruned_quant.yaml"])
def test_mask_type_variable_prunes_blocks_of_four_input_channels(recipe: str, manager_class, quiet) -> None:
    """--recipe-args '{"mask_type": [1, 4]}' zeroes 4 consecutive input channels together; the default does not."""
    from utils.sparsification.recipes import load_recipe

    def zero_blocks(mask_type: list | None) -> torch.Tensor:
        model = DetectionModel("yolov5n.yaml")
        manager = load_recipe(str(RECIPES_DIR / recipe), {"mask_type": mask_type} if mask_type else None)[0]
        manager_class(_pruning(manager)).apply(model, loggers=quiet)
        weight = model.model[8].m[0].cv2.conv.weight  # a heavy (P5) 3x3 conv
        out_channels, in_channels, height, width = weight.shape
        return (weight == 0).reshape(out_channels, in_channels // 4, 4, height, width)

    blocks = zero_blocks([1, 4])
    assert (blocks.all(dim=2) == blocks.any(dim=2)).all()  # each block of 4 is all zero or all kept
    assert blocks.float().mean() == pytest.approx(0.88, abs=0.01)  # the heavy layers' final sparsity
    unstructured = zero_blocks(None)
    assert (unstructured.all(dim=2) != unstructured.any(dim=2)).any()
    assert unstructured.float().mean() == pytest.approx(0.88, abs=0.01)
