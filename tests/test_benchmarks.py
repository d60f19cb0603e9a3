"""benchmarks.py's report: BENCHMARKS.md shows each section's command and the figures computed from the results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import accuracy as protocol
from benchmarks import machine as machine_info
from benchmarks import report, runs
from benchmarks import runtime as runtime_bench
from benchmarks import scratch as scratch_section


def runtime_row(variant: str, runtime: str, median_ms: float, throughput: float) -> dict:
    return {"model": "yolov5s", "imgsz": 640, "variant": variant, "runtime": runtime, "median_ms": median_ms,
            "p90_ms": median_ms * 1.1, "throughput_ips": throughput, "map_note": "n/a (random weights)"}


def runtime_section() -> dict:
    rows = [runtime_row("dense FP32", "onnxruntime", 100.0, 10.0),
            runtime_row("pruned INT8 qdq", "onnxruntime", 64.0, 16.0),
            runtime_row("pruned 4-block INT8 integer", "deepsparse", 35.0, 30.0)]
    baseline = rows[0]
    for row in rows:  # what runtime_bench.measure adds
        row["speedup"] = round(baseline["median_ms"] / row["median_ms"], 2)
        row["throughput_ratio"] = round(row["throughput_ips"] / baseline["throughput_ips"], 2)
    settings = runtime_bench.Settings.quick()
    study = [{"model": "yolov5s", "imgsz": 640, "activation": "ReLU", "sparsity": "none (INT8 only)",
              "conv_sparsity": 0.004, "deepsparse_ms": 29.8, "ort_dense_ms": 100.3, "speedup": 3.37}]
    return {"rows": rows, "threads": [], "study": study, "versions": {"onnxruntime": "1.x", "deepsparse": "1.8.0"},
            "threads_used": 2, "notes": ["yolov5s: random weights"],
            "checks": {"yolov5s": {"dense FP32": "check ...: passed",
                                   "pruned INT8 qdq": "check ... 2/3 matched: FAILED"}}, "plot": "runs/bench/x.png",
            "settings": vars(settings), "minutes": 5.4, "load_average": [0.1, 1.7]}


def accuracy_section() -> dict:
    return {"protocol": 2, "data": "data/shapes_tiny.yaml", "imgsz": 160, "dense_epochs": 400, "finetune_epochs": 30,
            "optimizer": "AdamW", "finetune_args": {"num_epochs": 30, "init_lr": 0.002},
            "start_map50": 0.5, "start_map": 0.32, "dense_best_epoch": 397, "dense_minutes": 85.0,
            "dense_reused": True, "curve": "BENCHMARKS_dense_curve.png",
            "convergence": {"window": 30, "best_before_window": 0.318, "best": 0.32, "rise": 0.32 / 0.318 - 1,
                            "converged": True, "final_lr": 3e-05, "epochs": 400},
            "control_map50": 0.51, "control_map": 0.321, "control_minutes": 7.0, "control_reused": False,
            "control_rise": 0.321 / 0.32 - 1, "baseline": "control", "baseline_map": 0.321,
            "sparse": [{"name": "pruned_quant_distill", "recipe": "recipes/yolov5n.pruned_quant.yaml",
                        "recipe_args": "", "teacher": True, "epochs": 30, "phase": "pruned_quantized", "map50": 0.5,
                        "map": 0.3178, "sparsity": 0.77, "recovery": 0.3178 / 0.321, "minutes": 12.0,
                        "phase_minutes": {"pruned": 11.0}}]}


def test_report_lists_commands_demo_recovery_and_the_fastest_file() -> None:
    results = {
        "commands": {"accuracy": {"command": "python benchmarks.py --only accuracy", "date": "2026-11-28 00:58 UTC"}},
        "demo": {"seconds": 468.0, "epochs": 10, "phase": "pruned_quantized", "sparsity": 0.743, "map50": 0.077,
                 "map": 0.044},
        "accuracy": accuracy_section(),
        "runtime": runtime_section(),
    }
    text = report.render_markdown(results)
    assert "Measured by `python benchmarks.py --only accuracy`, 2026-11-28 00:58 UTC, on an unrecorded machine" in text
    assert "7.8 min for train (10 epochs)" in text and "mAP@0.5 0.077" in text
    assert "400 epochs from scratch (AdamW, `data/hyps/hyp.short.yaml`, YOLOv5's learning rate falling linearly to " \
           "3e-05; 85 min; a finished run of the same settings, reused), best epoch 397: mAP@0.5:0.95 0.320" in text
    assert "rose 0.63% (0.318 to 0.320): converged: under the protocol's 1%" in text
    assert "Curve: [BENCHMARKS_dense_curve.png](BENCHMARKS_dense_curve.png)" in text
    assert "reached 0.321, +0.3% over the start, which confirms it" in text
    assert "| dense (the start) | | | 0.500 | 0.320 | 0 | 99.7% | 85 |" in text
    assert "| start + fine-tune (control) | | | 0.510 | 0.321 | 0 | 100.0% | 7 |" in text
    assert ("| pruned_quant_distill | `recipes/yolov5n.pruned_quant.yaml` | the start | 0.500 | 0.318 | 0.770 | "
            "99.0% | 12 ({'pruned': 11.0}) |") in text
    assert "| yolov5s | 640 | pruned 4-block INT8 integer | deepsparse | 35.0 |" in text
    assert "- yolov5s 640: pruned 4-block INT8 integer in deepsparse, 2.86x ORT dense FP32; best onnxruntime INT8: " \
           "pruned INT8 qdq 1.56x" in text
    assert "| 640 | ReLU | none (INT8 only) | 0% | 29.8 | 100.3 | 3.37x |" in text
    assert "- export check FAILED (the file is timed and scored all the same) for yolov5s pruned INT8 qdq: check ... " \
           "2/3 matched: FAILED" in text and "dense FP32: check" not in text
    results["accuracy"]["sparse"][0]["kept_from"] = "`python benchmarks.py --only accuracy`, 2026-11-28 09:05 UTC"
    results["accuracy"]["convergence"].update(rise=0.05, converged=False)
    results["accuracy"]["control_rise"] = 0.04
    text = report.render_markdown(results)
    assert "| pruned_quant_distill * | " in text
    assert "\\* trained by an earlier run of the section with the same dense start: `python benchmarks.py " \
           "--only accuracy`, 2026-11-28 09:05 UTC." in text
    assert "NOT converged" in text and "more than 1%: the start had not converged" in text
    del results["accuracy"]["protocol"]  # an earlier layout: not rendered (its text in BENCHMARKS.md is kept)
    assert "## Dense vs pruned" not in report.render_markdown(results)


def test_a_start_continued_in_rounds_is_named_as_such_in_the_protocols_section() -> None:
    """The run from scratch short of the 1% rule is trained on in rounds: the section says which model starts the
    fine-tunes, and a round that confirms the run from scratch itself reads as a check, not as another start."""
    section = accuracy_section()
    section["convergence"].update(rise=0.0102, converged=False)
    rounds = [{"number": 1, "folder": "dense_continued_e100", "map": 0.325, "rise": 0.325 / 0.32 - 1},
              {"number": 2, "folder": "dense_continued_e100_r2", "map": 0.327, "rise": 0.327 / 0.325 - 1}]
    section.update(start_map=0.325, continued={"epochs": 100, "rounds": rounds, "converged": True, "from_map": 0.32,
                                               "start": "dense_continued_e100", "minutes": 20.0})
    text = "\n".join(protocol.accuracy_markdown(section))
    assert "The run from scratch: dense yolov5n, 400 epochs" in text and "NOT converged" not in text
    assert "rose 1.02% (0.318 to 0.320): not under the protocol's 1% by itself, so it was trained on in rounds" in text
    assert ("that run (0.320) was trained on dense in rounds of 100 epochs under the fine-tune's schedule" in text
            and "round 1 0.325 (+1.6%), round 2 0.327 (+0.6%); the start is dense_continued_e100 (0.325)" in text
            and "confirms it: over the dense training's last 100 epochs its best rose 0.6%" in text)
    assert "| dense (the start) | | | 0.500 | 0.325 | 0 | 101.2% | 105 |" in text  # 85 min from scratch + round 1
    section["convergence"].update(rise=0.006, converged=True)
    section.update(start_map=0.32, continued={"epochs": 100, "rounds": rounds[:1], "converged": True,
                                              "from_map": 0.32, "start": "dense", "minutes": 0.0})
    section["continued"]["rounds"][0].update(map=0.321, rise=0.321 / 0.32 - 1)
    text = "\n".join(protocol.accuracy_markdown(section))
    assert "The start: dense yolov5n, 400 epochs" in text and "not the run from scratch itself" not in text
    assert "trained on dense for 100 epochs under the fine-tune's schedule (the control's recipe): round 1 0.321 " \
           "(+0.3%), under 1%, so the run from scratch is the start" in text


def test_best_of_uses_yolov5_fitness_within_a_phase() -> None:
    rows = [{"phase": "pruned", "metrics/mAP_0.5": "0.9", "metrics/mAP_0.5:0.95": "0.5"},
            {"phase": "pruned_quantized", "metrics/mAP_0.5": "0.2", "metrics/mAP_0.5:0.95": "0.3"},
            {"phase": "pruned_quantized", "metrics/mAP_0.5": "0.6", "metrics/mAP_0.5:0.95": "0.28"}]
    assert runs.best_of(rows) is rows[0]
    # 0.1 * 0.6 + 0.9 * 0.28 = 0.312 > 0.1 * 0.2 + 0.9 * 0.3 = 0.29
    assert runs.best_of(rows, "pruned_quantized") is rows[2]


def test_a_finished_dense_run_of_the_same_settings_is_reused(tmp_path, monkeypatch) -> None:
    import yaml

    run_dir = tmp_path / "dense"
    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "weights" / "best.pt").write_bytes(b"x")
    (run_dir / "opt.yaml").write_text(yaml.safe_dump({"epochs": 3, "weights": "", "optimizer": "AdamW", "imgsz": 224,
                                                      "data": "data/shapes_small.yaml", "cfg": "yolov5n.yaml",
                                                      "hyp": "data/hyps/hyp.short.yaml"}))
    (run_dir / "results.csv").write_text("epoch,phase\n0,dense\n1,dense\n2,dense\n")
    commands = []
    monkeypatch.setattr(runs, "run_command", lambda args: commands.append(args) or 0.0)
    common = ["--data", "data/shapes_small.yaml", "--imgsz", "224"]
    assert protocol.dense_run(tmp_path, 3, common) == (run_dir, True) and commands == []
    assert protocol.dense_run(tmp_path / "elsewhere", 4, common) == (tmp_path / "elsewhere" / "dense", False)
    assert commands and "--epochs" in commands[0] and commands[0][commands[0].index("--epochs") + 1] == "4"


def test_an_interrupted_stage_resumes_and_one_of_other_settings_trains_anew(tmp_path, monkeypatch) -> None:
    """A benchmark stopped mid-run (hours of CPU training) goes on with train.py --resume when it is run again."""
    settings = {"weights": "", "cfg": "yolov5n.yaml", "optimizer": "AdamW", "hyp": "data/hyps/hyp.short.yaml",
                "imgsz": 224, "data": "data/shapes_small.yaml", "epochs": 3}
    fake_run(tmp_path / "dense", settings, [0.1], ["dense"])  # 1 of 3 epochs done
    commands = []
    monkeypatch.setattr(runs, "run_command", lambda args: commands.append(args) or 0.0)
    common = ["--data", "data/shapes_small.yaml", "--imgsz", "224"]
    assert protocol.dense_run(tmp_path, 3, common) == (tmp_path / "dense", False)
    assert commands == [["train.py", "--resume", str(tmp_path / "dense" / "weights" / "last.pt")]]
    commands.clear()
    with pytest.raises(SystemExit, match=r"other settings.*epochs: found 3, wanted 4.*--project"):
        protocol.dense_run(tmp_path, 4, common)  # another length: not this run's continuation, and not overwritten
    assert commands == [] and (tmp_path / "dense" / "weights" / "last.pt").is_file()


def test_a_folder_with_no_weights_yet_is_trained_into(tmp_path, monkeypatch) -> None:
    (tmp_path / "dense").mkdir()
    (tmp_path / "dense" / "opt.yaml").write_text("epochs: 3\n")  # a run killed before its first checkpoint
    commands = []
    monkeypatch.setattr(runs, "run_command", lambda args: commands.append(args) or 0.0)
    protocol.dense_run(tmp_path, 4, ["--data", "data/shapes_small.yaml", "--imgsz", "224"])
    assert commands[0][:2] == ["train.py", *protocol.DENSE_ARGS[:1]] and "--resume" not in commands[0]


def test_run_minutes_come_from_the_checkpoint_when_it_records_them(tmp_path, monkeypatch) -> None:
    fake_run(tmp_path / "run", {}, [0.1], ["dense"])
    monkeypatch.setattr(runs, "load_checkpoint", lambda path: {"options": {"train_seconds": 1500.0}})
    assert runs.run_minutes(tmp_path / "run") == 25.0


def test_a_fine_tune_stage_is_reused_only_with_the_same_start_recipe_and_recipe_args(tmp_path, monkeypatch) -> None:
    import json

    import yaml

    start = tmp_path / "dense" / "weights" / "best.pt"
    run_dir = tmp_path / "control"
    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "weights" / "best.pt").write_bytes(b"x")
    args = {"num_epochs": 2, **protocol.FINETUNE_ARGS}
    recipe = tmp_path / "control_recipe.yaml"
    (run_dir / "opt.yaml").write_text(yaml.safe_dump({  # key order differs from the benchmark's: compared parsed
        "weights": str(start), "optimizer": "AdamW", "imgsz": 224, "data": "data/shapes_small.yaml",
        "sparsification_recipe": str(recipe), "hyp": protocol.PROTOCOL_FINETUNE_HYP,
        "recipe_args": json.dumps(dict(reversed(list(args.items()))))}))
    (run_dir / "results.csv").write_text("epoch,phase\n0,dense\n1,dense\n")
    commands = []
    monkeypatch.setattr(runs, "run_command", lambda args: commands.append(args) or 0.0)
    common = ["--data", "data/shapes_small.yaml", "--imgsz", "224"]

    def run(start, recipe, recipe_args, hyp=protocol.PROTOCOL_FINETUNE_HYP):
        return protocol.recipe_run(tmp_path, "control", start, 2, common, recipe, recipe_args, hyp)

    assert run(start, recipe, args) == (run_dir, True) and commands == []
    assert run(start, recipe, {**args, "init_lr": 0.5}) == (run_dir, False)  # other variables: trained again
    assert run(start, tmp_path / "other.yaml", args) == (run_dir, False)  # another recipe
    assert run(tmp_path / "other.pt", recipe, args) == (run_dir, False)  # another start
    assert run(start, recipe, args, "data/hyps/hyp.scratch-low.yaml") == (run_dir, False)  # other augmentation
    assert len(commands) == 4 and json.loads(commands[2][commands[2].index("--recipe-args") + 1]) == args
    assert commands[3][commands[3].index("--hyp") + 1] == "data/hyps/hyp.scratch-low.yaml"


def test_the_fine_tunes_train_with_the_dense_runs_hyperparameters_and_say_which(tmp_path) -> None:
    """Same augmentation on both sides: a control trained with more augmentation than the dense run gains from the
    augmentation, which reads as a start that had not converged."""
    dense_hyp = protocol.DENSE_ARGS[protocol.DENSE_ARGS.index("--hyp") + 1]
    assert protocol.PROTOCOL_FINETUNE_HYP == dense_hyp
    start, common = tmp_path / "best.pt", ["--data", "data/shapes_tiny.yaml", "--imgsz", "160"]
    lr_args = {"num_epochs": 30, **protocol.FINETUNE_ARGS}
    sparse_args = {**lr_args, "pruning_end_epoch": 12.0, **protocol.SPARSITY_ARGS}
    for name in protocol.DEFAULT_VARIANTS:  # (the layouts of the sensitivity variants: in their own test)
        if not protocol.SPARSE_VARIANTS[name].get("sensitivity"):
            command = protocol.variant_command(name, start, common, lr_args, sparse_args)
            assert command[command.index("--hyp") + 1] == dense_hyp, name
    other = protocol.variant_command("quant", start, common, lr_args, sparse_args,
                                     hyp="data/hyps/hyp.scratch-low.yaml")
    assert other[other.index("--hyp") + 1] == "data/hyps/hyp.scratch-low.yaml"
    assert protocol.finetune_hyp_phrase({"finetune_hyp": dense_hyp}) == f"`{dense_hyp}` (the dense run's)"
    # results recorded before the fine-tunes had a --hyp trained with train.py's default, not the dense run's
    assert "`data/hyps/hyp.scratch-low.yaml` (not the dense run's" in protocol.finetune_hyp_phrase({})


def test_the_relu_variant_changes_the_model_and_only_quantizes(tmp_path) -> None:
    """relu_quant: --cfg yolov5n-relu.yaml and recipes/yolov5n.relu_quant.yaml with the learning-rate variables (it
    has no pruning variables); the pruned variants keep the pruned_quant recipe and its pruning variables."""
    import json

    from utils.sparsification.recipes import load_recipe

    start, common = tmp_path / "best.pt", ["--data", "data/shapes_small.yaml", "--imgsz", "224"]
    lr_args = {"num_epochs": 30, **protocol.FINETUNE_ARGS}
    sparse_args = {**lr_args, "pruning_end_epoch": 12.0, **protocol.SPARSITY_ARGS}

    def flag(command: list[str], name: str) -> str:
        return command[command.index(name) + 1]

    relu = protocol.variant_command("relu_quant", start, common, lr_args, sparse_args)
    assert flag(relu, "--cfg") == "yolov5n-relu.yaml" and flag(relu, "--teacher-weights") == str(start)
    assert flag(relu, "--sparsification-recipe") == "recipes/yolov5n.relu_quant.yaml"
    assert json.loads(flag(relu, "--recipe-args")) == lr_args
    manager, _, _ = load_recipe(flag(relu, "--sparsification-recipe"), json.loads(flag(relu, "--recipe-args")))
    kinds = sorted({type(m).__name__ for m in manager.iter_modifiers()})
    assert kinds == ["EpochRangeModifier", "LearningRateFunctionModifier", "PerLayerDistillationModifier",
                     "QuantizationModifier"]
    pruned = protocol.variant_command("pruned_quant_distill", start, common, lr_args, sparse_args)
    assert "--cfg" not in pruned and flag(pruned, "--sparsification-recipe") == protocol.FINETUNE_RECIPE
    assert json.loads(flag(pruned, "--recipe-args")) == sparse_args


def test_a_run_of_some_variants_adds_to_the_table_when_the_dense_stages_are_the_same() -> None:
    def section(start_map: float, *names: str) -> dict:
        return {"data": "d", "imgsz": 224, "dense_epochs": 60, "finetune_epochs": 30, "finetune_args": {"a": 1},
                "start_map": start_map, "control_map": 0.6, "sparse": [{"name": n, "map": 0.5} for n in names]}

    earlier = section(0.57, "pruned_quant_distill", "relu_quant")
    merged = protocol.keep_other_variants(earlier, section(0.57, "relu_quant"), "`cmd`, date")
    assert [(r["name"], r.get("kept_from")) for r in merged["sparse"]] == [
        ("pruned_quant_distill", "`cmd`, date"), ("relu_quant", None)]  # the rerun variant is replaced, not kept
    # another dense start: the earlier rows are not comparable and are dropped
    assert protocol.keep_other_variants(earlier, section(0.58, "relu_quant"), "x")["sparse"] == [
        {"name": "relu_quant", "map": 0.5}]


def test_sections_a_run_does_not_measure_keep_their_text_and_machine() -> None:
    """A run of one section on another machine rewrites that section under its own machine line and keeps the
    others as they were, with the machine that measured them."""
    earlier = "\n".join([
        "# Benchmarks", "", "old header", "",
        "## Training and validation throughput (random data)", "",
        "Measured by `python benchmarks.py --only throughput`, 2026-11-27 22:57 UTC, on Machine A (versions A).", "",
        "| yolov5n | 320 | 8 | 16.56 | 69.29 |", "",
        "## Deployment speed: ONNX runtimes on this CPU", "", "Measured by ... on Machine A.", "", "old runtime table",
    ])
    results = {"commands": {"demo": {"command": "python benchmarks.py --only demo", "date": "2026-12-01 19:00 UTC",
                                     "machine": "Machine B", "versions": "versions B"}},
               "demo": {"seconds": 480.0, "epochs": 10, "phase": "pruned_quantized", "sparsity": 0.75, "map50": 0.08,
                        "map": 0.04},
               "accuracy": accuracy_section()}
    results["accuracy"]["sparse"][0]["kept_from"] = "an earlier run"  # the table's footnote must not hide the rest
    text = report.render_markdown(results, report.kept_sections(earlier))
    assert "old header" not in text
    assert "on Machine A (versions A).\n\n| yolov5n | 320 | 8 | 16.56 | 69.29 |" in text
    assert "## The demo (`make demo` after setup: `python demo.py`)\n\nMeasured by `python benchmarks.py --only " \
           "demo`, 2026-12-01 19:00 UTC, on Machine B (versions B).\n\n8.0 min for train (10 epochs)" in text
    assert text.index("## Training and validation") < text.index("## The demo") < text.index("## Deployment speed")
    assert text.endswith("old runtime table\n")


def test_the_notes_section_survives_every_run_and_the_new_demo_prints_its_table() -> None:
    """Prose findings live in BENCHMARKS.md's Notes section, which no command writes: a run keeps it as it is. The
    demo that starts from the shipped dense model reports its closing table."""
    earlier = "\n".join(["# Benchmarks", "", "## Notes: earlier measurements", "", "- a finding", ""])
    rows = [{"model": "dense FP32, onnxruntime", "mAP@0.5": 0.679, "mAP@0.5:0.95": 0.483, "ms": 3.1, "MB": 7.1,
             "sparsity": 0.0},
            {"model": "pruned INT8 (QDQ), onnxruntime", "mAP@0.5": 0.65, "mAP@0.5:0.95": 0.44, "ms": 2.0, "MB": 2.0,
             "sparsity": 0.77}]
    results = {"demo": {"seconds": 420.0, "epochs": 12, "phase": "pruned_quantized", "rows": rows}}
    text = report.render_markdown(results, report.kept_sections(earlier))
    assert text.endswith("## Notes: earlier measurements\n\n- a finding\n")
    assert "7.0 min from the shipped dense yolov5n" in text and "a 12-epoch pruned_quant fine-tune" in text
    assert "| pruned INT8 (QDQ), onnxruntime | 0.650 | 0.440 | 2.00 | 1.55x | 2.0 | 77% |" in text


def test_a_run_stopped_early_by_patience_is_finished_not_resumed(tmp_path, monkeypatch) -> None:
    """train.py --patience can end the dense run before its last epoch: it marks last.pt final and strips it. The
    benchmark reuses that run; resuming it would train past the stop (it did, on a 700-epoch run at 128 px)."""
    from utils.checkpoint import FORMAT_NAME, save_checkpoint

    settings = {"weights": "", "cfg": "yolov5n.yaml", "optimizer": "AdamW", "hyp": "data/hyps/hyp.short.yaml",
                "imgsz": 224, "data": "data/shapes_small.yaml", "epochs": 3}
    fake_run(tmp_path / "dense", settings, [0.1, 0.1], ["dense", "dense"])  # 2 of 3 epochs, then stopped
    last = tmp_path / "dense" / "weights" / "last.pt"
    commands = []
    monkeypatch.setattr(runs, "run_command", lambda args: commands.append(args) or 0.0)
    common = ["--data", "data/shapes_small.yaml", "--imgsz", "224"]
    interrupted = {"format": FORMAT_NAME, "epoch": 1, "final": False, "optimizer": {"state": {}}}
    save_checkpoint(interrupted, last)  # an interrupted run: resumed
    assert protocol.dense_run(tmp_path, 3, common) == (tmp_path / "dense", False) and commands
    commands.clear()
    save_checkpoint({**interrupted, "final": True, "optimizer": None}, last)  # stopped by --patience: reused
    assert protocol.dense_run(tmp_path, 3, common) == (tmp_path / "dense", True) and commands == []
    protocol.dense_run(tmp_path / "new", 3, common)  # and the protocol's own dense run follows its whole schedule
    assert commands[-1][commands[-1].index("--patience") + 1] == "0"


def train_flags_and_settings(command: list[str]) -> tuple[dict, dict]:
    """A train.py command's flags, and the opt.yaml settings that train.py would save for it."""
    flags = {k.lstrip("-").replace("-", "_"): v for k, v in zip(command[1::2], command[2::2])}
    settings = {"weights": flags["weights"], "optimizer": flags["optimizer"], "imgsz": int(flags["imgsz"]),
                "data": flags["data"], "cfg": flags.get("cfg", ""), "hyp": flags.get("hyp", ""),
                "epochs": int(flags.get("epochs", 3)), "teacher_weights": flags.get("teacher_weights", ""),
                "sparsification_recipe": flags.get("sparsification_recipe"), "recipe_args": flags.get("recipe_args")}
    return flags, settings


