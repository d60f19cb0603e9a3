"""Run folders: runs/train/exp, exp2, ... exactly as YOLOv5 users expect."""

from __future__ import annotations

import re
from pathlib import Path


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """``runs/train/exp`` if free (or ``exist_ok``), else the next free ``exp2``, ``exp3``, ..."""
    path = Path(path)
    if not (path.exists() and not exist_ok):
        candidate = path
    else:
        stem, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        pattern = re.compile(rf"^{re.escape(stem.name)}(\d+){re.escape(suffix)}$")
        taken = [int(m.group(1)) for p in stem.parent.glob(f"{stem.name}*{suffix}") if (m := pattern.match(p.name))]
        number = max(taken, default=1) + 1
        candidate = stem.parent / f"{stem.name}{number}{suffix}"
    if mkdir:
        candidate.mkdir(parents=True, exist_ok=True)
    return candidate
