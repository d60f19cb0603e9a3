"""Neural Magic / SparseZoo sparse checkpoints (a state dict + yaml + the recipe that shaped it) load, rebuild
exactly, fine-tune holding their zeros and their QAT, and export like this project's own checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import detect
import export
import train
from models.yolo import DetectionModel
from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from utils.inference import load_backend
from utils.sparsification import zoo
from utils.sparsification.structure import has_quantization, named_parameters_canonical, unpack_mask
from utils.sparsification.teacher import load_teacher
from utils.weights import LoadedWeights, load_weights, reinitialised_quantizer_scales

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "neuralmagic"
NM_FILE = FIXTURES / "yolov5n-nm-pruned75_quant.pt"
STUB = "zoo:cv/detection/yolov5-n/pytorch/ultralytics/coco/pruned75_quant-none"

PRUNING = """version: 1.1.0
modifiers:
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.75
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
"""
# The fork's QAT settings (the legacy QuantizationModifier), starting after the pruning.
QUANTIZATION = """  - !QuantizationModifier
    start_epoch: 1.0
    submodules: ['model']
    custom_quantizable_module_types: ['SiLU']
    exclude_module_types: ['SiLU']
    quantize_conv_activations: False
"""


@pytest.fixture(scope="module")
def nm_file() -> Path:
    if not NM_FILE.exists():
        pytest.skip(f"{FIXTURES} is absent: rebuilding a pruned + quantized Neural Magic checkpoint (its reference "
                    f"output, zoo: mirror, sparse transfer and export) goes untested")
    return NM_FILE


@pytest.fixture(scope="module")
def nm_loaded(nm_file: Path) -> LoadedWeights:
    return load_weights(nm_file)


def _fixture_input_and_output() -> tuple[torch.Tensor, np.ndarray]:
    image = torch.from_numpy(np.load(FIXTURES / "yolov5n-nm-pruned75_quant-input.npy"))
    return image, np.load(FIXTURES / "yolov5n-nm-pruned75_quant-output.npy")


def test_the_reference_file_reproduces_its_output_and_becomes_a_project_checkpoint(nm_file, nm_loaded, tmp_path):
    loaded = nm_loaded
    assert loaded.source == "neuralmagic" and loaded.model.nc == 3 and has_quantization(loaded.model)
    image, expected = _fixture_input_and_output()
    with torch.no_grad():
        output = loaded.model(image)[0].numpy()
    assert output.shape == expected.shape == (1, 1575, 8)
    assert np.abs(output - expected).max() < 1e-5
    state = loaded.checkpoint["sparsification"]
    assert state["phase"] == "pruned_quantized" and state["is_quantized"]
    assert state["sparsity"] == pytest.approx(0.75, abs=0.01)
    (stage,) = state["stages"]
    assert stage["recipe"] == torch.load(nm_file, weights_only=True)["checkpoint_recipe"]
    assert stage["applied_epoch"] == float("inf") and stage["epoch"] == -1 and stage["final"]
    # Saved, it is one of ours: val, export and --resume read it through the project's own rebuild.
    converted = save_checkpoint(loaded.checkpoint, tmp_path / "converted.pt")
    again = load_weights(converted)
    assert again.source == "project"
    with torch.no_grad():
        assert np.abs(again.model(image)[0].numpy() - expected).max() < 1e-5


@pytest.fixture(scope="module")
def pruned_model() -> DetectionModel:
    """yolov5n (3 classes) with non-trivial BatchNorm statistics and 75% of every conv weight zero, as GMP leaves it."""
    torch.manual_seed(0)
    model = DetectionModel("yolov5n.yaml", nc=3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, torch.nn.Conv2d):
                weight = module.weight
                threshold = weight.abs().flatten().kthvalue(int(0.75 * weight.numel())).values
                weight[weight.abs() <= threshold] = 0
    return model.eval()


def _write_nm_file(path: Path, model: DetectionModel, **recipes) -> Path:
    """A file laid out as the fork writes it: a state dict (the fork's names), yaml, recipe keys, epoch."""
    state = {key: value for key, value in model.state_dict().items()}  # pruned-only: add_node has no entries
    checkpoint = {"epoch": -1, "best_fitness": None, "model": state, "ema": None, "updates": None, "optimizer": None,
                  "yaml": dict(model.yaml), "checkpoint_recipe": None, "intermediate_recipe": None, "nc": model.nc,
                  "hyp": {"lr0": 0.01}, "opt": {}, "date": "2026-12-04T00:00:00", "git": None, **recipes}
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("saved", ["final", "mid-training"])
def test_a_pruned_only_file_loads_with_its_masks_and_serves_as_a_teacher(tmp_path, pruned_model, saved):
    """Final: ``checkpoint_recipe`` applies in full. Mid-training: ``intermediate_recipe`` applies at ``epoch`` (0:
    before its QAT starts, so the file has no quantization entries and must not get any)."""
    model = pruned_model
    recipes = ({"checkpoint_recipe": PRUNING} if saved == "final"
               else {"intermediate_recipe": PRUNING + QUANTIZATION, "epoch": 0})
    path = _write_nm_file(tmp_path / "pruned.pt", model, **recipes)
    loaded = load_weights(path)
    assert loaded.source == "neuralmagic" and not has_quantization(loaded.model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x)[0], model(x)[0], atol=1e-5)
    state = loaded.checkpoint["sparsification"]
    assert state["phase"] == "pruned" and state["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert [stage["applied_epoch"] for stage in state["stages"]] == [float("inf") if saved == "final" else 0.0]
    weights = named_parameters_canonical(model)
    assert len(state["masks"]) == 60  # every prunable conv of yolov5n, the Detect convs included
    for name, packed in state["masks"].items():
        assert torch.equal(unpack_mask(packed), weights[name].ne(0)), name
    if saved == "final":  # --teacher-weights reads it too (a float file: QAT files are refused as teachers)
        teacher = load_teacher(str(path), model, torch.device("cpu"))
        assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize(("change", "message"), [
    ({"checkpoint_recipe": PRUNING + QUANTIZATION},
     r"layer model\.0: the recipe's structure quantizes this layer but the file has no quantization entries"),
    ({"nc": 4}, r"layer model\.24\.m\.0: 'model\.24\.m\.0\.bias' has shape \(24,\) in the file and \(27,\)"),
    ({"checkpoint_recipe": "version: 1.1.0\nmodifiers:\n  - !NoSuchModifier\n    start_epoch: 0\n"},
     r"its recipe cannot be applied"),
], ids=["quantizing-recipe-on-float-weights", "yaml-with-another-class-count", "unknown-modifier"])
def test_a_file_whose_structure_cannot_be_rebuilt_is_refused_naming_the_layer(tmp_path, pruned_model, change,
                                                                             message):
    path = _write_nm_file(tmp_path / "bad.pt", pruned_model, checkpoint_recipe=PRUNING)
    checkpoint = torch.load(path, weights_only=True)
    if "nc" in change:  # a yaml that does not describe the weights
        checkpoint["yaml"]["nc"] = change["nc"]
    else:
        checkpoint.update(change)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=message) as error:
        load_weights(path)
    assert "bad.pt" in str(error.value)


