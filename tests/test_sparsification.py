"""Recipe-driven sparsification: real SparseML modifiers on a real yolov5n, driven through the training-loop hooks.

One uninterrupted pruning + QAT run (6 tiny epochs) is shared by most specifications; resumed runs, fine-tuning and
the guide-style recipe run their own short loops. Inputs are random 64 px images with a few random boxes, seeded per
step, so two runs see the same data.
"""

from __future__ import annotations

import copy
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

import train as train_py
from models.yolo import DetectionModel
from utils.ema import ModelEMA
from utils.loss import ComputeLoss
from utils.optim import build_optimizer
from utils.sparsification import create_sparsifier, restore_structure
from utils.sparsification.recipes import RecipeError, load_recipe, parse_recipe_args
from utils.sparsification.structure import canonical_names, unpack_mask

ROOT = Path(__file__).resolve().parents[1]
IMG, BATCH, STEPS = 64, 2, 2
HYP = {"box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0}
PRUNED = r"re:^model\.([1-9]|1[0-9]|2[0-3])\..*conv\.weight$"  # every conv but the stem and Detect

# GMP from 0.5 to 2 with an update every epoch (at 0.5, 1.5, then 2.0 when it ends), QAT from 3, BN and observers
# frozen at 4. Updates fall mid-epoch on purpose: a manager rebuilt at an epoch boundary without the saved schedule
# state would prune at that boundary instead (different masks), so the resume test can tell.
PRUNE_QUANT = rf"""
version: 1.1.0
num_epochs: 5
pruning_start_epoch: 0.5
pruning_end_epoch: 2
qat_start_epoch: 3
freeze_epoch: 4
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
pruning_modifiers:
  - !GMPruningModifier
    params: ['{PRUNED}']
    init_sparsity: 0.05
    final_sparsity: 0.8
    start_epoch: eval(pruning_start_epoch)
    end_epoch: eval(pruning_end_epoch)
    update_frequency: 1.0
    leave_enabled: True
quantization_modifiers:
  - !QuantizationModifier
    start_epoch: eval(qat_start_epoch)
    disable_quantization_observer_epoch: eval(freeze_epoch)
    freeze_bn_stats_epoch: eval(freeze_epoch)
    ignore: ['SiLU', 'Upsample', 'Concat', 'MaxPool2d']
"""

# As in SparseML's YOLOv5 guide: __ALL_PRUNABLE__, a fixed then cosine LR, and a bare QuantizationModifier.
GUIDE = """
version: 1.1.0
num_epochs: 3
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
  - !SetLearningRateModifier
    start_epoch: 0.0
    learning_rate: 0.01
  - !GMPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.05
    final_sparsity: 0.8
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
  - !LearningRateFunctionModifier
    start_epoch: 1.0
    end_epoch: eval(num_epochs)
    lr_func: cosine
    init_lr: 0.01
    final_lr: 0.0001
  - !QuantizationModifier
    start_epoch: 2.0
    freeze_bn_stats_epoch: 2.5
"""

SCALABLE = f"""
version: 1.1.0
num_epochs: 10
pruning_end_epoch: 6
qat_start_epoch: 8
init_sparsity: 0.05
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
  - !GMPruningModifier
    params: ['{PRUNED}']
    init_sparsity: eval(init_sparsity)
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: eval(pruning_end_epoch)
    update_frequency: 1.0
  - !QuantizationModifier
    start_epoch: eval(qat_start_epoch)
"""


def recipe_text(body: str, **replacements: str) -> str:
    for old, new in replacements.items():
        body = body.replace(old, new)
    return body


_TEMPLATE: list[DetectionModel] = []


def new_model() -> DetectionModel:
    """The same freshly initialised yolov5n every time (built once, then copied: building probes a 256 px forward)."""
    if not _TEMPLATE:
        torch.manual_seed(0)
        _TEMPLATE.append(DetectionModel("yolov5n.yaml", nc=3))
    model = copy.deepcopy(_TEMPLATE[0])
    model.hyp = dict(HYP)
    return model


def batch(epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * epoch + step)
    images = torch.rand(BATCH, 3, IMG, IMG, generator=generator)
    centers = torch.rand(4, 2, generator=generator) * 0.5 + 0.25
    sizes = torch.rand(4, 2, generator=generator) * 0.3 + 0.1
    classes = torch.randint(0, 3, (4, 1), generator=generator).float()
    image_index = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    return images, torch.cat([image_index, classes, centers, sizes], 1)


def weights_only_roundtrip(obj: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def masks_of(state: dict) -> dict[str, torch.Tensor]:
    return {name: unpack_mask(packed) for name, packed in state["masks"].items()}


def fake_quantizers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.ao.quantization.FakeQuantizeBase)]


