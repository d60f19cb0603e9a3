"""Model YAMLs build the reference architectures, and official Ultralytics checkpoints load safely."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from models.common import Add, Bottleneck, Conv
from models.yolo import DetectionModel, parse_model
from utils.checkpoint import CheckpointError
from utils.weights import load_weights, read_weights_file


@pytest.mark.parametrize(("cfg", "params"), [("yolov5n.yaml", 1_872_157), ("yolov5s.yaml", 7_235_389)])
def test_parameter_counts_equal_the_reference_models(cfg, params):
    model = DetectionModel(cfg)
    assert sum(p.numel() for p in model.parameters()) == params


def test_strides_and_output_layout():
    model = DetectionModel("yolov5n.yaml", nc=3).eval()
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    with torch.no_grad():
        decoded, raw = model(torch.zeros(2, 3, 64, 96))
    assert decoded.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 8)
    assert [r.shape[2:4] for r in raw] == [(8, 12), (4, 6), (2, 3)]


def test_residual_add_is_a_module_of_its_own():
    bottleneck = Bottleneck(16, 16)
    assert isinstance(bottleneck.add_op, Add)
    x = torch.randn(1, 16, 8, 8)
    assert torch.allclose(bottleneck(x), x + bottleneck.cv2(bottleneck.cv1(x)))


def test_a_wrapped_layer_keeps_the_forward_working():
    """Routing lives on the model, so wrapping a layer (as quantization does) does not break the forward."""
    model = DetectionModel("yolov5n.yaml", nc=3).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)[0]
        model.model[2] = torch.nn.Sequential(model.model[2])
        after = model(x)[0]
    assert torch.equal(before, after)


def test_user_yaml_with_unknown_module_is_refused(tmp_path):
    cfg = {"nc": 1, "anchors": [[10, 13, 16, 30, 33, 23]], "backbone": [[-1, 1, "os.system", ["echo"]]], "head": []}
    with pytest.raises(ValueError, match="unknown module 'os.system'"):
        parse_model(cfg, ch=3)


def test_missing_cfg_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="yolov5n"):
        DetectionModel("yolov5q.yaml")


def test_official_checkpoint_reproduces_the_reference_output(official_fixture_dir):
    loaded = load_weights(official_fixture_dir / "yolov5n-v7.0.pt")
    assert loaded.source == "ultralytics"
    assert sum(p.numel() for p in loaded.model.parameters()) == 1_872_157
    image = torch.from_numpy(np.load(official_fixture_dir / "input-1x3x320x320.npy"))
    expected = np.load(official_fixture_dir / "yolov5n-v7.0-output.npy")
    with torch.no_grad():
        output = loaded.model(image)[0].numpy()
    assert output.shape == expected.shape == (1, 6300, 85)
    assert np.abs(output - expected).max() < 1e-3


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Exploit(), "epoch": -1}, path)
    with pytest.raises(CheckpointError, match="allow-list"):
        read_weights_file(path)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", pickle.dumps([1, 2, 3])[:5]])
def test_damaged_or_foreign_weight_files_get_a_clear_error(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="weights.pt"):
        read_weights_file(path)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pt"):
        read_weights_file(tmp_path / "nothing.pt")


def _activations(model: torch.nn.Module) -> set[str]:
    return {type(m.act).__name__ for m in model.modules() if isinstance(m, Conv)}


def test_the_yaml_activation_key_sets_every_conv_activation_as_in_ultralytics():
    """``activation: nn.ReLU()`` (the key Ultralytics reads) swaps SiLU everywhere; the parameters do not change."""
    relu = DetectionModel("yolov5n-relu.yaml", nc=6)
    silu = DetectionModel("yolov5n.yaml", nc=6)
    assert _activations(relu) == {"ReLU"} and _activations(silu) == {"SiLU"}
    assert relu.state_dict().keys() == silu.state_dict().keys()  # SiLU weights transfer as they are
    leaky = DetectionModel({**silu.yaml, "activation": "nn.LeakyReLU(0.1)"})
    assert {m.negative_slope for m in leaky.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.1}


@pytest.mark.parametrize("text", ["os.system('echo')", "nn.ReLU(0.5)", "nn.GELU()", "ReLU"])
def test_an_activation_the_model_cannot_build_is_refused_with_the_choices(text):
    cfg = {**DetectionModel("yolov5n.yaml").yaml, "activation": text}
    with pytest.raises(ValueError, match=r"not supported; use one of nn\.SiLU\(\), nn\.ReLU\(\)"):
        DetectionModel(cfg)


def test_an_official_checkpoint_of_a_leaky_relu_model_loads_with_its_activation(tmp_path):
    """Ultralytics pickles the model; a YAML with ``activation`` pickles LeakyReLU modules, which the allow-list
    takes."""
    model = DetectionModel({**DetectionModel("yolov5n.yaml", nc=2).yaml, "activation": "nn.LeakyReLU(0.1)"}).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)[0]
    for bottleneck in (m for m in model.modules() if isinstance(m, Bottleneck)):
        del bottleneck.add_op  # Ultralytics' Bottleneck adds inline: an official pickle has no Add module
    torch.save({"model": model, "epoch": -1}, tmp_path / "leaky.pt")
    loaded = load_weights(tmp_path / "leaky.pt")
    assert loaded.source == "ultralytics" and _activations(loaded.model) == {"LeakyReLU"}
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x)[0], expected)
