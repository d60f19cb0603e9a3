"""The pruning sensitivity analysis: which layers it measures, that it measures one pruned layer at a time and
restores it, how it lays out sparsities to reach a target, and that the recipe it writes is a real SparseML recipe
whose masks reach that target."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from models.yolo import DetectionModel
from utils.checkpoint import load_checkpoint
from utils.sparsification.report import sparsity_report
from utils.sparsification.sensitivity import (
    LayerSensitivity,
    conv_macs,
    layer_sensitivities,
    layout_recipe,
    magnitude_mask,
    prunable_conv_weights,
    sparsity_layout,
)
from utils.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "recipes" / "yolov5n.pruned_quant.yaml"


@pytest.fixture(scope="module")
def yolov5n() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel("yolov5n.yaml").eval()


def conv_total(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_the_analysed_layers_are_the_recipes_prunable_convs_not_the_stem_or_detect(yolov5n) -> None:
    names = [name for name, _ in prunable_conv_weights(yolov5n)]
    pattern = re.compile(r"^model\.([1-9]|1[0-9]|2[0-3])\..*conv\.weight$")  # the pruned_quant recipe's groups
    expected = [name for name, p in yolov5n.named_parameters() if pattern.match(name) and p.dim() == 4]
    assert names == expected
    assert not any(name.startswith(("model.0.", "model.24.")) for name in names)


def test_magnitude_mask_zeroes_the_smallest_weights() -> None:
    weight = torch.tensor([[0.5, -0.1], [2.0, -0.05]])
    mask = magnitude_mask(weight, 0.5)
    assert mask.tolist() == [[True, False], [True, False]]
    assert magnitude_mask(weight, 0.0).all()


def test_each_layer_is_measured_alone_at_each_level_and_restored(yolov5n, monkeypatch) -> None:
    import utils.sparsification.sensitivity as sensitivity

    before = {name: p.detach().clone() for name, p in yolov5n.named_parameters()}
    layers = prunable_conv_weights(yolov5n)[:3]
    monkeypatch.setattr(sensitivity, "prunable_conv_weights", lambda model: layers)  # three layers keep it short
    zeros_seen = []

    def evaluate() -> float:  # stands in for val: records which weights are zero when it is called
        zeros = {name: int((p == 0).sum()) for name, p in layers}
        zeros_seen.append(zeros)
        return 1.0 - sum(zeros.values()) / 1e6

    baseline, results = layer_sensitivities(yolov5n, evaluate, [0.5, 0.9])
    assert baseline == 1.0 and [r.name for r in results] == [name for name, _ in layers]
    assert len(zeros_seen) == 1 + 2 * len(layers)
    for index, (name, parameter) in enumerate(layers):
        for level_index, level in enumerate((0.5, 0.9)):
            seen = zeros_seen[1 + 2 * index + level_index]
            assert seen[name] == round(level * parameter.numel())
            assert all(count == 0 for other, count in seen.items() if other != name)
        assert results[index].maps[0.9] < results[index].maps[0.5] < baseline
    for name, parameter in yolov5n.named_parameters():
        assert torch.equal(parameter, before[name]), f"{name} was not restored"


def test_layout_prunes_the_tolerant_layers_hardest_and_reaches_the_target() -> None:
    layers = [LayerSensitivity("big_tolerant", 1000, {0.5: 0.50, 0.9: 0.49}),
              LayerSensitivity("big_sensitive", 1000, {0.5: 0.45, 0.9: 0.20}),
              LayerSensitivity("small", 100, {0.5: 0.50, 0.9: 0.50})]
    layout = sparsity_layout(0.5, layers, target=0.6, total_conv_weights=2200)
    assert layout == {"big_tolerant": 0.9, "big_sensitive": 0.5, "small": 0.9}
    assert sum(layer.numel * layout[layer.name] for layer in layers) >= 0.6 * 2200


def test_multiply_accumulates_weigh_each_weight_by_its_output_positions(yolov5n) -> None:
    macs = conv_macs(yolov5n, 64)
    weights = dict(yolov5n.named_parameters())
    assert set(macs) == {name for name, _ in yolov5n.named_parameters() if name.endswith("conv.weight")} | {
        name for name in weights if re.match(r"model\.24\.m\.\d\.weight$", name)}
    assert macs["model.1.conv.weight"] == weights["model.1.conv.weight"].numel() * 16 * 16  # stride 4: 64 -> 16
    assert macs["model.7.conv.weight"] == weights["model.7.conv.weight"].numel() * 2 * 2  # stride 32: P5
    assert not any(module._forward_hooks for module in yolov5n.modules())  # the counting hooks are removed


def test_a_layout_by_multiply_accumulates_prunes_where_the_time_is() -> None:
    """Two layers alike in size and in what pruning costs them, one at 16x the resolution: counted by weights the
    cheaper loss wins; counted by multiply-accumulates (a layout for speed) the high-resolution layer is pruned."""
    layers = [LayerSensitivity("early", 100, {0.0: 0.5, 0.5: 0.48}),
              LayerSensitivity("late", 100, {0.0: 0.5, 0.5: 0.49})]
    assert sparsity_layout(0.5, layers, target=0.25, total_conv_weights=200) == {"early": 0.0, "late": 0.5}
    macs = {"early": 1600, "late": 100}
    assert sparsity_layout(0.5, layers, target=0.45, total_conv_weights=1700, sizes=macs) == {"early": 0.5,
                                                                                              "late": 0.0}


def test_layout_counts_a_noisy_gain_as_no_gain_and_refuses_an_unreachable_target() -> None:
    # at 0.9 the first layer measured *higher* than at 0.5 (noise): it costs what 0.5 cost, not less
    layers = [LayerSensitivity("a", 1000, {0.5: 0.40, 0.9: 0.45}), LayerSensitivity("b", 1000, {0.5: 0.50, 0.9: 0.45})]
    assert sparsity_layout(0.5, layers, target=0.7, total_conv_weights=2000) == {"a": 0.9, "b": 0.5}
    with pytest.raises(ValueError, match="add a higher level"):
        sparsity_layout(0.5, layers, target=0.95, total_conv_weights=2000)


def test_the_written_recipe_is_the_template_with_per_layer_sparsities_that_sparseml_applies(
        yolov5n, tmp_path, monkeypatch) -> None:
    from sparseml.pytorch.utils import LoggerManager

    from utils.sparsification.checks import check_recipe_against_model
    from utils.sparsification.recipes import load_recipe

    names = [name for name, _ in prunable_conv_weights(yolov5n)]
    layout = {name: (0.95 if index % 3 == 0 else 0.6) for index, name in enumerate(names)}
    text = layout_recipe(TEMPLATE.read_text(encoding="utf-8"), layout, "# generated for a test")
    assert text.startswith("# generated for a test\n")
    assert "final_sparsity_heavy" not in text.split("version:", 1)[1]  # the groups' variables went with them
    assert "!QuantizationModifier" in text and "!PerLayerDistillationModifier" in text
    recipe = tmp_path / "layout.yaml"
    recipe.write_text(text, encoding="utf-8")

    monkeypatch.chdir(tmp_path)  # SparseML's modifier logs
    manager, _, _ = load_recipe(str(recipe), {"num_epochs": 10})
    model = DetectionModel("yolov5n.yaml")
    check_recipe_against_model(manager, model, str(recipe))
    pruning = [m for m in manager.modifiers if type(m).__name__ == "GMPruningModifier"]
    assert sorted(m.final_sparsity for m in pruning) == [0.6, 0.95]
    type(manager)(pruning).apply(model, loggers=LoggerManager(log_python=False))
    expected = sum(p.numel() * layout[name] for name, p in prunable_conv_weights(model)) / conv_total(model)
    assert sparsity_report(model).conv_sparsity == pytest.approx(expected, abs=0.002)


def test_level_zero_is_the_baseline_and_known_levels_are_not_measured_again(yolov5n, monkeypatch) -> None:
    import utils.sparsification.sensitivity as sensitivity

    layers = prunable_conv_weights(yolov5n)[:2]
    monkeypatch.setattr(sensitivity, "prunable_conv_weights", lambda model: layers)
    calls = []

    def evaluate() -> float:
        calls.append(sum(int((p == 0).sum()) for _, p in layers))
        return 0.5 - calls[-1] / 1e7

    known = {layers[0][0]: {0.5: 0.123}}  # an earlier analysis measured the first layer at 0.5
    baseline, results = layer_sensitivities(yolov5n, evaluate, [0.0, 0.5], known=known)
    assert len(calls) == 2  # the baseline and the second layer at 0.5; nothing at level 0, nothing known twice
    assert results[0].maps == {0.0: baseline, 0.5: 0.123}
    assert results[1].maps[0.0] == baseline and results[1].maps[0.5] < baseline


def test_a_step_that_a_later_larger_step_made_unnecessary_is_taken_back() -> None:
    # per zeroed weight the small layer is cheaper, so the greedy pass prunes it first; the big layer alone then
    # reaches the target, and the small layer's loss buys nothing
    layers = [LayerSensitivity("small", 100, {0.0: 0.5, 0.9: 0.491}),
              LayerSensitivity("big", 1000, {0.0: 0.5, 0.9: 0.32})]
    assert sparsity_layout(0.5, layers, target=850 / 1100, total_conv_weights=1100) == {"small": 0.0, "big": 0.9}


def test_a_layer_at_level_zero_stays_dense_and_gets_no_modifier() -> None:
    layers = [LayerSensitivity("model.1.conv.weight", 100, {0.0: 0.5, 0.5: 0.40, 0.9: 0.30}),  # small, sensitive
              LayerSensitivity("model.8.cv1.conv.weight", 1000, {0.0: 0.5, 0.5: 0.50, 0.9: 0.49})]
    layout = sparsity_layout(0.5, layers, target=0.8, total_conv_weights=1120)
    assert layout == {"model.1.conv.weight": 0.0, "model.8.cv1.conv.weight": 0.9}
    text = layout_recipe(TEMPLATE.read_text(encoding="utf-8"), layout, "#")
    assert "'model.8.cv1.conv.weight'" in text and "model.1.conv.weight" not in text
    assert "final_sparsity: 0.0" not in text


def test_layout_recipe_needs_a_pruning_block_to_replace() -> None:
    with pytest.raises(ValueError, match="pruning_modifiers"):
        layout_recipe("version: 1.1.0\nnum_epochs: 10\n", {"model.1.conv.weight": 0.5}, "#")


@pytest.mark.slow
def test_sensitivity_script_measures_a_trained_model_and_writes_a_recipe_train_accepts(
        dense_run, shapes_dataset, tmp_path, monkeypatch) -> None:
    import sensitivity

    opt = sensitivity.parse_opt(["--weights", str(dense_run), "--data", str(shapes_dataset), "--imgsz", "64",
                                 "--batch-size", "4", "--workers", "0", "--levels", "0.9", "--target", "0.6",
                                 "--project", str(tmp_path), "--name", "exp"])
    recipe = sensitivity.main(opt)
    result = json.loads((tmp_path / "exp" / "sensitivity.json").read_text(encoding="utf-8"))
    assert recipe == tmp_path / "exp" / "yolov5n.pruned_quant.sensitivity.yaml" and recipe.is_file()
    assert len(result["layers"]) == len(prunable_conv_weights(DetectionModel("yolov5n.yaml")))
    assert all(set(layer["maps"]) == {"0.9"} for layer in result["layers"])  # one level keeps the test short
    assert result["conv_sparsity"] >= 0.6

    import train

    train.run(weights=str(dense_run), data=str(shapes_dataset), imgsz=64, batch_size=4, workers=0, noplots=True,
              project=str(tmp_path), name="sparse", sparsification_recipe=str(recipe),
              recipe_args=json.dumps({"num_epochs": 2, "quantization_epochs": 1, "pruning_end_epoch": 0.5}))
    last = load_checkpoint(tmp_path / "sparse" / "weights" / "last.pt")
    assert last["sparsification"]["is_quantized"]
    assert sparsity_report(load_weights(tmp_path / "sparse" / "weights" / "last.pt").model).conv_sparsity >= 0.6

    # a new target with a dense option, from the stored measurements: only the baseline is evaluated again
    evaluations = []
    real_run = sensitivity.val.run

    def counted_run(*args, **kwargs):
        evaluations.append(1)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(sensitivity.val, "run", counted_run)
    again = sensitivity.main(sensitivity.parse_opt(
        ["--weights", str(dense_run), "--data", str(shapes_dataset), "--imgsz", "64", "--batch-size", "4",
         "--workers", "0", "--levels", "0", "0.9", "--target", "0.5", "--project", str(tmp_path), "--name",
         "again", "--reuse", str(tmp_path / "exp" / "sensitivity.json")]))
    assert len(evaluations) == 1 and again.is_file()
    redone = json.loads((tmp_path / "again" / "sensitivity.json").read_text(encoding="utf-8"))
    assert [layer["maps"]["0.9"] for layer in redone["layers"]] == [layer["maps"]["0.9"] for layer in result["layers"]]
    assert 0.0 in {layer["sparsity"] for layer in redone["layers"]} and redone["conv_sparsity"] >= 0.5
    # a layout for speed: the target counts multiply-accumulates at --imgsz, and both shares are recorded
    sensitivity.main(sensitivity.parse_opt(
        ["--weights", str(dense_run), "--data", str(shapes_dataset), "--imgsz", "64", "--batch-size", "4",
         "--workers", "0", "--levels", "0", "0.9", "--target", "0.5", "--by", "macs", "--project", str(tmp_path),
         "--name", "macs", "--reuse", str(tmp_path / "exp" / "sensitivity.json")]))
    by_macs = json.loads((tmp_path / "macs" / "sensitivity.json").read_text(encoding="utf-8"))
    assert by_macs["by"] == "macs" and redone["by"] == "weights" and by_macs["mac_sparsity"] >= 0.5
    # its zeros sit where the multiply-accumulates are: a larger share of them than of the weights, more so than
    # in the layout by weights
    assert by_macs["mac_sparsity"] - by_macs["conv_sparsity"] > redone["mac_sparsity"] - redone["conv_sparsity"]
    assert "of the conv multiply-accumulates at 64 px" in (tmp_path / "macs" /
                                                            "yolov5n.pruned_quant.sensitivity.yaml").read_text()


def test_sensitivity_refuses_a_missing_template_by_name(tmp_path, capsys) -> None:
    import sensitivity

    with pytest.raises(SystemExit):
        sensitivity.parse_opt(["--weights", "w.pt", "--recipe", str(tmp_path / "nope.yaml")])
    assert "nope.yaml: no such file" in capsys.readouterr().err


def test_reuse_refuses_measurements_of_other_weights(tmp_path) -> None:
    import sensitivity

    weights, other = tmp_path / "best.pt", tmp_path / "other.pt"
    weights.write_bytes(b"model a")
    other.write_bytes(b"model b")
    record = tmp_path / "sensitivity.json"
    record.write_text(json.dumps({"weights": str(other), "weights_sha256": sensitivity.file_digest(other),
                                  "data": "d.yaml", "imgsz": 64, "layers": []}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"sensitivity\.json: measured with weights .*other\.pt"):
        sensitivity.reused_measurements(record, str(weights), "d.yaml", 64)
    with pytest.raises(ValueError, match="--imgsz 64"):
        sensitivity.reused_measurements(record, str(other), "d.yaml", 128)
    assert sensitivity.reused_measurements(record, str(other), "d.yaml", 64) == {}
    record.write_text("{\"layers\": []}", encoding="utf-8")  # e.g. another tool's JSON
    with pytest.raises(ValueError, match="not a sensitivity.json written by sensitivity.py"):
        sensitivity.reused_measurements(record, str(other), "d.yaml", 64)