def fake_run(run_dir, settings: dict, maps: list[float], phases: list[str]) -> None:
    """A finished train.py run folder: opt.yaml, results.csv (one row per mAP@0.5:0.95 in ``maps``) and weights."""
    import yaml

    (run_dir / "weights").mkdir(parents=True)
    (run_dir / "opt.yaml").write_text(yaml.safe_dump(settings))
    rows = [f"{e},{2 * m},{m},{p},{0.77 if p != 'dense' else 0}" for e, (m, p) in enumerate(zip(maps, phases))]
    (run_dir / "results.csv").write_text("epoch,metrics/mAP_0.5,metrics/mAP_0.5:0.95,phase,conv_sparsity\n"
                                         + "\n".join(rows) + "\n")
    for name in ("best.pt", "last.pt"):
        (run_dir / "weights" / name).write_bytes(b"x")


def test_runs_written_before_the_column_rename_read_their_conv_sparsity_too(tmp_path) -> None:
    """results.csv of runs before 2026-12-05 name the conv weight sparsity ``sparsity``: the protocol's kept runs
    of those days still report it."""
    (tmp_path / "results.csv").write_text("epoch,metrics/mAP_0.5:0.95,phase,sparsity\n0,0.4,pruned,0.77\n")
    assert runs.read_results(tmp_path) == [{"epoch": "0", "metrics/mAP_0.5:0.95": "0.4", "phase": "pruned",
                                            "conv_sparsity": "0.77"}]


