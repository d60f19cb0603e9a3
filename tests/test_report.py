"""The sparsity report: exact counts on a model with known zeros, QAT detection, table/summary/dict, the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from models.yolo import DetectionModel
from utils.sparsification.report import plot_sparsity, sparsity_report


def _known_model() -> nn.Module:
    """conv: 4x3x3x3 = 108 weights, 54 zero; linear: 5x10 = 50 weights, 10 zero; biases 4 + 5, one zero."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(10, 5))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(0.5)
        model[0].weight.view(-1)[:54] = 0
        model[2].weight.view(-1)[:10] = 0
        model[2].bias[0] = 0
    return model


def test_known_zeros_give_exact_numbers() -> None:
    report = sparsity_report(_known_model())
    assert [(layer.name, layer.kind, layer.shape, layer.params, layer.zeros) for layer in report.layers] == [
        ("0.weight", "conv", (4, 3, 3, 3), 108, 54),
        ("2.weight", "linear", (5, 10), 50, 10),
    ]
    assert report.layers[0].sparsity == 0.5 and report.layers[1].sparsity == 0.2
    assert (report.conv_params, report.conv_zeros) == (158, 64)
    assert report.conv_sparsity == pytest.approx(64 / 158)
    assert (report.total_params, report.total_zeros) == (167, 65)
    assert report.global_sparsity == pytest.approx(65 / 167)
    assert report.quantized_layers == 0 and report.fake_quantize_modules == 0
    assert report.dense_size_mb == pytest.approx(167 * 4 / 1e6)
    # non-zero weights fp32 (54 + 40) plus the 9 biases fp32
    assert report.compressed_size_mb == pytest.approx((94 + 9) * 4 / 1e6)


def test_qat_modules_count_as_quantized_and_int8_in_the_estimate() -> None:
    qconfig = torch.ao.quantization.get_default_qat_qconfig("fbgemm")
    conv = torch.ao.nn.qat.Conv2d(3, 4, 3, qconfig=qconfig)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight.view(-1)[:27] = 0
        conv.bias.fill_(1.0)
    wrapped = torch.ao.quantization.QuantWrapper(nn.Conv2d(4, 2, 1))
    model = nn.Sequential(conv, wrapped, nn.Conv2d(2, 2, 1))
    report = sparsity_report(model)

    names = {layer.name: layer for layer in report.layers}
    assert names["0.weight"].quantized  # a torch.ao.nn.qat module with a weight fake-quant
    assert names["1.module.weight"].quantized  # under a QuantWrapper's .module
    assert not names["2.weight"].quantized
    assert report.quantized_layers == 2
    assert report.fake_quantize_modules == 1  # the qat conv's weight fake-quant (nothing was prepared)
    float_params = sum(p.numel() for p in model.parameters()) - 108 - 8 - 4
    expected = (81 * 1 + 8 * 1 + 4 * 4 + float_params * 4) / 1e6
    assert report.compressed_size_mb == pytest.approx(expected)


def test_table_summary_and_dict_on_yolov5n() -> None:
    model = DetectionModel("yolov5n.yaml")
    with torch.no_grad():
        model.model[8].cv1.conv.weight.zero_()
    report = sparsity_report(model)

    assert len(report.layers) == 60
    assert report.layers[0].name == "model.0.conv.weight" and report.layers[-1].name == "model.24.m.2.weight"
    zeroed = next(layer for layer in report.layers if layer.name == "model.8.cv1.conv.weight")
    assert zeroed.sparsity == 1.0

    table = report.table()
    assert len(table.splitlines()) == 60 + 6  # header, rule, rows, rule, two totals, summary
    assert "model.8.cv1.conv.weight" in table and "100.0%" in table
    short = report.table(max_rows=10)
    assert "... 50 more layers ..." in short and "model.24.m.2.weight" in short
    assert max(len(line) for line in short.splitlines()[:-1]) <= 100  # fits a log line (summary aside)

    line = report.summary_line()
    assert f"{report.conv_sparsity:.1%}" in line and "0 FakeQuantize" in line and "MB dense fp32" in line

    data = json.loads(json.dumps(report.to_dict()))
    # random initialisation can itself produce an exact 0.0 now and then, so count every layer's zeros
    assert data["conv_zeros"] == sum(layer.zeros for layer in report.layers) >= zeroed.zeros
    assert len(data["layers"]) == 60 and data["layers"][0]["shape"] == [16, 3, 6, 6]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    report = sparsity_report(_known_model())
    path = plot_sparsity(report, tmp_path / "plots" / "sparsity.png")
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
