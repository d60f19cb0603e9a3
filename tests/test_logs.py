"""Entry scripts' log setup: known-harmless library warnings are filtered, the project's own are not."""

from __future__ import annotations

import logging
import warnings

from torch.jit import TracerWarning

from utils.logs import setup_script_logging


def _shown(verbose: bool) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup_script_logging(verbose)
        warnings.warn("pkg_resources is deprecated as an API.", UserWarning, stacklevel=1)
        warnings.warn("Converting a tensor to a Python boolean might cause the trace to be incorrect.",
                      TracerWarning, stacklevel=1)
        warnings.warn("You are using the legacy TorchScript-based ONNX export. Starting in PyTorch 2.9, the new "
                      "torch.export-based ONNX exporter has become the default.", DeprecationWarning, stacklevel=1)
        warnings.warn("torch.ao.quantization is deprecated and will be removed in 2.10.", DeprecationWarning,
                      stacklevel=1)
        warnings.warn("calibration used 3 images: pass --calib-data with more", UserWarning, stacklevel=1)
    logging.getLogger().handlers.clear()
    return [str(w.message) for w in caught]


def test_library_noise_is_filtered_and_project_warnings_stay():
    assert _shown(verbose=False) == ["calibration used 3 images: pass --calib-data with more"]


def test_verbose_keeps_every_warning():
    assert len(_shown(verbose=True)) == 5