def test_a_zoo_stub_mirror_holding_a_neural_magic_file_loads_for_val_and_detect(nm_file, tmp_path, monkeypatch):
    folder = tmp_path / zoo.parse_stub(STUB).mirror_folder / "training"
    folder.mkdir(parents=True)
    shutil.copy(nm_file, folder / "model.pt")
    monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(tmp_path))
    assert detect.parse_opt(["--weights", STUB, "--source", str(tmp_path)]).weights == STUB
    backend = load_backend(STUB, device="cpu")  # what val.py and detect.py call
    assert backend.is_quantized and backend.names == ["0", "1", "2"]
    image, expected = _fixture_input_and_output()
    assert np.abs(backend.forward(image).numpy() - expected).max() < 1e-5


def test_reinitialised_per_channel_weight_scales_take_the_source_grid():
    source = {"model.24.m.0.module.weight_fake_quant.scale": torch.tensor([0.01, 0.03]),
              "model.24.m.0.module.weight_fake_quant.zero_point": torch.tensor([0, 0], dtype=torch.int32),
              "model.24.m.0.module.weight": torch.zeros(2, 4, 1, 1),
              "model.1.conv.module.weight_fake_quant.scale": torch.tensor([0.5])}
    target = {"model.24.m.0.module.weight_fake_quant.scale": torch.ones(3),
              "model.24.m.0.module.weight_fake_quant.zero_point": torch.ones(3, dtype=torch.int32),
              "model.24.m.0.module.weight": torch.zeros(3, 4, 1, 1),
              "model.1.conv.module.weight_fake_quant.scale": torch.ones(1)}
    transferred = {"model.1.conv.module.weight_fake_quant.scale": source["model.1.conv.module.weight_fake_quant.scale"]}
    filled = reinitialised_quantizer_scales(source, target, transferred)
    assert sorted(filled) == ["model.24.m.0.module.weight_fake_quant.scale",
                              "model.24.m.0.module.weight_fake_quant.zero_point"]
    assert torch.equal(filled["model.24.m.0.module.weight_fake_quant.scale"], torch.full((3,), 0.03))
    assert torch.equal(filled["model.24.m.0.module.weight_fake_quant.zero_point"], torch.zeros(3, dtype=torch.int32))


