"""Timing ONNX files in onnxruntime and DeepSparse the same way everywhere (the demo, the runtime benchmark): one
callable per file, run interleaved so that a shared machine's drift hits every file alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from utils.inference import deepsparse_engine, onnxruntime_options


def _feed(path: Path, batch: int, imgsz: int) -> np.ndarray:
    """Random pixels as the file takes them: uint8 0-255 (quantized graphs) or float32 in [0, 1]."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    uint8 = graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    pixels = np.random.default_rng(0).integers(0, 256, (batch, 3, imgsz, imgsz), dtype=np.uint8)
    return pixels if uint8 else pixels.astype(np.float32) / 255


def onnxruntime_runner(path: Path, batch: int, imgsz: int, threads: int, spinning: bool = False) -> Callable:
    import onnxruntime


    session = onnxruntime.InferenceSession(str(path), onnxruntime_options(threads, spinning),
                                           providers=["CPUExecutionProvider"])
    name, feed = session.get_inputs()[0].name, _feed(path, batch, imgsz)
    return lambda: session.run(None, {name: feed})


def deepsparse_runner(path: Path, batch: int, imgsz: int, threads: int) -> tuple[Callable, float]:
    """(runner, fraction of the graph DeepSparse compiles itself; the rest runs in its bundled onnxruntime)."""

    engine = deepsparse_engine(path, (batch, 3, imgsz, imgsz), threads)
    feed = [_feed(path, batch, imgsz)]
    return (lambda: engine.run(feed)), float(engine.fraction_of_supported_ops)


def time_interleaved(runners: dict[str, Callable], runs: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds per call of each runner: warm-up, then ``runs`` rounds that call every runner once, in turn."""
    for runner in runners.values():
        for _ in range(warmup):
            runner()
    times: dict[str, list[float]] = {key: [] for key in runners}
    for _ in range(runs):
        for key, runner in runners.items():
            start = time.perf_counter()
            runner()
            times[key].append((time.perf_counter() - start) * 1e3)
    return times


def stats(times: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(float(np.percentile(times, 90)), 2)}
