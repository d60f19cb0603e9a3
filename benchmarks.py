"""Benchmarks (run by `make bench`): throughput, accuracy of dense vs sparsified training, runtime latency.

Results go to BENCHMARKS.md with the command, the machine, the versions and the date. Speeds are compared as ratios
measured in the same process, because this shared machine's absolute timings drift by tens of percent.

    python benchmarks.py                        # everything (long: trains two models)
    python benchmarks.py --only throughput      # training / validation images per second
    python benchmarks.py --only demo            # time `python demo.py` and record the mAP it reaches
    python benchmarks.py --only accuracy        # dense yolov5n to convergence, then dense / sparse fine-tunes of it
    python benchmarks.py --only scratch         # dense yolov5n and the same run with a pruned_quant recipe
    python benchmarks.py --only runtime         # ONNX files in onnxruntime / DeepSparse (--quick: a few minutes)
"""


from benchmarks.cli import main

if __name__ == "__main__":
    main()