def rebuild(checkpoint: dict) -> DetectionModel:
    """As val/export do: a fresh model, the recorded structure, then a strict load."""
    model = new_model()
    restore_structure(model, checkpoint["sparsification"])
    model.load_state_dict(checkpoint["model"], strict=True)
    return model


@dataclass
class Run:
    model: DetectionModel
    sparsifier: object
    plan: object
    epochs: dict[int, dict] = field(default_factory=dict)  # what was observed at the end of each epoch
    checkpoints: dict[int, dict] = field(default_factory=dict)  # weights-only round-tripped, as train.py saves them
    references: dict[int, nn.Module] = field(default_factory=dict)  # deep copies of the model at chosen epochs
    masked_nonzero: float = 0.0  # largest |weight| under a zero mask, model and EMA, after any optimizer step
    masked_checks: dict[int, int] = field(default_factory=dict)  # per epoch: optimizer steps the masks were checked
    distillation: dict[int, float] = field(default_factory=dict)  # per epoch: the largest loss the recipe added
    autocast: dict[int, set] = field(default_factory=dict)  # per epoch: autocast states seen by training forwards
    epoch: int = 0  # the epoch being trained


def loader(epoch: int) -> list[tuple]:
    """One epoch of batches as train.py's dataloader yields them: uint8 images, targets, paths, shapes."""
    batches = []
    for step in range(STEPS):
        images, targets = batch(epoch, step)
        batches.append(((images * 255).round().to(torch.uint8), targets, [f"{step}.jpg"] * BATCH, None))
    return batches


def watch(run: Run, sparsifier, model: nn.Module) -> None:
    """Record what the loop does without changing it: masked weights after each step, the loss the recipe adds, and
    whether training forwards ran under autocast."""
    after_step, add_loss = sparsifier.after_optimizer_step, sparsifier.loss_computed

    def after_optimizer_step(model: nn.Module, ema_model: nn.Module | None) -> None:
        after_step(model, ema_model)
        run.masked_nonzero = max(run.masked_nonzero, largest_masked_weight(sparsifier, model, ema_model))
        run.masked_checks[run.epoch] = run.masked_checks.get(run.epoch, 0) + 1

    def loss_computed(loss, predictions, images, targets):
        total = add_loss(loss, predictions, images, targets)
        run.distillation[run.epoch] = max(run.distillation.get(run.epoch, 0.0),
                                          float((total - loss).detach().abs().max()))
        return total

    sparsifier.after_optimizer_step, sparsifier.loss_computed = after_optimizer_step, loss_computed
    model.register_forward_pre_hook(lambda module, _: run.autocast.setdefault(run.epoch, set()).add(
        torch.is_autocast_enabled("cpu")) if module.training else None)


