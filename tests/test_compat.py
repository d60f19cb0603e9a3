"""The SparseML 1.8.0 compatibility fixes: each one is needed (the original behaviour fails) and works once applied."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from utils.sparsification import compat


@pytest.fixture(scope="module")
def sparseml_modules():
    compat.apply_compat()
    import sparseml.optim.modifier as optim_modifier
    import sparseml.pytorch.sparsification.quantization.quantization_scheme as quantization_scheme
    from sparseml.pytorch.optim import ScheduledModifierManager

    return quantization_scheme, optim_modifier, ScheduledModifierManager


def test_apply_compat_is_idempotent(sparseml_modules):
    quantization_scheme, optim_modifier, _ = sparseml_modules
    patched = quantization_scheme._get_qconfig, optim_modifier.BaseModifier.props
    compat.apply_compat()
    compat._patch_qconfig()
    compat._patch_recipe_serialization()
    assert (quantization_scheme._get_qconfig, optim_modifier.BaseModifier.props) == patched


def test_torch_qconfig_rejects_sparseml_scheme_attribute_and_the_shim_accepts_it(sparseml_modules):
    quantization_scheme, _, _ = sparseml_modules
    scheme = quantization_scheme.QuantizationScheme()
    original = quantization_scheme._get_qconfig.__wrapped__
    with pytest.raises(AttributeError):
        original(scheme.input_activations, scheme.weights).quantization_scheme = scheme

    qconfig = scheme.get_qconfig()  # goes through the patched _get_qconfig
    assert isinstance(qconfig, torch.ao.quantization.QConfig)
    assert qconfig.quantization_scheme is scheme
    assert copy.deepcopy(qconfig).quantization_scheme == scheme
    assert pickle.loads(pickle.dumps(qconfig)).activation is not None


def _tiny_qat_step(manager_class) -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).train()
    manager = manager_class.from_yaml("version: 1.1.0\nmodifiers:\n  - !QuantizationModifier\n    start_epoch: 0.0\n")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    from utils.sparsification.structure import quiet_loggers

    wrapped = manager.modify(model, optimizer, steps_per_epoch=1, epoch=0.0, loggers=quiet_loggers())
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    wrapped.step()
    return model


def test_qat_fails_without_the_qconfig_shim_and_runs_with_it(sparseml_modules, monkeypatch):
    quantization_scheme, _, manager_class = sparseml_modules
    with monkeypatch.context() as patch:
        patch.setattr(quantization_scheme, "_get_qconfig", quantization_scheme._get_qconfig.__wrapped__)
        with pytest.raises(AttributeError, match="quantization_scheme"):
            _tiny_qat_step(manager_class)
    model = _tiny_qat_step(manager_class)
    assert any(isinstance(m, torch.ao.quantization.FakeQuantizeBase) for m in model.modules())


RECIPE = r"""
version: 1.1.0
modifiers:
  - !GMPruningModifier
    params: ['re:^model\.([1-9]|1[0-9])\..*conv\.weight$', 'model.0.conv.weight']
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
"""
EXPECTED = [r"re:^model\.([1-9]|1[0-9])\..*conv\.weight$", "model.0.conv.weight"]


def test_regex_params_survive_recipe_serialization(sparseml_modules, monkeypatch):
    _, optim_modifier, manager_class = sparseml_modules
    manager = manager_class.from_yaml(RECIPE)
    assert manager.pruning_modifiers[0].params == EXPECTED
    once = manager_class.from_yaml(str(manager))
    twice = manager_class.from_yaml(str(once))
    assert twice.pruning_modifiers[0].params == EXPECTED
    assert str(twice) == str(manager)

    monkeypatch.setattr(optim_modifier.BaseModifier, "props", optim_modifier.BaseModifier.props.__wrapped__)
    broken = manager_class.from_yaml(str(manager))
    assert broken.pruning_modifiers[0].params[0] == EXPECTED[0].replace("\\", "\\\\")  # SparseML's own writer


def test_analytics_are_switched_off(sparseml_modules, monkeypatch):
    import sparseml.analytics

    client = sparseml.analytics.sparseml_analytics
    monkeypatch.delenv("NM_DISABLE_ANALYTICS", raising=False)
    monkeypatch.setattr(client, "_disabled", False)
    compat._disable_analytics()
    assert client._disabled
    assert compat.os.environ["NM_DISABLE_ANALYTICS"] == "1"


def test_user_choice_on_analytics_is_kept(monkeypatch):
    monkeypatch.setenv("NM_DISABLE_ANALYTICS", "")
    compat._disable_analytics()
    assert compat.os.environ["NM_DISABLE_ANALYTICS"] == ""


@pytest.mark.parametrize("verbose", [False, True])
def test_sparseml_lines_print_once_and_its_info_only_when_verbose(verbose: bool) -> None:
    """sparseml's import gives its logger a console handler of its own, so each line printed twice (once through the
    root handler the script set up); after apply_compat it prints once, and INFO only with --verbose."""
    import subprocess
    import sys
    from pathlib import Path

    code = (f"import logging, sparseml.log\nfrom utils.logs import setup_script_logging\n"
            f"setup_script_logging(verbose={verbose}, force=True)\n"
            "logging.getLogger('sparseml.x').warning('before-warn')\n"
            "from utils.sparsification import compat\ncompat.apply_compat()\n"
            "logging.getLogger('sparseml.x').info('after-info')\nlogging.getLogger('sparseml.x').warning('after-warn')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-2000:]
    assert output.count("before-warn") == 2  # the fault: sparseml's handler and the root's
    assert output.count("after-warn") == 1 and output.count("after-info") == (1 if verbose else 0)
