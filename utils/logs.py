"""Process-wide log setup for the entry scripts: the project's own lines, without known-harmless library noise.

Called from each script's ``main()`` (never at import). The warnings silenced here are ones the project has looked at
and that say nothing a user can act on: SparseML's ``pkg_resources`` import, torch's deprecation notices for the
eager-mode quantization API SparseML is built on, and the ONNX tracer's notes on constant folding and Python values
in traced code. ``--verbose`` (or ``verbose=True``) keeps them.
"""

from __future__ import annotations

import logging
import sys
import warnings

HARMLESS_WARNINGS = (  # (category, regex on the message)
    (UserWarning, r"pkg_resources is deprecated"),
    (DeprecationWarning, r".*pkg_resources"),
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (FutureWarning, r".*torch\.ao\.quantization"),
    (DeprecationWarning, r".*quantize_per_tensor"),
    (UserWarning, r".*[Cc]onstant folding"),
    (UserWarning, r"The shape inference of .* type is missing"),
    (Warning, r".*TracerWarning"),
    (Warning, r"Converting a tensor to a Python"),
    (Warning, r"Iterating over a tensor might cause the trace to be incorrect"),
    (FutureWarning, r".*torch\.onnx\.export.* dynamo"),
    (DeprecationWarning, r"You are using the legacy TorchScript-based ONNX export"),  # the exporter SparseML needs
    (UserWarning, r".*The given NumPy array is not writable"),
)


_VERBOSE = False  # set by setup_script_logging; SparseML's own INFO lines show only when it is True


def verbose_logging() -> bool:
    """Whether the entry script asked for every library line (``--verbose``)."""
    return _VERBOSE


def setup_script_logging(verbose: bool = False, level: int = logging.INFO, force: bool = False) -> None:
    """INFO lines of the project to stdout as plain messages; known-harmless library warnings filtered out.

    ``force`` replaces handlers already on the root logger (a script whose imports may have added one); without it
    a caller's handlers (a test's log capture) stay.
    """
    global _VERBOSE
    _VERBOSE = verbose
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout, force=force)
    if verbose:
        return
    from torch.jit import TracerWarning

    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    warnings.filterwarnings("ignore", category=TracerWarning)
