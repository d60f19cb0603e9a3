"""Interruptions and faults lose nothing.

A pruning + QAT run (recipes/demo.yaml scaled to 4 epochs) is killed with SIGKILL during a training step, during
validation, at a random moment, during a checkpoint write and while finishing (after the last epoch), resumed with
``--resume`` each time, and must end with the same masks, sparsity, epoch count and weights as an uninterrupted run
with the same seed. After every kill ``weights/last.pt`` loads. A non-finite loss, weights that became non-finite,
and a checkpoint write that fails (permission denied, disk full) stop the run with a message and leave the last
good checkpoint on disk.

Kill points come from a launcher (``LAUNCHER``) that runs train.py unchanged after wrapping one function for that
process only: the wrapper prints a marker when the chosen call happens and waits there, so the SIGKILL that follows
lands inside that step, that validation or that checkpoint write. The random kill uses no wrapper at all.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

import train
from utils.checkpoint import load_checkpoint
from utils.sparsification.structure import unpack_mask

ROOT = Path(__file__).resolve().parents[1]
MARKER = "@@KILL-POINT"

# KILL_POINT=step:N  -> wait after the N-th loss.backward() (gradients computed, optimizer not stepped yet)
# KILL_POINT=val:N   -> wait at the N-th validation forward pass
# KILL_POINT=save:E  -> wait inside the first torch.save of an epoch-E checkpoint: the temporary file is written, the
#                       rename over last.pt has not happened
LAUNCHER = r"""
import os, runpy, sys, time
import torch
kind, _, value = os.environ.get("KILL_POINT", "none:0").partition(":")
calls = [0]

def wait_here(label):
    print(f"\n@@KILL-POINT {label}", flush=True)
    time.sleep(600)

