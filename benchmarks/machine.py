"""What BENCHMARKS.md says about the machine a section was measured on (speed differs by CPU)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]
                return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/vnni"
    except OSError:
        pass
    return "unknown"


def machine() -> str:
    """This machine as BENCHMARKS.md names it for each section it measures."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, flags: {cpu_flags()}; {gpu}"


def versions() -> str:
    import onnxruntime
    import sparseml

    return (f"Python {platform.python_version()}, torch {torch.__version__}, sparseml {sparseml.__version__}, "
            f"onnxruntime {onnxruntime.__version__}")