def test_the_scratch_section_runs_the_dense_command_plus_the_recipe_and_divides_by_the_dense_run(
        tmp_path, monkeypatch) -> None:
    """Same budget from scratch: the sparse run is the dense run's command with the scratch recipe (nothing else
    changes), a finished one is reused, and recovery is its final phase's best mAP over the dense run's best."""
    import json

    common = runs.benchmark_args("data/shapes_small.yaml", 224, 32, tmp_path)
    settings = {"weights": "", "cfg": "yolov5n.yaml", "optimizer": "AdamW", "hyp": "data/hyps/hyp.short.yaml",
                "imgsz": 224, "data": "data/shapes_small.yaml"}
    fake_run(tmp_path / "dense", {**settings, "epochs": 6}, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], ["dense"] * 6)
    commands = []
    monkeypatch.setattr(runs, "run_command", lambda args: commands.append(args) or 0.0)
    with pytest.raises(FileNotFoundError):  # not trained yet: the command runs (here: does nothing)
        scratch_section.scratch(6, 224, 32, "data/shapes_small.yaml", tmp_path)
    dense_command = ["train.py", *protocol.DENSE_ARGS, "--epochs", "6", "--name", "dense", *common]
    recipe_args = {"num_epochs": 6, **protocol.SPARSITY_ARGS}
    assert commands == [["train.py", *protocol.DENSE_ARGS, "--sparsification-recipe", protocol.SCRATCH_RECIPE,
                         "--recipe-args", json.dumps(recipe_args), "--name", "pruned_quant_scratch", *common]]
    assert [a for a in commands[0] if a not in dense_command] == [  # the only difference from the dense run
        "--sparsification-recipe", protocol.SCRATCH_RECIPE, "--recipe-args", json.dumps(recipe_args),
        "pruned_quant_scratch"]

    fake_run(tmp_path / "pruned_quant_scratch", {**settings, "sparsification_recipe": protocol.SCRATCH_RECIPE,
                                                  "recipe_args": json.dumps(recipe_args)},
             [0.1, 0.2, 0.35, 0.4, 0.57, 0.594], ["dense", "pruned", "pruned", "pruned", "pruned_quantized",
                                                   "pruned_quantized"])
    commands.clear()
    result = scratch_section.scratch(6, 224, 32, "data/shapes_small.yaml", tmp_path)
    assert commands == [] and result["dense_reused"] and result["sparse_reused"]
    assert result["dense_map"] == 0.6 and result["sparse_map"] == 0.594 and result["sparse_best_epoch"] == 5
    assert abs(result["recovery"] - 0.99) < 1e-9 and result["sparsity"] == 0.77
    assert result["phase_starts"] == {"dense": 0, "pruned": 1, "pruned_quantized": 4}
    text = "\n".join(scratch_section.scratch_markdown(result))
    assert "Both runs: `python train.py --cfg yolov5n.yaml --weights '' --optimizer AdamW --hyp " \
           "data/hyps/hyp.short.yaml --data data/shapes_small.yaml --imgsz 224 --batch-size 32`, 6 epochs" in text
    assert "phases: dense from epoch 0, pruned from epoch 1, pruned_quantized from epoch 4" in text
    assert "(their first 2 epochs validated to the same mAP, digit for digit)" in text  # 0.1, 0.2; then 0.35 != 0.3
    assert "| pruned_quant_scratch (reused) | 1.188 | 0.594 | 0.770 | 99.0% | 5 |" in text
    assert "| 0 | 0.100 | 0.100 | dense | 0.000 |" in text
    assert "| 5 | 0.600 | 0.594 | pruned_quantized | 0.770 |" in text