def train(sparsifier, model: DetectionModel, *, start_epoch: int = 0, checkpoint: dict | None = None,
          stop_after: int | None = None, keep: tuple[int, ...] = (), accumulate: int = 1,
          teacher: nn.Module | None = None, amp: bool = False) -> Run:
    """train.py's own epoch code on tiny random batches: its epoch-start directives, train_one_epoch and resume
    state, with the hooks in its order. ``amp`` starts with autocast (bfloat16 on the CPU, as float16 on CUDA) and
    loss scaling on, as a CUDA run does."""
    optimizer = build_optimizer(model, "SGD", lr=0.01, momentum=0.9, weight_decay=5e-4)
    ema = ModelEMA(model)
    scaler = torch.amp.GradScaler("cpu", enabled=amp)
    state = train_py.RunState(amp_enabled=amp)
    if checkpoint is not None:
        state = train_py.restore_run_state(checkpoint, optimizer, scaler, ema, model)
        assert state.start_epoch == start_epoch
    plan = sparsifier.optimizer_built(model, optimizer, scaler, steps_per_epoch=STEPS, start_epoch=start_epoch,
                                      default_epochs=3, teacher=teacher)
    scaler = plan.scaler
    loop = train_py.TrainingLoop(model=model, loader=None, optimizer=optimizer, scaler=scaler,
                                 compute_loss=ComputeLoss(model), sparsifier=sparsifier, ema=ema, epochs=plan.epochs,
                                 batch_size=train_py.NOMINAL_BATCH_SIZE // accumulate, imgsz=IMG,
                                 device=torch.device("cpu"), is_main=False)
    run = Run(model, sparsifier, plan)
    watch(run, sparsifier, model)
    validation_images = batch(99, 0)[0]
    first_ema = loop.active_ema(state)
    state.last_optimizer_step = start_epoch * STEPS - 1
    for epoch in range(start_epoch, plan.epochs):
        run.epoch = epoch
        directives = sparsifier.epoch_start(epoch)
        train_py.apply_epoch_directives(directives, state, scaler)
        loop.loader = loader(epoch)
        train_py.train_one_epoch(loop, state, epoch)
        ema = loop.active_ema(state)
        model.eval()
        with torch.no_grad():
            model(validation_images)
        final = epoch == plan.epochs - 1
        sparsification = sparsifier.checkpoint_state(epoch, final=final)
        run.checkpoints[epoch] = weights_only_roundtrip({
            "model": model.state_dict(), "ema": ema.ema.state_dict() if ema is not None else None,
            "ema_updates": ema.updates if ema is not None else 0, "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "best_fitness": 0.0, "phase_best_fitness": {},
            "options": {"phase": state.phase, "ema_enabled": state.ema_enabled, "amp_enabled": state.amp_enabled},
            "sparsification": sparsification})
        run.epochs[epoch] = {**observe(model, directives, sparsification), "ema_on": ema is not None,
                             "ema_updates": first_ema.updates if first_ema is not None else None,
                             "amp_enabled": state.amp_enabled, "scaler_enabled": scaler.is_enabled()}
        if epoch in keep:
            run.references[epoch] = copy.deepcopy(model)
        if epoch == stop_after:
            return run
    sparsifier.finalize(model)
    return run


def largest_masked_weight(sparsifier, model: nn.Module, ema_model: nn.Module | None) -> float:
    masks = sparsifier._active_masks()
    largest = 0.0
    for module in (model, ema_model):
        if module is None:
            continue
        by_id = {id(p): p for p in module.parameters()}
        parameters = {name: by_id[key] for key, name in canonical_names(module).items()}
        for name, mask in masks.items():
            largest = max(largest, float((parameters[name].detach() * (mask == 0)).abs().max()))
    return largest


def observe(model: nn.Module, directives, state: dict) -> dict:
    quantizers = fake_quantizers(model)
    conv_bns = [m for m in model.modules() if type(m).__name__ == "ConvBn2d"]
    return {
        "phase": directives.phase, "phase_changed": directives.phase_changed,
        "disable_ema": directives.disable_ema, "disable_amp": directives.disable_amp, "notes": directives.notes,
        "sparsity": state["sparsity"], "fake_quantizers": len(quantizers),
        "observers_on": sum(int(q.observer_enabled[0]) for q in quantizers),
        "bn_frozen": [bool(m.freeze_bn) for m in conv_bns],
        "masks": masks_of(state),
    }


@pytest.fixture(scope="module")
def full_run() -> Run:
    sparsifier = create_sparsifier(PRUNE_QUANT)
    model = new_model()
    sparsifier.model_built(model, None)
    return train(sparsifier, model, keep=(1, 3, 4), amp=True)


# ----------------------------------------------------------------------------------- schedule, masks, QAT, EMA


def test_recipe_decides_epochs_and_notes_say_so(full_run):
    assert full_run.plan.epochs == 5
    assert not full_run.plan.owns_learning_rate
    assert any("recipe sets 5 epochs" in note for note in full_run.plan.notes)


