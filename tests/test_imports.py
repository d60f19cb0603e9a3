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


def test_entry_scripts_and_the_sparsification_package_import_with_sparseml_unavailable() -> None:
    """SparseML, sparsezoo and DeepSparse load only when a recipe, a zoo: stub or DeepSparse is used."""
    code = ("import sys\nfor name in ('sparseml', 'sparsezoo', 'deepsparse'): sys.modules[name] = None\n"
            "import train, val, export, detect, demo, sensitivity, benchmarks.cli, utils.sparsification\n"
            "print('imported')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]


def project_modules() -> set[str]:
    return {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}


def test_the_project_imports_its_own_modules_at_the_top_of_each_file() -> None:
    """An import of the project's own code inside a function hides a cycle or an import-time cost: none are left
    (SparseML and DeepSparse, which are third-party, are the ones imported where they are needed)."""
    import ast

    own = project_modules() - {"tests", "conftest"}
    found = []
    for path in sorted(ROOT.glob("*.py")) + sorted(p for d in ("utils", "models", "benchmarks")
                                                   for p in (ROOT / d).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                          if name.split(".")[0] in own]
    assert own >= {"train", "val", "utils", "models"} and not found, found