def test_the_runtime_section_times_the_protocols_trained_files_and_falls_back_to_random_weights(tmp_path) -> None:
    def touch(run: str, weights: str = "last.pt") -> Path:
        path = tmp_path / run / "weights" / weights
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        return path

    assert runtime_bench.trained_checkpoints(tmp_path) is None  # nothing trained: random weights, mAP n/a
    start, quantized = touch("dense_continued_e100", "best.pt"), touch("pruned_quant_distill")
    assert runtime_bench.trained_checkpoints(tmp_path) is None  # the start is in another folder
    pruned_fp32, relu_block4 = touch("pruned_quant_distill", "best_pruned.pt"), touch("relu_block4_quant")
    found = runtime_bench.trained_checkpoints(tmp_path, "dense_continued_e100")
    assert found == {"dense": start, "quantized": quantized, "pruned": pruned_fp32, "block4": None, "relu": None,
                     "relu_block4": relu_block4, "sens": None, "relu_block4_sens": None}
    # the sensitivity layouts' fine-tunes are timed beside the group layouts' when they have run
    layout = touch("pruned_quant_distill_sens")
    assert runtime_bench.trained_checkpoints(tmp_path, "dense_continued_e100")["sens"] == layout
    pruned_only = touch("pruned_distill", "best.pt")
    # the pruned-only run, when there is one, is the FP32 pruned file
    assert runtime_bench.trained_checkpoints(tmp_path, "dense_continued_e100")["pruned"] == pruned_only


