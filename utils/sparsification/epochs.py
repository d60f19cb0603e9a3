"""``--epochs N`` on a recipe: every epoch-valued number in it is multiplied by the same factor.

Neural Magic's YOLOv5 recipes mix variables and literal numbers (a warm-up ``LearningRateFunctionModifier`` from
epoch 0 to a literal 3 next to ``end_epoch: eval(num_epochs - quantization_epochs)``). Scaling only the variables
bends such a schedule out of shape, or breaks it: 250 epochs run as 3 would end the main LR schedule at 2.88, before
the warm-up's literal 3. So the factor ``N / num_epochs`` applies to

- every modifier field that holds epochs (``start_epoch``, ``end_epoch``, ``update_frequency``,
  ``freeze_bn_stats_epoch``, ``disable_quantization_observer_epoch``, any other ``*_epoch(s)`` field, and
  ``step_size`` / ``milestones`` in a ``LearningRateModifier``'s ``lr_kwargs``), written as a number or as
  ``eval(...)``;
- every top-level variable that holds epochs: its name says so (``*_epoch``, ``*_epochs``), or it stands where epochs
  go in one of those fields or variables (``update_frequency: eval(pruning_update_frequency)``);
- inside ``eval(...)``, the numbers that are epochs themselves: terms added or subtracted (the ``+ 2`` of
  ``eval(num_epochs - quantization_epochs + 2)``), not factors (the ``0.05`` of ``eval(num_epochs * 0.05)``).

Variables set with ``--recipe-args`` keep the value given. Negative values (-1: "from the start" / "never ends")
stay as written. This module works on the recipe as plain data (SparseML's classless container) and never builds
modifiers; ``manager.load_recipe`` decides when to call it and turns the problems it reports into errors.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Fields whose value is a count of steps or something else that only looks like an epoch
_NOT_EPOCH_FIELDS = frozenset({"steps_per_epoch"})
_EXTRA_EPOCH_FIELDS = frozenset({"update_frequency"})
_LR_KWARGS_EPOCH_KEYS = frozenset({"step_size", "milestones"})  # StepLR / MultiStepLR arguments are in epochs
_OBJECT_PREFIX = "OBJECT."  # how SparseML's classless loader spells a ``!Modifier`` tag


def is_epoch_field(name: str) -> bool:
    """Whether a modifier field (or a recipe variable's name) holds epochs."""
    return name not in _NOT_EPOCH_FIELDS and (name in _EXTRA_EPOCH_FIELDS or name.endswith(("_epoch", "_epochs")))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_eval(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("eval(") and value.endswith(")")


def scaled_number(value: float, ratio: float) -> float:
    """``value * ratio`` to 6 significant digits (250 epochs x 0.012 reads 3, not 2.9999999999999996)."""
    result = float(f"{value * ratio:.6g}")
    return float(round(result)) if abs(result - round(result)) < 1e-9 else result


def modifier_entries(container: dict) -> Iterator[tuple[str, dict]]:
    """(label, fields) of every modifier of a non-staged recipe container, in file order.

    The label names the modifier and where it is, e.g. ``LearningRateFunctionModifier (training_modifiers #2)``.
    """
    for group, items in container.items():
        if not isinstance(group, str) or "modifiers" not in group or not isinstance(items, list):
            continue
        for index, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                continue
            kind = next((key[len(_OBJECT_PREFIX):] for key in item
                         if isinstance(key, str) and key.startswith(_OBJECT_PREFIX)), None)
            if kind is not None:
                yield f"{kind} ({group} #{index})", item


def _epoch_values(fields: dict) -> Iterator[tuple[str, Any, Any]]:
    """(field name, value, setter key path) of every epoch-valued field of one modifier."""
    for key, value in fields.items():
        if isinstance(key, str) and is_epoch_field(key):
            yield key, value, (key,)
        elif key == "lr_kwargs" and isinstance(value, dict):
            for inner, inner_value in value.items():
                if inner in _LR_KWARGS_EPOCH_KEYS:
                    yield f"lr_kwargs.{inner}", inner_value, (key, inner)


class _EpochTerms:
    """The names and number constants of an expression that stand for epochs, given that its value is in epochs.

    Sums, differences, min/max/round and the like keep the unit; a product keeps it in one factor (the one that is not
    a bare number, else the one naming an epoch variable); a quotient keeps it in the numerator.
    """

    def __init__(self, epoch_names: set[str]) -> None:
        self.epoch_names = epoch_names
        self.names: set[str] = set()
        self.constants: list[ast.Constant] = []

    def collect(self, node: ast.AST, epochs: bool) -> None:
        if isinstance(node, ast.Constant):
            if epochs and _is_number(node.value):
                self.constants.append(node)
        elif isinstance(node, ast.Name):
            if epochs:
                self.names.add(node.id)
        elif isinstance(node, ast.UnaryOp):
            self.collect(node.operand, epochs)
        elif isinstance(node, ast.BinOp):
            if isinstance(node.op, (ast.Add, ast.Sub, ast.Mod)):
                self.collect(node.left, epochs)
                self.collect(node.right, epochs)
            elif isinstance(node.op, ast.Mult):
                left_carries = self._carries_epochs(node.left, node.right)
                self.collect(node.left, epochs and left_carries)
                self.collect(node.right, epochs and not left_carries)
            elif isinstance(node.op, (ast.Div, ast.FloorDiv)):
                self.collect(node.left, epochs)
                self.collect(node.right, False)
            else:  # a power of epochs is not epochs
                self.collect(node.left, False)
                self.collect(node.right, False)
        elif isinstance(node, ast.Call):  # min/max of epochs are epochs; round(x, 1), int(x): only x is
            every = isinstance(node.func, ast.Name) and node.func.id in ("min", "max")
            for index, argument in enumerate(node.args):
                self.collect(argument, epochs and (every or index == 0))
        else:
            for child in ast.iter_child_nodes(node):
                self.collect(child, False)

    def _carries_epochs(self, left: ast.AST, right: ast.AST) -> bool:
        if isinstance(right, ast.Constant):
            return True
        if isinstance(left, ast.Constant):
            return False
        mentions = {n.id for n in ast.walk(left) if isinstance(n, ast.Name)}
        return bool(mentions & self.epoch_names) or not ({n.id for n in ast.walk(right) if isinstance(n, ast.Name)}
                                                          & self.epoch_names)


def _parse(expression: str) -> ast.Expression | None:
    try:
        return ast.parse(expression[len("eval("):-1].strip(), mode="eval")
    except SyntaxError:
        return None  # the recipe checks report it with the file and line


def _epoch_terms(expression: str, epoch_names: set[str]) -> tuple[ast.Expression | None, _EpochTerms]:
    tree = _parse(expression)
    terms = _EpochTerms(epoch_names)
    if tree is not None:
        terms.collect(tree.body, True)
    return tree, terms


def _scale_expression(expression: str, ratio: float, epoch_names: set[str]) -> str:
    """``eval(...)`` with its epoch constants multiplied by ``ratio`` (names are scaled where they are defined)."""
    tree, terms = _epoch_terms(expression, epoch_names)
    if tree is None or not terms.constants:
        return expression
    for constant in terms.constants:
        constant.value = scaled_number(constant.value, ratio)
    return f"eval({ast.unparse(tree)})"


def _scale_value(value: Any, ratio: float, epoch_names: set[str]) -> Any:
    if _is_number(value):
        return scaled_number(value, ratio) if value >= 0 else value
    if _is_eval(value):
        return _scale_expression(value, ratio, epoch_names)
    if isinstance(value, list):
        return [_scale_value(item, ratio, epoch_names) for item in value]
    return value


@dataclass
class ScaledRecipe:
    """The scaled container and what changed in the variables (name, before, after), for the log."""

    container: dict
    variables: list[tuple[str, Any, Any]] = field(default_factory=list)
    epoch_variables: set[str] = field(default_factory=set)


def epoch_variables(container: dict) -> set[str]:
    """Top-level variables that hold epochs: by name, or by where they are used (see the module docstring)."""
    variables = {key: value for key, value in container.items()
                 if isinstance(key, str) and "modifiers" not in key and (_is_number(value) or _is_eval(value))}
    found = {name for name in variables if is_epoch_field(name)}
    expressions = [value for _, fields in modifier_entries(container)
                   for _, value, _ in _epoch_values(fields) if _is_eval(value)]
    while True:
        sources = expressions + [variables[name] for name in found if _is_eval(variables[name])]
        used = set().union(*(_epoch_terms(text, found)[1].names for text in sources)) if sources else set()
        new = (used & set(variables)) - found
        if not new:
            return found
        found |= new


def scale_recipe_epochs(container: dict, ratio: float, pinned: set[str]) -> ScaledRecipe:
    """A copy of ``container`` (a non-staged recipe, SparseML's classless form) with every epoch value times
    ``ratio``; variables in ``pinned`` (set by ``--recipe-args``) stay as they are."""
    scaled = copy.deepcopy(container)
    names = epoch_variables(container)
    result = ScaledRecipe(container=scaled, epoch_variables=names)
    for name in sorted(names - pinned, key=list(container).index):
        before = container[name]
        after = _scale_value(before, ratio, names)
        if after != before:
            scaled[name] = after
            result.variables.append((name, before, after))
    for _, fields in modifier_entries(scaled):
        for _, value, path in list(_epoch_values(fields)):
            target = fields
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = _scale_value(value, ratio, names)
    return result


# -------------------------------------------------------------------------------------------- schedule checks

# (label, modifier kind, epoch field -> value) per modifier, in file order
ModifierEpochs = list[tuple[str, str, dict[str, Any]]]

_ORDERED_FIELDS = (("start_epoch", "end_epoch"), ("start_epoch", "freeze_bn_stats_epoch"),
                   ("start_epoch", "disable_quantization_observer_epoch"))


def modifier_epochs(container: dict) -> ModifierEpochs:
    """(label, kind, epoch field -> number, or tuple of numbers for milestones) of every modifier of an evaluated
    container."""
    events = []
    for label, fields in modifier_entries(container):
        values: dict[str, Any] = {}
        for name, value, _ in _epoch_values(fields):
            if _is_number(value):
                values[name] = float(value)
            elif isinstance(value, list) and value and all(_is_number(v) for v in value):
                values[name] = tuple(float(v) for v in value)
        events.append((label, label.split(" ", 1)[0], values))
    return events


def scaling_problems(original: ModifierEpochs, scaled: ModifierEpochs) -> list[str]:
    """What the scaled schedule breaks that the recipe as written kept: an epoch below 0, an end not after its
    start, a pruning window shorter than one update, pruning or distillation still running when QAT starts, or an
    event after the end of training. Proportional scaling keeps all of these; values pinned by ``--recipe-args``
    (and rounding) can break them."""
    problems = []
    for (label, kind, before), (_, _, after) in zip(original, scaled):
        for name, value in after.items():
            if isinstance(value, float) and before.get(name, -1) >= 0 and value < 0:
                problems.append(f"{label} {name} would be {value:g} (before epoch 0)")
        for first, second in _ORDERED_FIELDS:
            if first not in before or second not in before or before[second] < 0 or before[first] > before[second]:
                continue
            strict = before[first] < before[second]
            if not (after[first] < after[second] if strict else after[first] <= after[second]):
                problems.append(f"{label} {second} would be {after[second]:g}, not after its {first} "
                                f"{after[first]:g}")
        frequency = before.get("update_frequency", -1)
        if "Pruning" in kind and frequency > 0 and before.get("end_epoch", -1) >= 0:
            window = after["end_epoch"] - after["start_epoch"]
            if before["end_epoch"] - before["start_epoch"] >= frequency and window < after["update_frequency"]:
                problems.append(f"{label} pruning window {after['start_epoch']:g}-{after['end_epoch']:g} would be "
                                f"shorter than one update (update_frequency {after['update_frequency']:g})")
    quantization = [(label, after["start_epoch"], before["start_epoch"])
                    for (label, kind, before), (_, _, after) in zip(original, scaled)
                    if kind == "QuantizationModifier" and "start_epoch" in before]
    ends = [(label, after["end_epoch"], before["end_epoch"])
            for (label, kind, before), (_, _, after) in zip(original, scaled)
            if kind == "EpochRangeModifier" and before.get("end_epoch", -1) >= 0]
    for (label, kind, before), (_, _, after) in zip(original, scaled):
        end = before.get("end_epoch", -1)
        if ("Pruning" in kind or "Distillation" in kind) and end >= 0:
            for qat_label, qat_after, qat_before in quantization:
                if end <= qat_before and after["end_epoch"] > qat_after:
                    problems.append(f"{label} end_epoch would be {after['end_epoch']:g}, after {qat_label} "
                                    f"start_epoch {qat_after:g} (it ended before QAT as written)")
        if kind in ("EpochRangeModifier",) or kind.startswith("LearningRate"):
            continue
        for name, value in after.items():
            if name == "update_frequency" or name.startswith("lr_kwargs"):
                continue
            for range_label, range_after, range_before in ends:
                if 0 <= before[name] <= range_before and value > range_after:
                    problems.append(f"{label} {name} would be {value:g}, after the end of training "
                                    f"({range_label} end_epoch {range_after:g})")
    first_per_field: dict[str, str] = {}
    for problem in problems:  # one line per field: its first (most basic) problem
        first_per_field.setdefault(problem.split(" would be ")[0].split(" pruning window ")[0], problem)
    return list(first_per_field.values())


def _format(value: float | tuple[float, ...]) -> str:
    return f"[{', '.join(f'{v:g}' for v in value)}]" if isinstance(value, tuple) else f"{value:g}"


def describe_changes(original: ModifierEpochs, scaled: ModifierEpochs) -> str:
    """Every changed modifier epoch as ``Kind field before -> after``, identical lines merged (``x9``)."""
    counts: dict[str, int] = {}
    for (_, kind, before), (_, _, after) in zip(original, scaled):
        for name, value in after.items():
            if name in before and before[name] != value:
                line = f"{kind} {name} {_format(before[name])} -> {_format(value)}"
                counts[line] = counts.get(line, 0) + 1
    return ", ".join(line + (f" (x{count})" if count > 1 else "") for line, count in counts.items())
