"""The benchmarks behind BENCHMARKS.md, one module per section; ``python benchmarks.py`` is the entry point.

- ``throughput``: training and validation images per second on random data.
- ``demo``: ``python demo.py`` timed, with its closing table.
- ``accuracy``: the accuracy protocol (a dense model to convergence, then dense and sparse fine-tunes of it).
- ``scratch``: the protocol's dense run against the same command with a pruned + INT8 recipe from scratch.
- ``runtime`` / ``runtime_report``: ONNX files in onnxruntime and DeepSparse, and their section.
- ``runs`` (training subprocesses that are reused or resumed), ``machine`` (what BENCHMARKS.md says about the CPU),
  ``report`` (BENCHMARKS.md and benchmarks.json), ``cli`` (the flags).
"""