def test_machine_names_the_cpu_its_flags_and_the_gpu() -> None:
    import torch

    description = machine_info.machine()
    assert description.startswith(f"{machine_info.cpu_name()}, ") and "logical CPUs, flags: " in description
    assert description.endswith("no GPU") == (not torch.cuda.is_available())


def test_convergence_is_the_rise_of_the_best_map_over_the_last_window() -> None:
    def rows(maps: list[float]) -> list[dict]:
        return [{"epoch": e, "metrics/mAP_0.5:0.95": m, "x/lr0": 0.1 / (e + 1), "x/lr1": 0.01 / (e + 1)}
                for e, m in enumerate(maps)]

    plateau = protocol.dense_convergence(rows([0.1, 0.3, 0.5, 0.500, 0.503, 0.501]), window=3)
    assert plateau["best_before_window"] == 0.5 and plateau["best"] == 0.503 and plateau["converged"]
    assert abs(plateau["rise"] - 0.006) < 1e-9 and plateau["final_lr"] == 0.1 / 6
    climbing = protocol.dense_convergence(rows([0.1, 0.3, 0.5, 0.51, 0.52, 0.53]), window=3)
    assert not climbing["converged"] and abs(climbing["rise"] - 0.06) < 1e-9


def test_each_variant_gets_the_benchmark_variables_its_recipe_defines() -> None:
    import json

    from utils.sparsification.recipes import load_recipe

    start, common = Path("best.pt"), ["--data", "data/shapes_tiny.yaml", "--imgsz", "160"]
    lr_args = {"num_epochs": 30, **protocol.FINETUNE_ARGS}
    sparse_args = {**lr_args, "pruning_end_epoch": 12.0, **protocol.SPARSITY_ARGS}

    def args_of(name: str) -> tuple[list[str], dict]:
        command = protocol.variant_command(name, start, common, lr_args, sparse_args)
        recipe_args = json.loads(command[command.index("--recipe-args") + 1])
        load_recipe(command[command.index("--sparsification-recipe") + 1], recipe_args)  # every variable exists
        return command, recipe_args

    command, pruned = args_of("pruned_distill")
    assert "qat_init_lr" not in pruned and pruned["final_sparsity_heavy"] == 0.85 and "--teacher-weights" in command
    command, quant = args_of("quant")
    assert quant == {"num_epochs": 30, "qat_init_lr": 0.0001, "qat_final_lr": 1.0e-6}
    assert "--teacher-weights" not in command  # distillation may not overlap QAT
    command, relu = args_of("relu_block4_quant")
    assert command[command.index("--cfg") + 1] == "yolov5n-relu.yaml" and relu["mask_type"] == [1, 4]
    assert relu["final_sparsity_heavy"] == 0.88 and relu["float_modules"] == runtime_bench.BLOCK4["float_modules"]