def test_sparsity_ramps_to_target_at_the_recipe_epochs(full_run):
    sparsity = [full_run.epochs[e]["sparsity"] for e in range(5)]
    assert sparsity[0] == pytest.approx(0.05, abs=0.005)  # init_sparsity at 0.5
    assert 0.05 < sparsity[1] < 0.8  # cubic ramp at 1.5
    for epoch in (2, 3, 4):  # end_epoch 2: the final update fires at the first step of epoch 2
        assert sparsity[epoch] == pytest.approx(0.8, abs=0.005)
    masks = full_run.epochs[4]["masks"]
    assert masks and not any(name.startswith(("model.0.", "model.24.")) for name in masks)
    assert all(".module." not in name for name in masks)  # float names, also while QAT wraps the convs


def test_phases_and_ema_amp_directives(full_run):
    observed = [full_run.epochs[e] for e in range(5)]
    assert [o["phase"] for o in observed] == ["pruned"] * 3 + ["pruned_quantized"] * 2
    assert [o["phase_changed"] for o in observed] == [True, False, False, True, False]
    assert [o["disable_ema"] for o in observed] == [False] * 3 + [True] * 2
    assert [o["disable_amp"] for o in observed] == [False] * 3 + [True] * 2
    assert any("QuantizationModifier start at epoch 3" in note for note in observed[3]["notes"])


def test_qat_start_turns_ema_and_amp_off_in_the_loop(full_run):
    """The loop obeys the directives: EMA updated at every step until QAT, then dropped and never updated again;
    training forwards run under autocast until QAT and in float32 after; the grad scaler does not scale QAT losses."""
    observed = [full_run.epochs[e] for e in range(5)]
    assert [o["ema_on"] for o in observed] == [True] * 3 + [False] * 2
    assert [o["ema_updates"] for o in observed] == [2, 4, 6, 6, 6]  # 2 optimizer steps per epoch, none in QAT
    assert full_run.checkpoints[3]["ema"] is None and full_run.checkpoints[2]["ema"] is not None
    assert [o["amp_enabled"] for o in observed] == [True] * 3 + [False] * 2
    assert [full_run.autocast[e] for e in range(5)] == [{True}] * 3 + [{False}] * 2
    assert [o["scaler_enabled"] for o in observed] == [True] * 3 + [False] * 2


def test_qat_starts_then_observers_and_bn_freeze_on_schedule(full_run):
    observed = [full_run.epochs[e] for e in range(5)]
    assert all(o["fake_quantizers"] == 0 for o in observed[:3])
    assert observed[3]["fake_quantizers"] > 100 and observed[3]["observers_on"] == observed[3]["fake_quantizers"]
    assert observed[3]["bn_frozen"] and not any(observed[3]["bn_frozen"])
    assert observed[4]["observers_on"] == 0
    assert all(observed[4]["bn_frozen"])
    assert full_run.sparsifier.is_quantized


def test_qat_quantizes_residual_adds_and_detect_convs_but_not_concat_or_decode(full_run):
    model = full_run.model
    bottleneck = model.model[2].m[0]
    assert type(bottleneck.add_op).__name__ == "QATWrapper"
    assert len(fake_quantizers(bottleneck.add_op.input_quant_stubs)) == 2
    assert all(type(conv).__name__ == "QuantWrapper" for conv in model.detect.m)
    assert type(model.model[12]).__name__ == "Concat" and type(model.model[-1]).__name__ == "Detect"


def test_pruned_weights_stay_zero_in_model_and_ema_after_every_step(full_run):
    # The loop must hand every epoch's optimizer steps to the sparsifier, or nothing re-masks the EMA.
    assert sorted(full_run.masked_checks) == list(range(5)) and min(full_run.masked_checks.values()) > 0
    assert full_run.masked_nonzero == 0.0
    weights = dict(full_run.model.named_parameters())
    ids = canonical_names(full_run.model)
    by_name = {ids[id(p)]: p for p in weights.values()}
    for name, mask in full_run.epochs[4]["masks"].items():
        assert (by_name[name].detach()[~mask] == 0).all()


