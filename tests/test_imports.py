"""Modules that must stay light: the QDQ rewrite and the model-structure questions import without SparseML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_qdq_rewrite_and_structure_import_with_sparseml_unavailable() -> None:
    code = ("import sys; sys.modules['sparseml'] = None; sys.modules['deepsparse'] = None\n"
            "import utils.sparsification.qdq, utils.sparsification.structure, utils.inference, utils.weights\n"
            "print('imported')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]