def test_the_protocol_trains_each_stage_once_plots_the_dense_curve_and_divides_by_the_better_dense_model(
        tmp_path, monkeypatch) -> None:
    """The first call trains every stage (here: a fake train.py writes its run folder); a second call reuses them
    all, so a benchmark spread over several sittings trains nothing twice."""
    import json

    import yaml

    maps = {"dense": [0.1, 0.3, 0.5, 0.6, 0.6, 0.601], "control": [0.55, 0.6, 0.603],
            "pruned_distill": [0.5, 0.58, 0.59], "quant": [0.59, 0.595, 0.596],
            "pruned_quant_distill": [0.5, 0.57, 0.594], "relu_block4_quant": [0.4, 0.5, 0.58],
            "dense_continued_e3": [0.58, 0.62, 0.625], "dense_continued_e3_r2": [0.6, 0.62, 0.628]}
    commands = []

    def fake_train(command: list[str]) -> float:  # writes what train.py would: opt.yaml, results.csv, weights
        commands.append(command)
        flags, settings = train_flags_and_settings(command)
        name = flags["name"]
        variant = name if name in maps else re.sub(r"_(e3|lowlr|continued3_e3)$", "", name)
        phases = (["dense"] * len(maps[variant]) if variant.startswith(("dense", "control"))
                  else ["pruned"] * 2 + ["quantized"])
        fake_run(Path(flags["project"]) / name, settings, maps[variant], phases)
        (Path(flags["project"]) / name / "opt.yaml").write_text(yaml.safe_dump(settings))
        return 0.0

    monkeypatch.setattr(runs, "run_command", fake_train)
    monkeypatch.setattr(protocol, "run_minutes", lambda run_dir: 1.0)
    variants = ("pruned_quant_distill", "relu_block4_quant", "pruned_distill", "quant")  # sensitivity: own test
    result = protocol.accuracy(6, 3, 160, 32, "data/shapes_tiny.yaml", variants, continue_epochs=0,
                               project=tmp_path, curve=tmp_path / "curve.png", attempt="e3")
    # 3 epochs is not the protocol's fine-tune length: those runs get folders of their own (an attempt never
    # replaces the protocol's runs); the dense start is shared.
    assert [c[c.index("--name") + 1] for c in commands] == ["dense", "control_e3", "pruned_quant_distill_e3",
                                                              "relu_block4_quant_e3", "pruned_distill_e3", "quant_e3"]
    assert protocol.attempt_name(protocol.PROTOCOL_FINETUNE_EPOCHS) == ""
    assert protocol.attempt_name(60) == "e60" and protocol.attempt_name(30, "lowlr") == "lowlr"
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    assert result["start_map"] == 0.601 and result["baseline"] == "control" and result["baseline_map"] == 0.603
    assert result["convergence"]["epochs"] == 6 and result["control_rise"] == pytest.approx(0.603 / 0.601 - 1)
    recoveries = {r["name"]: round(r["recovery"], 4) for r in result["sparse"]}
    assert recoveries == {"pruned_distill": round(0.59 / 0.603, 4), "quant": round(0.596 / 0.603, 4),
                          "pruned_quant_distill": round(0.594 / 0.603, 4), "relu_block4_quant": round(0.58 / 0.603, 4)}
    relu = next(c for c in commands if c[c.index("--name") + 1] == "relu_block4_quant_e3")
    assert json.loads(relu[relu.index("--recipe-args") + 1])["mask_type"] == [1, 4]
    commands.clear()
    again = protocol.accuracy(6, 3, 160, 32, "data/shapes_tiny.yaml", variants, continue_epochs=0,
                              project=tmp_path, curve=tmp_path / "c.png", attempt="e3")
    assert commands == [] and again["dense_reused"] and again["control_reused"]
    # an attempt with other learning rates: its own control and runs, the overrides in their recipe arguments
    protocol.accuracy(6, 3, 160, 32, "data/shapes_tiny.yaml", variants=("quant",), continue_epochs=0,
                      project=tmp_path, curve=tmp_path / "c.png",
                      finetune_overrides={"init_lr": 0.0005, "qat_init_lr": 5e-05}, attempt="lowlr")
    assert [c[c.index("--name") + 1] for c in commands] == ["control_lowlr", "quant_lowlr"]
    control_args, quant_args = (json.loads(c[c.index("--recipe-args") + 1]) for c in commands)
    assert control_args["init_lr"] == 0.0005 and quant_args["qat_init_lr"] == 5e-05
    # a continued start: the dense run trained on in rounds at the fine-tune's schedule until a round gains under 1%;
    # the round before is the start of the sparse runs (and their teacher), the last round its control
    commands.clear()
    name = protocol.attempt_name(3, continue_epochs=3)
    continued = protocol.accuracy(6, 3, 160, 32, "data/shapes_tiny.yaml", variants=("pruned_quant_distill",),
                                  project=tmp_path, curve=tmp_path / "continued.png", attempt=name, continue_epochs=3)
    assert name == "continued3_e3"
    assert [c[c.index("--name") + 1] for c in commands] == ["dense_continued_e3", "dense_continued_e3_r2",
                                                              "pruned_quant_distill_continued3_e3"]
    start = str(tmp_path / "dense_continued_e3" / "weights" / "best.pt")
    assert commands[0][commands[0].index("--weights") + 1] == str(tmp_path / "dense" / "weights" / "best.pt")
    assert commands[1][commands[1].index("--weights") + 1] == start
    sparse = commands[2]
    assert sparse[sparse.index("--weights") + 1] == sparse[sparse.index("--teacher-weights") + 1] == start
    assert continued["start_map"] == 0.625 and continued["continued"]["from_map"] == 0.601
    assert continued["continued"]["converged"] and continued["continued"]["start"] == "dense_continued_e3"
    assert continued["control_map"] == 0.628 and continued["control_reused"]  # the confirming round, not rerun
    assert [round(r["rise"], 4) for r in continued["continued"]["rounds"]] == [round(0.625 / 0.601 - 1, 4),
                                                                                 round(0.628 / 0.625 - 1, 4)]
    assert continued["dense_best_epoch"] == 5 and (tmp_path / "continued.png").stat().st_size > 10_000
    assert protocol.start_folder(3, tmp_path) == "dense_continued_e3"  # what the runtime section times
    # rounds under an attempt's other hyperparameters never share the protocol's round folders
    assert protocol.round_folder(100, 1) == "dense_continued_e100"
    assert protocol.round_folder(100, 2, "data/hyps/hyp.scratch-low.yaml") == "dense_continued_e100_hyp_scratch-low_r2"
    text = "\n".join(protocol.attempt_markdown({**continued, "attempt": name, "command": "c", "date": "d",
                                                "machine": "m"}))
    assert "that run (0.601) was trained on dense in rounds of 3 epochs" in text
    assert "round 1 0.625 (+4.0%), round 2 0.628 (+0.5%); the start is dense_continued_e3 (0.625)" in text


def test_the_header_names_the_sections_whose_maps_predate_the_val_fix() -> None:
    results = {"commands": {"accuracy": {"date": "2026-12-05 09:00 UTC"}, "runtime": {"date": "2026-11-28 11:57 UTC"},
                            "scratch": {"date": "2026-12-05 11:36 UTC"}, "demo": {"date": "2026-12-04 10:00 UTC"}}}
    (note,) = report.val_fix_note(results)
    assert "not re-measured" in note and note.endswith("runtime; compare their ratios, not their mAPs with the "
                                                       "other sections'.")
    results["commands"]["runtime"]["date"] = "2026-12-06 08:00 UTC"
    assert "not re-measured" not in report.val_fix_note(results)[0]