@pytest.mark.parametrize("epoch", [1, 3, 4], ids=["pruned-intermediate", "qat-intermediate", "qat-final"])
def test_checkpoint_rebuilds_with_strict_load_and_identical_outputs(full_run, epoch):
    checkpoint = full_run.checkpoints[epoch]
    state = checkpoint["sparsification"]
    assert state["final"] == (epoch == 4) and state["epoch"] == epoch
    assert state["is_quantized"] == (epoch >= 3)
    rebuilt = rebuild(checkpoint).eval()
    reference = copy.deepcopy(full_run.references[epoch]).eval()
    images = batch(50, 0)[0]
    with torch.no_grad():
        expected, got = reference(images)[0], rebuilt(images)[0]
    assert torch.equal(expected, got)


def test_checkpoint_state_is_plain_data(full_run):
    state = full_run.checkpoints[4]["sparsification"]

    def check(value, path="state"):
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str), path
                check(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                check(item, f"{path}[{index}]")
        else:
            assert value is None or isinstance(value, (str, int, float, bool, torch.Tensor)), (path, type(value))

    check(state)
    assert state["phase"] == "pruned_quantized" and len(state["stages"]) == 1
    assert "GMPruningModifier" in state["recipe"] and "QuantizationModifier" in state["recipe"]
    packed_bytes = sum(m["bits"].numel() for m in state["masks"].values())
    masked = sum(math.prod(m["shape"]) for m in state["masks"].values())
    assert packed_bytes * 8 == pytest.approx(masked, abs=8 * len(state["masks"]))


# ----------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
@pytest.mark.parametrize("interrupt", [0, 3], ids=["mid-pruning", "mid-qat"])
def test_resumed_run_has_the_same_masks_and_sparsity_as_the_uninterrupted_one(full_run, interrupt):
    checkpoint = full_run.checkpoints[interrupt]
    model = rebuild(checkpoint)  # train.py: restore_structure + strict load of last.pt
    sparsifier = create_sparsifier(PRUNE_QUANT)
    sparsifier.model_built(model, checkpoint["sparsification"], resume=True)
    resumed = train(sparsifier, model, start_epoch=interrupt + 1, checkpoint=checkpoint, amp=True)
    for epoch in range(interrupt + 1, 5):
        expected, got = full_run.epochs[epoch], resumed.epochs[epoch]
        assert got["sparsity"] == expected["sparsity"], epoch
        assert got["masks"].keys() == expected["masks"].keys()
        assert all(torch.equal(got["masks"][n], expected["masks"][n]) for n in expected["masks"]), epoch
        for key in ("phase", "phase_changed", "disable_ema", "disable_amp", "fake_quantizers", "observers_on",
                    "bn_frozen", "ema_on", "amp_enabled", "scaler_enabled"):
            assert got[key] == expected[key], (epoch, key)
    assert resumed.masked_nonzero == 0.0
    final_expected, final_got = full_run.checkpoints[4]["model"], resumed.checkpoints[4]["model"]
    assert final_expected.keys() == final_got.keys()
    assert all(torch.equal(final_expected[k], final_got[k]) for k in final_expected)


def test_resume_needs_the_runs_own_state():
    sparsifier = create_sparsifier(PRUNE_QUANT)
    with pytest.raises(RecipeError, match="no sparsification state"):
        sparsifier.model_built(new_model(), None, resume=True)


# ------------------------------------------------------------------------------ recipes as users write them


@pytest.mark.slow
def test_guide_recipe_with_bare_quantization_modifier_trains_through_qat(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # SparseML's default logger would write ./sparse_logs here
    recipe = tmp_path / "guide.yaml"
    recipe.write_text(GUIDE)
    sparsifier = create_sparsifier(str(recipe))
    model = nn.DataParallel(new_model())  # DDP-style wrapper: hooks operate on .module
    sparsifier.model_built(model, None)
    inner = model.module
    run = train(sparsifier, inner, accumulate=2)  # gradient accumulation: skipped steps keep the schedule aligned
    assert run.plan.epochs == 3 and run.plan.owns_learning_rate
    assert any("SetLearningRateModifier" in n and "LearningRateFunctionModifier" in n for n in run.plan.notes)
    assert [run.epochs[e]["phase"] for e in range(3)] == ["pruned", "pruned", "pruned_quantized"]
    assert run.epochs[1]["sparsity"] == pytest.approx(0.8, abs=0.005)
    masks = run.epochs[2]["masks"]
    assert "model.0.conv.weight" in masks and "model.24.m.0.weight" in masks  # __ALL_PRUNABLE__: stem, Detect too
    assert run.epochs[2]["fake_quantizers"] > 100 and all(run.epochs[2]["bn_frozen"])
    assert type(inner.model[12]).__name__ == "Concat"  # left float: it takes a list
    assert type(inner.model[11]).__name__ == "QuantWrapper"  # Upsample quantized, as the bare modifier says
    assert list(tmp_path.iterdir()) == [recipe]
    rebuilt = rebuild(run.checkpoints[2]).eval()
    assert len(fake_quantizers(rebuilt)) == run.epochs[2]["fake_quantizers"]


# Neural Magic's YOLOv5 recipes use the legacy QuantizationModifier options (SparseML picks that class for them).
LEGACY_QUANTIZATION = """
version: 1.1.0
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 1.0
  - !QuantizationModifier
    start_epoch: 0.0
    submodules: ['model']
    custom_quantizable_module_types: ['SiLU']
    exclude_module_types: ['SiLU']
    quantize_conv_activations: False
    freeze_bn_stats_epoch: 0.5
"""


@pytest.mark.slow
def test_legacy_quantization_modifier_options_work_as_written():
    sparsifier = create_sparsifier(LEGACY_QUANTIZATION)
    model = new_model()
    sparsifier.model_built(model, None)
    assert type(sparsifier.manager.quantization_modifiers[0]).__module__.endswith("legacy_modifier_quantization")
    run = train(sparsifier, model, keep=(0,))
    assert run.epochs[0]["phase"] == "quantized" and run.epochs[0]["disable_ema"]
    assert run.epochs[0]["fake_quantizers"] > 100 and all(run.epochs[0]["bn_frozen"])
    rebuilt, reference = rebuild(run.checkpoints[0]).eval(), run.references[0].eval()
    images = batch(50, 0)[0]
    with torch.no_grad():
        assert torch.equal(reference(images)[0], rebuilt(images)[0])


def test_qat_starting_mid_epoch_turns_ema_and_amp_off_for_that_whole_epoch():
    sparsifier = create_sparsifier(SCALABLE, {"qat_start_epoch": 7.5})
    sparsifier.model_built(new_model(), None)
    assert [sparsifier.phase_for(e) for e in (6, 7, 8)] == ["pruned", "pruned_quantized", "pruned_quantized"]


def test_qat_starting_after_an_epochs_last_step_does_not_label_that_epoch_quantized():
    """2 steps per epoch (at 7.0 and 7.5): QAT at 7.75 is applied only at epoch 8's start, so epoch 7 ends float."""
    sparsifier = create_sparsifier(SCALABLE, {"qat_start_epoch": 7.75})
    model = new_model()
    sparsifier.model_built(model, None)
    run = train(sparsifier, model, stop_after=8)
    assert sparsifier.phase_for(7) == "pruned_quantized"  # what the schedule alone says (EMA/AMP go off early)
    assert run.epochs[7]["fake_quantizers"] == 0
    assert run.checkpoints[7]["sparsification"]["phase"] == "pruned"
    assert not run.checkpoints[7]["sparsification"]["is_quantized"]
    assert run.epochs[8]["fake_quantizers"] > 0 and sparsifier.phase_reached(8) == "pruned_quantized"
    assert run.checkpoints[8]["sparsification"]["phase"] == "pruned_quantized"


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_project_recipes_fit_yolov5n(path):
    sparsifier = create_sparsifier(str(path))
    sparsifier.model_built(new_model(), None)


# ---------------------------------------------------------------------------- recipe variables and epochs


@pytest.mark.parametrize("args", ['{"pruning_end_epoch": 4, "qat_start_epoch": 5}',
                                  {"pruning_end_epoch": 4, "qat_start_epoch": 5},
                                  "pruning_end_epoch=4,qat_start_epoch=5"])
def test_recipe_args_as_json_dict_or_key_value(args):
    manager, _, notes = load_recipe(SCALABLE, args)
    gmp, quantization = manager.pruning_modifiers[0], manager.quantization_modifiers[0]
    assert gmp.end_epoch == 4 and quantization.start_epoch == 5
    assert "pruning_end_epoch" in notes[0]


def test_recipe_args_parsing_errors():
    assert parse_recipe_args("a=1,b=0.5,c=true,d=x") == {"a": 1, "b": 0.5, "c": True, "d": "x"}
    with pytest.raises(RecipeError, match="not key=value"):
        parse_recipe_args("num_epochs")
    with pytest.raises(RecipeError, match="not valid JSON"):
        parse_recipe_args("{num_epochs: 3")
    with pytest.raises(RecipeError, match="does not define.*its variables: init_sparsity, num_epochs"):
        load_recipe(SCALABLE, {"num_epoch": 3})


def test_requested_epochs_scale_every_epoch_variable():
    manager, _, notes = load_recipe(SCALABLE, requested_epochs=5)
    assert "recipe num_epochs 10 -> 5: every epoch value x0.5" in notes
    assert "recipe variables: num_epochs 10 -> 5, pruning_end_epoch 6 -> 3, qat_start_epoch 8 -> 4" in notes
    assert manager.max_epochs == 5
    assert manager.pruning_modifiers[0].end_epoch == 3 and manager.quantization_modifiers[0].start_epoch == 4
    assert manager.pruning_modifiers[0].update_frequency == 0.5  # a literal, scaled too


def test_epoch_variables_set_in_recipe_args_are_not_scaled():
    manager, _, notes = load_recipe(SCALABLE, {"qat_start_epoch": 4.5}, requested_epochs=5)
    assert manager.max_epochs == 5 and manager.pruning_modifiers[0].end_epoch == 3
    assert manager.quantization_modifiers[0].start_epoch == 4.5
    assert "recipe variables: num_epochs 10 -> 5, pruning_end_epoch 6 -> 3" in notes


def test_requested_epochs_scale_learning_rate_milestones():
    """MultiStepLR milestones (and StepLR's step_size) in a LearningRateModifier's lr_kwargs are epochs too."""
    recipe = """
version: 1.1.0
num_epochs: 10
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
  - !LearningRateModifier
    start_epoch: 0.0
    lr_class: MultiStepLR
    lr_kwargs: {milestones: [4, 8], gamma: 0.1}
    init_lr: 0.01
"""
    manager, _, notes = load_recipe(recipe, requested_epochs=5)
    assert manager.learning_rate_modifiers[0].lr_kwargs == {"milestones": [2, 4], "gamma": 0.1}
    assert "recipe modifiers: EpochRangeModifier end_epoch 10 -> 5, LearningRateModifier lr_kwargs.milestones " \
           "[4, 8] -> [2, 4]" in notes


def test_recipe_without_epoch_variables_scales_its_literal_epochs():
    """Changed with issue 15: --epochs used to leave a recipe of literal numbers at its own length."""
    literal = recipe_text(SCALABLE, **{"eval(num_epochs)": "10", "eval(pruning_end_epoch)": "6",
                                       "eval(qat_start_epoch)": "8"})
    literal = "\n".join(line for line in literal.splitlines() if "_epoch:" not in line or line.startswith(" "))
    literal = literal.replace("num_epochs: 10\n", "")
    manager, _, notes = load_recipe(literal, requested_epochs=5)
    assert manager.max_epochs == 5
    assert manager.pruning_modifiers[0].end_epoch == 3 and manager.quantization_modifiers[0].start_epoch == 4
    assert "recipe length 10 -> 5: every epoch value x0.5" in notes
    assert any(note.startswith("recipe modifiers: ") and "GMPruningModifier end_epoch 6 -> 3" in note
               and "QuantizationModifier start_epoch 8 -> 4" in note for note in notes)


# ------------------------------------------------------------------------------------- clear errors


def test_missing_recipe_file_is_named(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found: .*nope.yaml"):
        create_sparsifier(str(tmp_path / "nope.yaml"))


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1.1.0\nmodifiers:\n  - !GMPruningModifier\n    params: [__ALL_PRUNABLE__\n"
                    "    init_sparsity: 0.05\n")
    with pytest.raises(RecipeError, match=r"broken.yaml: invalid YAML at line 5"):
        create_sparsifier(str(path))


def test_unknown_modifier_tag_is_named_with_a_suggestion():
    with pytest.raises(RecipeError, match=r"unknown modifier !GMPruningModifer at line 13.*!GMPruningModifier"):
        create_sparsifier(PRUNE_QUANT.replace("!GMPruningModifier", "!GMPruningModifer"))


def test_unknown_modifier_argument_is_named():
    with pytest.raises(RecipeError, match="unexpected keyword argument 'final_sparsty'"):
        create_sparsifier(PRUNE_QUANT.replace("final_sparsity", "final_sparsty"))


@pytest.mark.parametrize("params, closest", [
    ("model.2.cv1.conv.weights", "model.2.cv1.conv.weight"),
    (r"re:^model\.2\.cv9\..*", "model.2.cv"),
])
def test_params_matching_nothing_list_the_closest_names(params, closest):
    sparsifier = create_sparsifier(PRUNE_QUANT.replace(PRUNED, params))
    with pytest.raises(RecipeError, match="matches no parameter; closest: .*" + re.escape(closest)):
        sparsifier.model_built(new_model(), None)


def test_quantization_ignore_names_are_checked_before_training():
    sparsifier = create_sparsifier(PRUNE_QUANT.replace("'MaxPool2d'", "'MaxPool'"))
    with pytest.raises(RecipeError, match="names 'MaxPool'.*closest: MaxPool2d"):
        sparsifier.model_built(new_model(), None)


# -------------------------------------------------------------------------- stages on top of a checkpoint

CONSTANT_THEN_QAT = """
version: 1.1.0
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 2.0
  - !ConstantPruningModifier
    params: __ALL_PRUNABLE__
    start_epoch: 0.0
    end_epoch: -1.0
  - !QuantizationModifier
    start_epoch: 1.0
    ignore: ['SiLU', 'Upsample', 'MaxPool2d']
"""


def fine_tune_sparsifier(recipe: str, checkpoint: dict):
    sparsifier = create_sparsifier(recipe)
    model = rebuild(checkpoint)
    sparsifier.model_built(model, checkpoint["sparsification"])
    return sparsifier, model


def test_quantized_checkpoint_with_a_quantization_modifier_is_refused(full_run):
    with pytest.raises(RecipeError, match=r"checkpoint is already quantized \(recipe stage 0\); remove the "
                                          r"QuantizationModifier or start from the pre-QAT checkpoint"):
        fine_tune_sparsifier(CONSTANT_THEN_QAT, full_run.checkpoints[4])


def test_pruning_again_from_a_lower_init_sparsity_is_refused(full_run):
    with pytest.raises(RecipeError, match=r"init_sparsity 0.05 on \d+ parameters the checkpoint already pruned.*"
                                          r"recipe stage 0 would repeat.*__FROM_PARAM__"):
        fine_tune_sparsifier(PRUNE_QUANT, full_run.checkpoints[2])


def test_pruned_checkpoint_without_pruning_modifier_warns(full_run):
    recipe = CONSTANT_THEN_QAT.replace("!ConstantPruningModifier", "!SetWeightDecayModifier").replace(
        "params: __ALL_PRUNABLE__\n", "weight_decay: 0.0\n").replace("    end_epoch: -1.0\n", "", 1)
    sparsifier, _ = fine_tune_sparsifier(recipe, full_run.checkpoints[2])
    assert any("no pruning modifier holds" in note for note in sparsifier._notes)


@pytest.mark.slow
def test_fine_tuning_a_pruned_checkpoint_adds_a_stage_and_keeps_its_zeros(full_run):
    checkpoint = full_run.checkpoints[2]
    sparsifier, model = fine_tune_sparsifier(CONSTANT_THEN_QAT, checkpoint)
    run = train(sparsifier, model)
    assert [run.epochs[e]["phase"] for e in range(2)] == ["pruned", "pruned_quantized"]
    assert [run.epochs[e]["phase_changed"] for e in range(2)] == [False, True]
    state = run.checkpoints[1]["sparsification"]
    assert len(state["stages"]) == 2 and state["stages"][0]["phase"] == "pruned"
    assert "stage_0" in state["recipe"] and "stage_1" in state["recipe"]
    assert "ConstantPruningModifier" in state["recipe"]
    before = masks_of(checkpoint["sparsification"])
    after = masks_of(state)
    assert all(torch.equal(after[name], before[name]) for name in before)
    rebuilt = rebuild(run.checkpoints[1])
    assert state["is_quantized"] and fake_quantizers(rebuilt)