if kind == "step":
    backward = torch.Tensor.backward
    def counted_backward(self, *args, **kwargs):
        backward(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == int(value):
            wait_here(f"step {value}")
    torch.Tensor.backward = counted_backward
elif kind == "val":
    import val
    forward = val._forward
    def counted_forward(*args, **kwargs):
        calls[0] += 1
        if calls[0] == int(value):
            wait_here(f"validation batch {value}")
        return forward(*args, **kwargs)
    val._forward = counted_forward
elif kind == "save":
    save = torch.save
    def watched_save(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        if isinstance(obj, dict) and obj.get("epoch") == int(value) and not calls[0]:
            calls[0] += 1
            wait_here(f"checkpoint write of epoch {value}")
    torch.save = watched_save
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train and 2 val images of 64 px: one optimizer step per epoch at batch 4."""
    from data.scripts.make_shapes import generate

    root = tmp_path_factory.mktemp("interrupt")
    generate(root / "shapes", num_train=4, num_val=2, imgsz=64, seed=3)
    names = ["circle", "square", "triangle", "star", "hexagon", "cross"]
    (root / "shapes.yaml").write_text(yaml.safe_dump({"path": str(root / "shapes"), "train": "images/train",
                                                      "val": "images/val", "names": dict(enumerate(names))}))
    return root / "shapes.yaml"


def _sparse_run(data: Path, project: Path, name: str) -> list[str]:
    return ["--data", str(data), "--cfg", "yolov5n.yaml", "--weights", "", "--imgsz", "64", "--batch-size", "4",
            "--workers", "0", "--epochs", "4", "--noplots", "--seed", "0", "--recipe", "recipes/demo.yaml",
            "--project", str(project), "--name", name]


def _env(kill_point: str | None) -> dict[str, str]:
    env = {**os.environ, "NM_DISABLE_ANALYTICS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("KILL_POINT", None)
    if kill_point:
        env["KILL_POINT"] = kill_point
    return env


def run_and_kill(arguments: list[str], kill_point: str | None = None,
                 after_seconds: float | None = None) -> tuple[bool, float]:
    """Start train.py; SIGKILL it at the kill point, or after ``after_seconds`` unless it finished by then.

    Returns whether it was killed and how many seconds it ran.
    """
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", LAUNCHER, *arguments], cwd=ROOT, env=_env(kill_point),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reached = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if MARKER in line:  # a progress bar may precede it on the same line
                reached.set()
        reached.set()  # the process ended without reaching the kill point

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if kill_point:
        reached.wait(timeout=300)
    else:
        reached.wait(timeout=after_seconds)
    seconds = time.monotonic() - started
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    reader.join(timeout=10)
    output = "".join(lines)
    if kill_point:
        assert MARKER in output, f"{kill_point} never reached:\n{output[-3000:]}"
    killed = process.returncode == -signal.SIGKILL
    assert killed or (not kill_point and process.returncode == 0), output[-3000:]
    return killed, seconds


def run_to_the_end(arguments: list[str]) -> str:
    result = subprocess.run([sys.executable, "-c", LAUNCHER, *arguments], cwd=ROOT, env=_env(None),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def _last_epoch(weights: Path) -> int | None:
    """The epoch of last.pt, which must always load (None before the first checkpoint)."""
    last = weights / "last.pt"
    return load_checkpoint(last)["epoch"] if last.exists() else None


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_masks_sparsity_epochs_and_weights(dataset: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    run_to_the_end(_sparse_run(dataset, tmp_path, "straight"))

    weights = tmp_path / "killed" / "weights"
    resume = ["--resume", str(weights / "last.pt"), "--workers", "0"]
    # One optimizer step and one validation batch per epoch; a resumed run counts its own calls from 1.
    run_and_kill(_sparse_run(dataset, tmp_path, "killed"), "step:2")  # the training step of epoch 1
    assert _last_epoch(weights) == 0
    _, seconds = run_and_kill(resume, "val:2")  # validation of epoch 2 (the resumed run validates epoch 1 first)
    assert _last_epoch(weights) == 1
    # A moment nobody chose (start-up, restore, a step, validation, a write): a random share of the time the last
    # resume ran, so it lands inside this resume (from epoch 1, with more to do) on a fast or a slow machine.
    run_and_kill(resume, after_seconds=random.Random(0).uniform(0.2, 0.8) * seconds)
    assert _last_epoch(weights) in (1, 2)
    run_and_kill(resume, "save:3")  # inside the write of the final epoch's last.pt
    assert _last_epoch(weights) == 2
    assert list(weights.glob(".last.pt.*.tmp")), "the kill did not land inside the checkpoint write"
    run_and_kill(resume, "val:2")  # the end of the run: validating best.pt after epoch 3's validation
    last = load_checkpoint(weights / "last.pt")
    assert last["epoch"] == 3 and last["final"] and last["optimizer"] is not None  # all epochs done, end unfinished
    run_to_the_end(resume)  # only finishes the run: strips the optimizers, validates, reports

    expected = load_checkpoint(straight / "weights" / "last.pt")
    got = load_checkpoint(weights / "last.pt")
    assert got["epoch"] == expected["epoch"] == 3 and got["final"] and expected["final"]
    expected_masks, got_masks = expected["sparsification"]["masks"], got["sparsification"]["masks"]
    assert expected_masks and got_masks.keys() == expected_masks.keys()
    for name, packed in expected_masks.items():
        assert torch.equal(unpack_mask(got_masks[name]), unpack_mask(packed)), name
    assert got["sparsification"]["sparsity"] == expected["sparsification"]["sparsity"] > 0.5
    assert got["sparsification"]["is_quantized"] and expected["sparsification"]["is_quantized"]
    assert got["model"].keys() == expected["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(got["model"][key], value), key
    straight_rows = (straight / "results.csv").read_text().splitlines()
    killed_rows = (weights.parent / "results.csv").read_text().splitlines()
    assert len(killed_rows) == len(straight_rows) == 5  # header + epochs 0-3, no repeated epoch
    assert killed_rows == straight_rows
    assert not list(weights.glob(".*.tmp"))  # the interrupted write's temporary file was cleaned up on resume
    assert got["optimizer"] is None and (weights.parent / "sparsity.json").is_file()


# ------------------------------------------------------------------------------------------ faults, in process
TINY = {"cfg": "yolov5n.yaml", "weights": "", "imgsz": 64, "batch_size": 4, "workers": 0, "noplots": True,
        "epochs": 2, "name": "exp", "hyp": str(ROOT / "data" / "hyps" / "hyp.scratch-low.yaml")}


@contextmanager
def _root_logging_restored():
    """train.main() reconfigures logging and adds a train.log handler; put the test's logging back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level


def _nan_loss_in_epoch_1(monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.loss import ComputeLoss

    original, calls = ComputeLoss.__call__, [0]

    def loss(self, predictions, targets):
        total, items = original(self, predictions, targets)
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] == 2:  # the first (and only) batch of epoch 1
                total = total * float("nan")
        return total, items
    monkeypatch.setattr(ComputeLoss, "__call__", loss)


def _nan_weights_in_epoch_1(monkeypatch: pytest.MonkeyPatch) -> None:
    original, calls = torch.optim.SGD.step, [0]

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 2:  # epoch 1's optimizer step blows the weights up after a finite loss
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result
    monkeypatch.setattr(torch.optim.SGD, "step", step)


def _permission_denied_after_epoch_0(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    original = tempfile.mkstemp

    def mkstemp(*args, dir=None, prefix=None, **kwargs):
        if prefix == ".last.pt." and (Path(dir) / "last.pt").exists():
            raise PermissionError(13, "Permission denied", str(dir))
        return original(*args, dir=dir, prefix=prefix, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _disk_full_in_epoch_1(monkeypatch: pytest.MonkeyPatch) -> None:
    original = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 1:
            f.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return original(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "message"), [
    (_nan_loss_in_epoch_1, "non-finite loss at epoch 1, batch 0"),
    (_nan_weights_in_epoch_1, "non-finite weights after epoch 1; stopping before they are saved"),
    (_permission_denied_after_epoch_0, "Permission denied"),
    (_disk_full_in_epoch_1, "No space left on device"),
], ids=["nan-loss", "nan-weights", "permission-denied", "disk-full"])
def test_a_fault_stops_the_run_and_keeps_the_last_good_checkpoint(fault, message, dataset: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fault(monkeypatch)
    with _root_logging_restored(), pytest.raises(SystemExit) as exit_info:
        train.run(**TINY, data=str(dataset), project=str(tmp_path))
    monkeypatch.undo()
    assert exit_info.value.code == 1
    error = str(exit_info.value.__cause__)
    assert message in error
    weights = tmp_path / "exp" / "weights"
    assert "loss" in message or str(weights) in error  # names the folder that keeps the last good checkpoint
    if "could not write checkpoint" in error:
        assert f"{weights / 'last.pt'}" in error and "the previous checkpoint (if any) is intact" in error
    last = load_checkpoint(weights / "last.pt")
    assert last["epoch"] == 0 and not last["final"]
    assert all(torch.isfinite(value).all() for value in last["model"].values())
    assert not list(weights.glob(".*.tmp"))
    # and the run continues from there once the fault is gone
    with _root_logging_restored():
        assert train.run(resume=str(weights / "last.pt"), workers=0)["epochs"] == 2
    assert load_checkpoint(weights / "last.pt")["final"]