def test_an_attempt_from_another_dense_run_draws_its_own_curve() -> None:
    """The protocol's convergence curve is redrawn only by runs that start from the protocol's dense model; an
    attempt at another size (it overwrote BENCHMARKS_dense_curve.png once) writes a curve of its own."""
    from benchmarks import cli

    def options(*flags: str):
        return cli.build_parser().parse_args(["--only", "accuracy", *flags])

    assert not cli.own_start(options())  # e.g. --attempt lowlr: the same start, the same curve
    assert cli.own_start(options("--imgsz", "128"))
    assert cli.own_start(options("--epochs", "700"))
    assert cli.own_start(options("--continue-epochs", "0"))  # the run from scratch alone, before 2026-12-07
    assert cli.own_start(options("--project", "runs/bench/protocol128"))


def test_an_attempt_from_its_own_dense_run_says_so_and_lists_that_start() -> None:
    """An attempt at another size trains its own dense model: its section may not call it "the same start"."""
    attempt = {"attempt": "s700_128", "finetune_epochs": 100, "command": "python benchmarks.py ...", "date": "d",
               "machine": "m", "finetune_args": {"pruning_end_epoch": 40.0}, "data": protocol.PROTOCOL_DATA,
               "imgsz": 128, "dense_epochs": 700, "dense_minutes": 70.4, "dense_best_epoch": 477,
               "convergence": {"epochs": 578, "window": 30, "rise": 0.004}, "curve": "BENCHMARKS_dense_curve_x.png",
               "start_map": 0.454, "start_map50": 0.66, "control_map": 0.48, "control_map50": 0.7,
               "control_rise": 0.057, "control_minutes": 13, "baseline": "control", "baseline_map": 0.48,
               "sparse": []}
    text = "\n".join(protocol.attempt_markdown(attempt))
    assert "The same start" not in text
    assert "at 128 px, 700 epochs, stopped by --patience after epoch 577 (70 min), best epoch 477" in text
    assert "| start (dense) | 0.660 | 0.454 | 0 | 94.6% | 70 |" in text
    protocol_attempt = {**attempt, "imgsz": protocol.PROTOCOL_IMGSZ, "dense_epochs": protocol.PROTOCOL_EPOCHS,
                        "convergence": {"epochs": protocol.PROTOCOL_EPOCHS, "window": 30, "rise": 0.004}}
    assert "The same start" in "\n".join(protocol.attempt_markdown(protocol_attempt))
    # the protocol's command retrained on another machine gave another model: not "the same start" either
    elsewhere = "\n".join(protocol.attempt_markdown({**protocol_attempt, "other_start": True}))
    assert "The same start" not in elsewhere and "retrained on this attempt's machine" in elsewhere
    assert "| start (dense) | 0.660 | 0.454 |" in elsewhere
    # beside the protocol's section: the same start only if it is the same model; a protocol whose start is a
    # continued round makes the run from scratch alone another start
    same = {**protocol_attempt, "other_start": True}
    assert "The same start" in "\n".join(protocol.attempt_markdown(same, {"start_map": 0.454, "dense_best_epoch": 477}))
    continued = {"start_map": 0.468, "dense_best_epoch": 477, "continued": {"start": "dense_continued_e100",
                                                                             "epochs": 100}}
    text = "\n".join(protocol.attempt_markdown(protocol_attempt, continued))
    assert "The same start" not in text and "without the dense rounds of 100 epochs that lead to the protocol's" in text
    # a row of an earlier run of the attempt is marked with the command that trained it
    row = {"name": "pruned_quant_distill", "map50": 0.6, "map": 0.43, "sparsity": 0.769, "recovery": 0.9,
           "minutes": 6, "kept_from": "`python benchmarks.py --attempt s700_128 --variants a b`, d0"}
    kept = "\n".join(protocol.attempt_markdown({**attempt, "sparse": [row]}))
    assert "| pruned_quant_distill * | 0.600 | 0.430 |" in kept
    assert "\\* trained by an earlier run of the section with the same dense start: `python benchmarks.py " \
           "--attempt s700_128 --variants a b`, d0." in kept


def test_an_attempt_with_the_protocols_settings_shares_its_curve_only_if_it_trained_the_same_model(tmp_path) -> None:
    """Retrained on another CPU, the protocol's dense command gives another model (AMD EPYC: best epoch 280,
    0.462, against 291 and 0.483 on the Xeon): that attempt keeps a curve of its own and says so; the protocol's
    curve and text are left alone."""
    from benchmarks import cli

    section = {"start_map": 0.483, "dense_best_epoch": 291, "curve": "BENCHMARKS_dense_curve.png"}
    curve = tmp_path / "BENCHMARKS_dense_curve_e100.png"
    curve.write_bytes(b"png")
    same = cli.shared_or_other_start({"start_map": 0.483, "dense_best_epoch": 291, "curve": str(curve)}, section,
                                     curve)
    assert same["curve"] == "BENCHMARKS_dense_curve.png" and not same.get("other_start") and not curve.exists()
    curve.write_bytes(b"png")
    other = cli.shared_or_other_start({"start_map": 0.462, "dense_best_epoch": 280, "curve": str(curve)}, section,
                                      curve)
    assert other["other_start"] and other["curve"] == str(curve) and curve.exists()


@pytest.mark.parametrize("flags", [["--finetune-hyp", "data/hyps/hyp.scratch-low.yaml"],
                                   ["--finetune-args", '{"init_lr": 0.001}']])
def test_fine_tune_settings_other_than_the_protocols_need_an_attempt_name(flags, monkeypatch, capsys) -> None:
    """Another augmentation or learning rate is another protocol: without --attempt it would overwrite the
    protocol's table with results that are not comparable to it. Refused before anything trains."""
    import sys

    from benchmarks import cli

    monkeypatch.setattr(cli, "accuracy", lambda *a, **k: pytest.fail("trained despite the refusal"))
    monkeypatch.setattr(sys, "argv", ["benchmarks.py", "--only", "accuracy", *flags])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 2 and "name the attempt with --attempt NAME" in capsys.readouterr().err


