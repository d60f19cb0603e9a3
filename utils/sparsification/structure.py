"""Facts about a model's sparsification structure that every module may ask, cheap to import (torch only).

Kept apart from the export and recipe code so that loading weights, choosing a backend or building a teacher never
pulls SparseML or ONNX in.
"""

from __future__ import annotations

from torch import nn
from torch.ao.quantization import FakeQuantizeBase


def has_quantization(model: nn.Module) -> bool:
    """Whether the model carries fake-quantize modules (a QAT model); such models export through SparseML."""
    return any(isinstance(m, FakeQuantizeBase) for m in model.modules())
