"""Pruning sensitivity analysis of a trained dense model, and a recipe with a per-layer sparsity layout from it.

    python sensitivity.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --imgsz 320 --target 0.77
    python train.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --imgsz 320 \\
        --sparsification-recipe runs/sensitivity/exp/yolov5n.pruned_quant.sensitivity.yaml --teacher-weights ...

Each prunable conv weight (all but the stem and Detect) is magnitude-pruned alone to each ``--levels`` sparsity and
the model validated (no training): the mAP@0.5:0.95 it keeps says how much that layer tolerates. Every layer then
gets the level that reaches ``--target`` of all conv weights at zero with the least summed loss, and the template
recipe (``--recipe``) is written with those per-layer sparsities in place of its layer groups. A level of 0 lets a
layer stay dense (measured by nothing: it is the baseline). ``--by macs`` counts the target in multiply-accumulates
at ``--imgsz`` instead of weights: a layout for speed, which prunes the early high-resolution convs that a layout by
weights leaves dense. Writes ``sensitivity.json`` (every measurement and the layout) and the recipe to
``runs/sensitivity/exp``; ``--reuse`` that file to lay out another target or add levels without measuring again what
it holds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

from torch import nn

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import val  # noqa: E402  (the validation loop: the model and dataloader stay here across the measurements)
from utils.dataset import create_dataloader  # noqa: E402
from utils.dataset_config import check_dataset  # noqa: E402
from utils.logs import setup_script_logging  # noqa: E402
from utils.runs import increment_path  # noqa: E402
from utils.sparsification.sensitivity import (  # noqa: E402
    conv_macs,
    layer_sensitivities,
    layout_recipe,
    sparsity_layout,
)
from utils.weights import load_weights  # noqa: E402

LOGGER = logging.getLogger(__name__)
DEFAULT_LEVELS = (0.0, 0.3, 0.5, 0.7, 0.85, 0.95)  # 0: the layer may stay dense (costs no measurement)
DEFAULT_TEMPLATE = str(ROOT / "recipes" / "yolov5n.pruned_quant.yaml")


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="trained dense model (.pt: project, Ultralytics)")
    parser.add_argument("--data", default=str(ROOT / "data" / "shapes.yaml"), help="dataset YAML (its val split)")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--levels", type=float, nargs="+", default=list(DEFAULT_LEVELS),
                        help="sparsities each layer is measured at (and may be given); 0 lets a layer stay dense")
    parser.add_argument("--target", type=float, default=0.75, help="fraction of all conv weights (--by) to be zero")
    parser.add_argument("--by", choices=("weights", "macs"), default="weights",
                        help="what --target counts: conv weights (the sparsity recipes quote), or conv "
                             "multiply-accumulates at --imgsz (a layout for speed: a weight of an early, "
                             "high-resolution conv counts for more than one of P5)")
    parser.add_argument("--recipe", default=DEFAULT_TEMPLATE,
                        help="template recipe: its schedule, distillation and QAT are kept, its layer groups replaced")
    parser.add_argument("--reuse", default="",
                        help="sensitivity.json of an earlier analysis of the same weights, data and size: its "
                             "measurements are kept and only levels it lacks are measured (a new --target or added "
                             "levels in seconds instead of minutes)")
    parser.add_argument("--project", default=str(ROOT / "runs" / "sensitivity"))
    parser.add_argument("--name", default="exp")
    parser.add_argument("--exist-ok", action="store_true")
    opt = parser.parse_args(argv)
    if not 0 < opt.target < 1 or any(not 0 <= level < 1 for level in opt.levels):
        parser.error("--target and --levels are fractions between 0 and 1 (a level of 0: the layer stays dense)")
    if opt.reuse and not Path(opt.reuse).is_file():
        parser.error(f"--reuse {opt.reuse}: no such file (the sensitivity.json that an earlier run wrote)")
    if not Path(opt.recipe).is_file():
        parser.error(f"--recipe {opt.recipe}: no such file (a local recipe YAML to take the schedule from)")
    return opt


def conv_weight_count(model: nn.Module) -> int:
    """Every conv weight of the model: the denominator of the sparsity that the reports and benchmarks quote."""
    return sum(module.weight.numel() for module in model.modules() if isinstance(module, nn.Conv2d))


def file_digest(path: str | Path) -> str:
    """SHA-256 of a weights file: what ties stored measurements to the model they were taken on."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reused_measurements(record: str | Path, weights: str, data: str, imgsz: int) -> dict[str, dict[float, float]]:
    """The per-layer measurements of an earlier sensitivity.json, refused (ValueError naming the file) when they were
    taken on other weights (by digest; by path for a record written before digests), data or image size."""
    try:
        saved = json.loads(Path(record).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--reuse {record}: not a sensitivity.json written by sensitivity.py ({error})") from error
    missing = [key for key in ("weights", "data", "imgsz", "layers") if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise ValueError(f"--reuse {record}: not a sensitivity.json written by sensitivity.py (no "
                         f"{', '.join(missing)})")
    same_model = (saved["weights_sha256"] == file_digest(weights) if "weights_sha256" in saved
                  else Path(saved["weights"]).resolve() == Path(weights).resolve())
    for ok, what in ((same_model, f"weights {saved['weights']}"), (saved["data"] == str(data), f"data {saved['data']}"),
                     (saved["imgsz"] == imgsz, f"--imgsz {saved['imgsz']}")):
        if not ok:
            raise ValueError(f"--reuse {record}: measured with {what}, not this run's; measure anew without --reuse")
    return {layer["name"]: {float(level): value for level, value in layer["maps"].items()} for layer in saved["layers"]}


def run(weights: str, data: str, imgsz: int = 640, batch_size: int = 32, workers: int = 2,
        levels: list[float] | tuple[float, ...] = DEFAULT_LEVELS, target: float = 0.75,
        recipe: str = DEFAULT_TEMPLATE, project: str = str(ROOT / "runs" / "sensitivity"), name: str = "exp",
        exist_ok: bool = False, reuse: str = "", by: str = "weights") -> Path:
    """Measure, lay out, write; returns the recipe written."""
    known = reused_measurements(reuse, weights, data, imgsz) if reuse else None
    model = load_weights(weights).model.float().eval()
    dataset = check_dataset(data)
    if not dataset.get("val"):
        raise ValueError(f"{data}: no 'val' split to measure on")
    stride = int(model.stride.max())
    loader = create_dataloader(dataset["val"], imgsz, batch_size, stride, rect=True, pad=0.5, workers=workers,
                               prefix="val: ")[0]

    def evaluate() -> float:
        return val.run(dataset, model=model, dataloader=loader, imgsz=imgsz, plots=False).metrics.map

    levels = sorted(set(levels))
    baseline, layers = layer_sensitivities(model, evaluate, levels, progress=LOGGER.info, known=known)
    total, macs = conv_weight_count(model), conv_macs(model, imgsz)
    total_macs = sum(macs.values())
    by_macs = by == "macs"
    layout = sparsity_layout(baseline, layers, target, total_macs if by_macs else total,
                             sizes={layer.name: macs[layer.name] for layer in layers} if by_macs else None)
    zeros = sum(layer.numel * layout[layer.name] for layer in layers)
    mac_zeros = sum(macs[layer.name] * layout[layer.name] for layer in layers)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok, mkdir=True)
    result = {"weights": str(weights), "weights_sha256": file_digest(weights), "data": str(data), "imgsz": imgsz,
              "levels": levels, "target": target, "by": by, "reused": str(reuse),
              "baseline_map": baseline, "conv_weights": total, "conv_sparsity": zeros / total,
              "conv_macs": total_macs, "mac_sparsity": mac_zeros / total_macs,
              "layers": [{"name": layer.name, "numel": layer.numel, "macs": macs[layer.name], "maps": layer.maps,
                          "sparsity": layout[layer.name]} for layer in layers]}
    (save_dir / "sensitivity.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    pruned_levels = ", ".join(str(level) for level in levels if level > 0) + (" or left dense" if 0 in levels else "")
    unit = "conv weights" if by == "weights" else f"conv multiply-accumulates at {imgsz} px"
    header = (f"# Pruning layout from a one-shot sensitivity analysis (sensitivity.py): {Path(weights).name} on "
              f"{Path(data).name} at {imgsz} px,\n# baseline mAP@0.5:0.95 {baseline:.4f}; each conv layer pruned "
              f"alone to {pruned_levels};\n# {zeros / total:.1%} of all conv weights zero, "
              f"{mac_zeros / total_macs:.1%} of their multiply-accumulates at {imgsz} px (target: {target:.0%} of the "
              f"{unit}).\n# The pruning_modifiers below replace the layer groups of {Path(recipe).name}, which the "
              f"comments\n# further down still describe; the schedule, distillation and QAT are that recipe's.\n")
    out = save_dir / f"{Path(recipe).stem}.sensitivity.yaml"
    out.write_text(layout_recipe(Path(recipe).read_text(encoding="utf-8"), layout, header), encoding="utf-8")
    counts = {level: sum(1 for value in layout.values() if value == level) for level in levels}
    LOGGER.info("baseline mAP@0.5:0.95 %.4f; layout: %s; %.1f%% of conv weights zero, %.1f%% of their "
                "multiply-accumulates at %d px", baseline,
                ", ".join(f"{count} layers {f'at {level}' if level else 'dense'}" for level, count in counts.items()),
                100 * zeros / total, 100 * mac_zeros / total_macs, imgsz)
    LOGGER.info("wrote %s and %s", save_dir / "sensitivity.json", out)
    return out


def main(opt: argparse.Namespace) -> Path:
    setup_script_logging(force=True)
    try:
        return run(**vars(opt))
    except (FileNotFoundError, ValueError) as error:
        LOGGER.error("error: %s", error)
        raise SystemExit(1) from error


if __name__ == "__main__":
    main(parse_opt())