def test_the_sensitivity_variant_fine_tunes_with_the_layout_measured_on_its_start_and_measures_it_once(
        tmp_path, monkeypatch) -> None:
    """sensitivity.py runs on the start before the fine-tune that uses its recipe; a rerun reuses the analysis of the
    same start and settings, and the table names the template recipe, not the machine's path to the layout."""
    import json

    from utils.sparsification.sensitivity import layout_recipe

    analyses, trainings = [], []
    fake_layout = {"model.8.cv1.conv.weight": 0.95, "model.2.cv1.conv.weight": 0.3}

    def fake_sensitivity(command: list[str]) -> float:  # writes what sensitivity.py writes
        analyses.append(command)
        flags = {command[i].lstrip("-"): command[i + 1] for i in range(len(command) - 1)
                 if command[i] in ("--weights", "--data", "--imgsz", "--target", "--project", "--name", "--recipe")}
        out = Path(flags["project"]) / flags["name"]
        out.mkdir(parents=True, exist_ok=True)
        (out / "sensitivity.json").write_text(json.dumps({
            "weights": flags["weights"], "data": flags["data"], "imgsz": int(flags["imgsz"]),
            "levels": list(protocol.SENSITIVITY_LEVELS), "target": float(flags["target"])}))
        (out / f"{Path(flags['recipe']).stem}.sensitivity.yaml").write_text(layout_recipe(
            (protocol.ROOT / flags["recipe"]).read_text(encoding="utf-8"), fake_layout, "# t"))
        return 0.0

    def fake_train(command: list[str]) -> float:
        trainings.append(command)
        flags, settings = train_flags_and_settings(command)
        maps, phases = {"dense": ([0.5, 0.55, 0.6, 0.6, 0.6, 0.6], ["dense"] * 6),
                        "control_e3": ([0.58, 0.6, 0.6], ["dense"] * 3)}.get(
            flags["name"], ([0.5, 0.55, 0.58], ["pruned", "pruned", "quantized"]))
        fake_run(Path(flags["project"]) / flags["name"], settings, maps, phases)
        return 0.0

    monkeypatch.setattr(runs, "run_command", fake_train)
    monkeypatch.setattr(protocol, "run_command", fake_sensitivity)
    monkeypatch.setattr(protocol, "run_minutes", lambda run_dir: 1.0)
    result = protocol.accuracy(6, 3, 160, 32, "data/shapes_tiny.yaml", variants=("pruned_quant_distill_sens",),
                               continue_epochs=0, project=tmp_path, curve=tmp_path / "curve.png", attempt="e3")
    start = tmp_path / "dense" / "weights" / "best.pt"
    assert len(analyses) == 1 and analyses[0][0] == "sensitivity.py"
    analysis = {flag: analyses[0][i + 1] for i, flag in enumerate(analyses[0][:-1]) if flag.startswith("--")}
    assert analysis["--weights"] == str(start) and analysis["--recipe"] == protocol.FINETUNE_RECIPE
    assert float(analysis["--target"]) == protocol.SENSITIVITY_TARGET >= 0.75
    sparse = trainings[-1]
    recipe = sparse[sparse.index("--sparsification-recipe") + 1]
    layout = tmp_path / "sensitivity_dense" / "yolov5n.pruned_quant.sensitivity.yaml"
    assert Path(recipe).parent == layout.parent and Path(recipe).read_text() == layout.read_text()
    assert re.fullmatch(r"yolov5n\.pruned_quant\.sensitivity\.[0-9a-f]{8}\.yaml", Path(recipe).name)
    recipe_args = json.loads(sparse[sparse.index("--recipe-args") + 1])
    assert recipe_args["init_lr"] == protocol.FINETUNE_ARGS["init_lr"] and recipe_args["pruning_end_epoch"] == 1.2
    assert not any(key.startswith("final_sparsity") for key in recipe_args)  # the layout decides every sparsity
    assert sparse[sparse.index("--teacher-weights") + 1] == str(start)
    assert sparse[sparse.index("--hyp") + 1] == protocol.PROTOCOL_FINETUNE_HYP
    row = result["sparse"][0]
    assert row["recipe"] == protocol.FINETUNE_RECIPE and "sensitivity.py" in row["note"]
    assert str(tmp_path) not in json.dumps(result["sparse"])
    analyses.clear()
    protocol.accuracy(6, 3, 160, 32, "data/shapes_tiny.yaml", variants=("pruned_quant_distill_sens",),
                      continue_epochs=0, project=tmp_path, curve=tmp_path / "curve.png", attempt="e3")
    assert analyses == []  # the same start and settings: the analysis and its recipe are reused
    assert "--reuse" not in analysis
    monkeypatch.setattr(protocol, "SENSITIVITY_TARGET", 0.8)
    protocol.accuracy(6, 3, 160, 32, "data/shapes_tiny.yaml", variants=("pruned_quant_distill_sens",),
                      continue_epochs=0, project=tmp_path, curve=tmp_path / "curve.png", attempt="e3")
    assert len(analyses) == 1  # another target: laid out again from the stored measurements of the same start
    assert analyses[0][analyses[0].index("--reuse") + 1] == str(tmp_path / "sensitivity_dense" / "sensitivity.json")

    # pruning alone with the same layout: laid out in the pruning-only recipe from the same measurements
    analyses.clear()
    protocol.accuracy(6, 3, 160, 32, "data/shapes_tiny.yaml", variants=("pruned_distill_sens",),
                      continue_epochs=0, project=tmp_path, curve=tmp_path / "curve.png", attempt="e3")
    assert len(analyses) == 1 and analyses[0][analyses[0].index("--recipe") + 1] == "recipes/yolov5n.pruned.yaml"
    assert "--reuse" in analyses[0]
    pruned = trainings[-1][trainings[-1].index("--sparsification-recipe") + 1]
    assert re.fullmatch(r"yolov5n\.pruned\.sensitivity\.[0-9a-f]{8}\.yaml", Path(pruned).name)

    # the speed-first file at its own target: a layout of its own, from the same measurements, pruned in 4-blocks
    monkeypatch.undo()
    monkeypatch.setattr(runs, "run_command", fake_train)
    monkeypatch.setattr(protocol, "run_command", fake_sensitivity)
    monkeypatch.setattr(protocol, "run_minutes", lambda run_dir: 1.0)
    analyses.clear()
    protocol.accuracy(6, 3, 160, 32, "data/shapes_tiny.yaml", variants=("relu_block4_quant_sens",),
                      continue_epochs=0, project=tmp_path, curve=tmp_path / "curve.png", attempt="e3")
    relu_analysis = {flag: analyses[0][i + 1] for i, flag in enumerate(analyses[0][:-1]) if flag.startswith("--")}
    assert relu_analysis["--target"] == "0.8" and relu_analysis["--name"] == "sensitivity_dense_t0.8"
    assert relu_analysis["--reuse"] == str(tmp_path / "sensitivity_dense" / "sensitivity.json")
    relu = trainings[-1]
    assert Path(relu[relu.index("--sparsification-recipe") + 1]).parent.name == "sensitivity_dense_t0.8"
    assert relu[relu.index("--cfg") + 1] == "yolov5n-relu.yaml"
    assert json.loads(relu[relu.index("--recipe-args") + 1])["mask_type"] == [1, 4]

    # a changed layout under the same file name is not the finished run of the old one: nothing is overwritten
    fake_layout["model.8.cv1.conv.weight"] = 0.9
    (tmp_path / "sensitivity_dense" / "sensitivity.json").unlink()  # analysed anew (say, by a newer layout rule)
    with pytest.raises(SystemExit, match="holds a run of other settings"):
        protocol.accuracy(6, 3, 160, 32, "data/shapes_tiny.yaml", variants=("pruned_quant_distill_sens",),
                          continue_epochs=0, project=tmp_path, curve=tmp_path / "curve.png", attempt="e3")