@pytest.mark.slow
def test_sparse_transfer_to_six_classes_holds_zeros_continues_qat_and_exports(nm_file, nm_loaded, tmp_path,
                                                                              shapes_dataset):
    train.run(weights=str(nm_file), data=str(shapes_dataset), imgsz=64, batch_size=8, workers=0, noplots=True,
              epochs=1, project=str(tmp_path / "runs"), name="transfer",
              hyp=str(train.ROOT / "data" / "hyps" / "hyp.finetune.yaml"),
              sparsification_recipe=str(train.ROOT / "recipes" / "transfer_quantized.yaml"))
    last = tmp_path / "runs" / "transfer" / "weights" / "last.pt"
    checkpoint = load_checkpoint(last)  # one of ours
    state = checkpoint["sparsification"]
    assert [stage["phase"] for stage in state["stages"]] == ["pruned_quantized", "pruned_quantized"]
    assert state["stages"][0]["origin"] == "neuralmagic checkpoint_recipe"

    start, end = nm_loaded.checkpoint["model"], checkpoint["model"]  # the same QAT structure, the same names
    moved = 0
    for name, before in start.items():
        if before.dim() != 4 or name.startswith("model.24."):  # conv weights; the new head starts from scratch
            continue
        after = end[name]
        assert bool((after[before == 0] == 0).all()), f"{name}: a zero of the start regrew"
        moved += int(not torch.equal(after, before))
    assert moved > 0  # QAT fine-tuning changed the weights
    assert end["model.24.m.0.module.weight"].shape[0] == 3 * (6 + 5)  # the new head: re-initialised for 6 classes
    assert torch.equal(end["model.24.m.0.module.weight_fake_quant.scale"],  # the file's head grid (see recipes/README)
                       start["model.24.m.0.module.weight_fake_quant.scale"])

    # export.py rebuilds it as one of ours and holds the INT8 file to its documented tolerances
    report = export.export_onnx(last, imgsz=64, device="cpu", int8_format="integer")
    assert report.quantized and report.check.passed and report.check.zeros_kept, report.check.line()


def test_training_a_quantized_file_without_a_recipe_is_refused(nm_file, tmp_path, shapes_dataset):
    """Without a recipe the new checkpoints would not record the QAT structure, and could not be loaded."""
    with pytest.raises(SystemExit) as exit_info:
        train.run(weights=str(nm_file), data=str(shapes_dataset), imgsz=64, batch_size=8, workers=0, noplots=True,
                  epochs=1, project=str(tmp_path / "runs"), name="plain")
    assert "pass --recipe recipes/transfer_quantized.yaml" in str(exit_info.value.__cause__)
