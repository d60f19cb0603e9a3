"""Recipe-driven sparsification: SparseML's ``ScheduledModifierManager`` behind the ``Sparsifier`` hooks.

What this adds on top of SparseML, and why:

- The recipe is checked against the model before the first step (parameter names and regexes, quantization
  ``ignore`` names, unknown modifier tags, YAML syntax): a wrong recipe fails in seconds, naming the closest names.
- ``--epochs`` scales every epoch value of the recipe (literals and variables, see ``epochs.py``) proportionally
  instead of being silently overridden.
- Pruning masks and the schedule state of every modifier travel with each checkpoint, so a resumed run continues with
  the same masks as the uninterrupted run (SparseML alone re-derives masks by magnitude at the resumed epoch), and the
  masks are applied to the EMA weights as well, so ``best.pt`` saved from the EMA is exactly sparse.
- Each run's recipe is kept as a stage with the exact epoch its structure reached, so ``restore_structure`` rebuilds
  final and intermediate checkpoints alike (``best_pruned.pt`` saved mid-run included) for a strict state-dict load.
- A quantization recipe written as in the SparseML YOLOv5 guide (a bare ``!QuantizationModifier``) works as written:
  see ``apply_model_defaults``.

The schedule is advanced once at every epoch start, before the first batch (besides SparseML's own advance at every
optimizer step through the wrapped grad scaler): QAT modules and new masks then exist for the whole epoch, and the loop
learns about them from ``epoch_start`` before AMP or the EMA could touch a fake-quantized model.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import json
import logging
import math
import operator
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.optim import Optimizer

from utils.sparsification.compat import apply_compat
from utils.sparsification.epochs import (
    ModifierEpochs,
    describe_changes,
    modifier_epochs,
    scale_recipe_epochs,
    scaling_problems,
)
from utils.sparsification.hooks import EpochDirectives, Sparsifier, TrainingPlan
from utils.sparsification.structure import has_quantization
from utils.sparsification.zoo import is_zoo_stub

LOGGER = logging.getLogger(__name__)

STATE_VERSION = 1

# Modules whose forward takes a list of tensors: SparseML's QuantWrapper (one tensor in) around them breaks the forward
# pass, and Detect's decode must stay float anyway. Detect's 1x1 convs are its children and are still quantized.
ALWAYS_FLOAT_MODULES = ("Concat", "Detect")

# Private SparseML modifier attributes that hold schedule progress (not configuration). Saved and restored verbatim so
# that a resumed manager takes the same decisions at the same steps as the uninterrupted one.
_SCHEDULE_ATTRIBUTES = (
    "_started", "_ended", "_last_update_epoch", "_last_log_epoch",  # every scheduled modifier
    "_applied_sparsity", "_init_sparsity",  # pruning (init_sparsity becomes a list with __FROM_PARAM__)
    "_qat_enabled", "_quantization_observer_disabled", "_bn_stats_frozen",  # quantization
    "_lr_set", "_applied", "_learning_rate", "_last_applied_lr",  # learning rate
    "_base_lr_set", "_last_scheduler_epoch", "_scheduler_steps", "_double_step",
)
_EVENT_ATTRIBUTES = ("start_epoch", "end_epoch", "freeze_bn_stats_epoch", "disable_quantization_observer_epoch")
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)

# A recipe is a few KB of YAML with a handful of nesting levels and numbers below a few hundred. Anything far outside
# that is refused before SparseML parses or evaluates it: its YAML loader recurses per nesting level and its eval()
# computes 9**9**9 for as long as it takes.
MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_DEPTH = 32
MAX_RECIPE_NUMBER = 1e9  # any number written in a recipe or computed by one of its eval() expressions
MAX_RECIPE_EPOCHS = 10_000
MAX_EXPRESSION_CHARS = 500
_EVAL_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
                   ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_EVAL_FUNCTIONS = {"abs": abs, "float": float, "int": int, "min": min, "max": max, "round": round}
_NUMBER_CHARACTERS = frozenset("0123456789._e+-")


class RecipeError(ValueError):
    """A recipe (or its combination with a checkpoint or a model) cannot run; the message says what to change."""


# ----------------------------------------------------------------------------------------------------------- recipes


def parse_recipe_args(recipe_args: str | dict | None) -> dict[str, Any]:
    """Recipe variable overrides from a dict, a JSON object string, or ``key=value,key2=value2``."""
    if not recipe_args:
        return {}
    if isinstance(recipe_args, dict):
        return dict(recipe_args)
    if not isinstance(recipe_args, str):
        raise RecipeError(f"recipe_args must be a dict or a string, got {type(recipe_args).__name__}")
    text = recipe_args.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise RecipeError(f"recipe_args is not valid JSON ({error.msg}, column {error.colno}): {text}") from None
        if not isinstance(value, dict):
            raise RecipeError(f"recipe_args JSON must be an object of variable: value, got {text}")
        return value
    variables = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, separator, raw = item.partition("=")
        if not separator or not key.strip():
            raise RecipeError(f"recipe_args item '{item.strip()}' is not key=value (full value: '{text}'); "
                              f"use 'num_epochs=30,init_lr=0.01' or JSON '{{\"num_epochs\": 30}}'")
        variables[key.strip()] = _parse_scalar(raw.strip())
    return variables


def _parse_scalar(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return raw


def _read_recipe_text(recipe: str) -> tuple[str, str, int]:
    """The recipe's YAML text, a name for messages, and the line offset of the YAML inside its file."""
    if "\n" in recipe:
        return _front_matter(recipe, "<recipe text>")
    if is_zoo_stub(recipe):
        from utils.sparsification.zoo import ZooUnavailableError, resolve_recipe  # bounded, offline-aware lookup

        try:
            local = resolve_recipe(recipe)
        except (FileNotFoundError, ZooUnavailableError) as error:
            raise RecipeError(str(error)) from None
        text, _, offset = _read_recipe_text(local)
        return text, f"{recipe} ({local})", offset
    path = Path(recipe)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {recipe}; pass a recipe YAML (see recipes/) or a zoo: stub")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {path.stat().st_size} bytes is far larger than a recipe (limit "
                          f"{MAX_RECIPE_BYTES}); pass the recipe YAML itself")
    try:
        return _front_matter(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError:
        raise RecipeError(f"{path} is not a text file (not UTF-8); pass a recipe YAML") from None


def _front_matter(text: str, source: str) -> tuple[str, str, int]:
    """Markdown recipe cards keep the YAML between '---' lines at the top; plain YAML passes through."""
    match = re.match(r"^\s*(?:---|\+\+\+)(.*?)(?:---|\+\+\+)", text, re.S)
    if match and source.endswith(".md") or (match and "modifiers" in match.group(1)):
        return match.group(1), source, text[:match.start(1)].count("\n")
    return text, source, 0


def _registered_modifiers() -> set[str]:
    import sparseml.pytorch.sparsification  # noqa: F401 - registers every modifier's YAML tag

    prefix = "!pytorch."
    return {tag[len(prefix):] for tag in yaml.Loader.yaml_constructors
            if isinstance(tag, str) and tag.startswith(prefix)}


def _check_recipe_limits(text: str, source: str, line_offset: int) -> None:
    """Refuse, in one pass over the YAML events and before SparseML sees the text, a recipe that is too large, nested
    too deep, or holds a huge or non-finite number. Syntax errors are left to ``_check_recipe_syntax``."""
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{source}: {len(text)} characters is far larger than a recipe (limit {MAX_RECIPE_BYTES})")
    depth = 0
    try:
        for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            line = event.start_mark.line + 1 + line_offset
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_RECIPE_DEPTH:
                    raise RecipeError(f"{source}: nested deeper than {MAX_RECIPE_DEPTH} levels at line {line}; a "
                                      f"recipe is a mapping of variables and modifier lists, a few levels deep")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent) and not event.style:  # plain (unquoted) scalars
                value = event.value.strip().lower()
                number = value[:1] in "+-.0123456789" and set(value) <= _NUMBER_CHARACTERS
                if (number and (len(value) > 40 or _number_too_large(value))) or value in (".inf", "+.inf", "-.inf",
                                                                                            ".nan"):
                    raise RecipeError(f"{source}: number {event.value[:40]} at line {line} is out of range (|x| <= "
                                      f"{MAX_RECIPE_NUMBER:g}, finite); recipes take epochs, sparsities, rates")
    except yaml.YAMLError as error:
        if "nesting depth" in str(error):  # libyaml's own limit, reached while scanning ahead
            raise RecipeError(f"{source}: nested deeper than {MAX_RECIPE_DEPTH} levels; a recipe is a mapping of "
                              f"variables and modifier lists, a few levels deep") from None


def _number_too_large(value: str) -> bool:
    try:
        return not abs(float(value.replace("_", ""))) <= MAX_RECIPE_NUMBER
    except ValueError:
        return False


def _check_recipe_expressions(container: Any, overrides: dict[str, Any], source: str) -> None:
    """Evaluate every ``eval(...)`` with the operations SparseML's restricted evaluator allows, but bounded: each
    value must stay finite and within MAX_RECIPE_NUMBER, so SparseML then never computes a huge number."""
    for key, value in overrides.items():
        if isinstance(value, str) and value.startswith("eval(") and value.endswith(")"):
            value = _bounded_eval(value, {}, source)
        if _is_number(value) and not abs(value) <= MAX_RECIPE_NUMBER:
            raise RecipeError(f"{source}: {key}={value} is out of range (|x| <= {MAX_RECIPE_NUMBER:g}, finite)")
    variables = {key: value for key, value in overrides.items() if _is_number(value)}

    def visit(node: Any, scope: dict[str, Any]) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item, scope)
        if not isinstance(node, dict):
            return
        scope = dict(scope)
        for key, value in node.items():
            if isinstance(value, str) and value.startswith("eval(") and value.endswith(")"):
                result = _bounded_eval(value, scope, source)
                if result is not None and key not in overrides:
                    scope[key] = result
            elif _is_number(value) and key not in overrides:
                scope[key] = value
        for value in node.values():
            visit(value, scope)

    visit(container, variables)


def _bounded_eval(text: str, variables: dict[str, Any], source: str) -> float | None:
    """The value of ``eval(<expression>)``; None when it names an unknown variable (SparseML reports that)."""
    expression = text[len("eval("):-1].strip()
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise RecipeError(f"{source}: {text[:60]}... is longer than {MAX_EXPRESSION_CHARS} characters; simplify it")

    def value_of(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and _is_number(node.value):
            result = node.value
        elif isinstance(node, ast.Name):
            if node.id not in variables:
                raise KeyError(node.id)
            result = variables[node.id]
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            result = -value_of(node.operand) if isinstance(node.op, ast.USub) else value_of(node.operand)
        elif isinstance(node, ast.BinOp) and type(node.op) in _EVAL_OPERATORS:
            left, right = value_of(node.left), value_of(node.right)
            if isinstance(node.op, ast.Pow) and abs(left) > 1 and abs(right) * math.log10(abs(left)) > 12:
                raise OverflowError("a power beyond 1e12")
            result = _EVAL_OPERATORS[type(node.op)](left, right)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _EVAL_FUNCTIONS
              and not node.keywords):
            result = _EVAL_FUNCTIONS[node.func.id](*(value_of(argument) for argument in node.args))
        else:
            raise SyntaxError(f"'{ast.unparse(node)}' is not arithmetic on numbers and recipe variables (allowed: "
                              f"+ - * / // % **, {', '.join(_EVAL_FUNCTIONS)})")
        if not _is_number(result) or not abs(result) <= MAX_RECIPE_NUMBER:
            raise OverflowError(f"value {str(result)[:40]} is out of range (|x| <= {MAX_RECIPE_NUMBER:g}, finite)")
        return result

    try:
        return value_of(ast.parse(expression, mode="eval").body)
    except KeyError:
        return None
    except (SyntaxError, OverflowError, ArithmeticError, TypeError, ValueError, RecursionError) as error:
        reason = error.msg if isinstance(error, SyntaxError) and error.msg else str(error) or type(error).__name__
        raise RecipeError(f"{source}: {text[:80]} refused: {reason}") from None


def _check_schedule(manager: Any, source: str) -> None:
    """Epochs that contradict each other: an event after the end of the EpochRangeModifier, or a run far too long."""
    length = recipe_epochs(manager)
    if length is not None and length > MAX_RECIPE_EPOCHS:
        raise RecipeError(f"{source}: the recipe runs {length} epochs (limit {MAX_RECIPE_EPOCHS}); check its epochs")
    if not manager.epoch_modifiers:
        return
    end = max(float(getattr(m, "end_epoch", -1)) for m in manager.epoch_modifiers)
    for modifier in manager.iter_modifiers():
        kind = type(modifier).__name__
        if kind == "EpochRangeModifier" or end < 0:
            continue
        for attribute, value in _event_epochs(modifier).items():
            if attribute == "end_epoch" and "LearningRate" in kind:
                continue
            if value > end + 1e-9:
                raise RecipeError(f"{source}: epochs contradict each other: {kind} {attribute} {value:g} is after the "
                                  f"end of training (EpochRangeModifier end_epoch {end:g}); lower {attribute} or "
                                  f"raise the EpochRangeModifier's end_epoch")


def _check_recipe_syntax(text: str, source: str, line_offset: int) -> None:
    """Invalid YAML -> file and line; unknown ``!Tag`` -> its name, line and the closest known modifiers."""
    from sparseml.optim.helpers import load_recipe_yaml_str_no_classes

    try:
        container = load_recipe_yaml_str_no_classes(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1 + line_offset}" if mark is not None else "unknown line"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(f"{source}: invalid YAML at {where}: {problem}") from None
    if not isinstance(container, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping with a 'modifiers' list, "
                          f"got {type(container).__name__}")
    known = _registered_modifiers()
    for number, line in enumerate(text.splitlines(), start=1 + line_offset):
        code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
        for match in re.finditer(r"(?:^|[\s\-\[{,:])!([A-Za-z_][\w.]*)", code):
            name = match.group(1).removeprefix("pytorch.")
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join('!' + c for c in close)}?" if close else ""
                raise RecipeError(f"{source}: unknown modifier !{name} at line {number}{hint}")


def _recipe_variables(text: str) -> tuple[dict[str, Any], bool]:
    """Top-level recipe variables (name -> value) and whether the recipe is staged."""
    from sparseml.optim.helpers import check_if_staged_recipe, load_recipe_yaml_str_no_classes

    container = load_recipe_yaml_str_no_classes(text)
    staged = check_if_staged_recipe(container)
    variables = {key: value for key, value in container.items()
                 if key not in ("version", "__metadata__") and "modifiers" not in key and not isinstance(value, dict)
                 and not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value))}
    return variables, staged


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _build_manager(text: str, variables: dict[str, Any], source: str) -> Any:
    from sparseml.pytorch.optim import ScheduledModifierManager

    try:
        manager = ScheduledModifierManager.from_yaml(text, recipe_variables=variables or None)
    except yaml.YAMLError as error:  # after variable substitution; line numbers no longer match the file
        raise RecipeError(f"{source}: {str(error).splitlines()[0]}") from None
    except (TypeError, ValueError, KeyError, NameError, SyntaxError) as error:
        raise RecipeError(f"{source}: {type(error).__name__}: {error}") from None
    _restore_numbers(manager)
    return manager


_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _restore_numbers(manager: Any) -> None:
    """Numbers that came back from a serialized recipe as strings become numbers again.

    SparseML writes 0.000001 as ``1e-06``, which PyYAML (YAML 1.1 wants a dot: ``1.0e-06``) reads back as a string;
    modifiers that do not convert their arguments keep it (PerLayerDistillationModifier's ``epsilon`` then fails with
    a TypeError at the first distillation step of a resumed run).
    """
    for modifier in manager.iter_modifiers():
        for name in ("epsilon", "gain", "temperature", "hardness"):
            value = getattr(modifier, name, None)
            if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
                setattr(modifier, name, float(value))


def _event_epochs(modifier: Any) -> dict[str, float]:
    events = {}
    for attribute in _EVENT_ATTRIBUTES:
        value = getattr(modifier, attribute, None)
        if _is_number(value) and value >= 0:
            events[attribute] = float(value)
    return events


def recipe_epochs(manager: Any) -> int | None:
    """Epochs the recipe asks for: its EpochRangeModifier's end, else enough epochs for every scheduled event."""
    if manager.epoch_modifiers and manager.max_epochs > 0:
        return int(math.ceil(manager.max_epochs))
    events = [value for modifier in manager.iter_modifiers() for value in _event_epochs(modifier).values()]
    return int(math.floor(max(events))) + 1 if events else None


def _format_number(value: float) -> str:
    return f"{value:g}"


def _evaluated_epochs(text: str, overrides: dict[str, Any]) -> ModifierEpochs:
    """Every modifier's epoch fields as numbers, evaluated as SparseML evaluates them (without building modifiers,
    whose own checks would report a broken schedule with less context)."""
    from sparseml.optim.helpers import (
        evaluate_recipe_yaml_str_equations,
        load_recipe_yaml_str_no_classes,
        update_recipe_variables,
    )

    text = update_recipe_variables(text, overrides) if overrides else text
    return modifier_epochs(load_recipe_yaml_str_no_classes(evaluate_recipe_yaml_str_equations(text)))


def _scale_epochs(text: str, source: str, overrides: dict[str, Any], ratio: float,
                  requested_epochs: int) -> tuple[str, list[str]] | None:
    """The recipe with every epoch value times ``ratio`` (see ``epochs.py``) and the log lines saying what changed;
    None when it holds nothing to scale. A schedule that scaling breaks is a ``RecipeError`` naming each field."""
    from sparseml.optim.helpers import load_recipe_yaml_str_no_classes, rewrite_recipe_yaml_string_with_classes

    container = load_recipe_yaml_str_no_classes(text)
    scaled = scale_recipe_epochs(container, ratio, set(overrides))
    scaled_text = rewrite_recipe_yaml_string_with_classes(scaled.container)
    _check_recipe_expressions(scaled.container, overrides, f"{source} (scaled to --epochs {requested_epochs})")
    before, after = _evaluated_epochs(text, overrides), _evaluated_epochs(scaled_text, overrides)
    changes = describe_changes(before, after)
    if not changes and not scaled.variables:
        return None
    problems = scaling_problems(before, after)
    if problems:
        pinned = sorted(set(overrides) & scaled.epoch_variables)
        fix = (f"--recipe-args sets {', '.join(pinned)}, which --epochs does not scale: set it for {requested_epochs} "
               f"epochs too, or leave it to --epochs" if pinned else
               "pass more --epochs, or set the recipe's epochs with --recipe-args instead of --epochs")
        raise RecipeError(f"{source}: --epochs {requested_epochs} scales every epoch by {ratio:g}, which breaks the "
                          f"schedule:\n  " + "\n  ".join(problems) + f"\n  Fix: {fix}")
    variables = ", ".join(f"{name} {_format_value(old)} -> {_format_value(new)}" for name, old, new in scaled.variables)
    notes = [line for line in (f"recipe variables: {variables}" if variables else "",
                               f"recipe modifiers: {changes}" if changes else "") if line]
    return scaled_text, notes


def _format_value(value: Any) -> str:
    return _format_number(value) if _is_number(value) else str(value)


def load_recipe(recipe: str, recipe_args: str | dict | None = None,
                requested_epochs: int | None = None) -> tuple[Any, str, list[str]]:
    """Read, check and build a recipe; returns (manager, source name, notes for the log).

    With ``requested_epochs``, every epoch value of the recipe, literal or variable, is multiplied by
    ``requested_epochs / num_epochs`` (the recipe's own length when it has no ``num_epochs``), except variables that
    ``recipe_args`` sets (``epochs.py`` says which values hold epochs).
    """
    text, source, line_offset = _read_recipe_text(recipe)
    _check_recipe_limits(text, source, line_offset)
    apply_compat()
    _check_recipe_syntax(text, source, line_offset)
    variables, staged = _recipe_variables(text)
    overrides = parse_recipe_args(recipe_args)
    from sparseml.optim.helpers import load_recipe_yaml_str_no_classes

    _check_recipe_expressions(load_recipe_yaml_str_no_classes(text), overrides, f"{source} (recipe_args {overrides})"
                              if overrides else source)
    unknown = [key for key in overrides if key not in variables]
    if unknown and not staged:
        known = ", ".join(sorted(variables)) or "none"
        raise RecipeError(f"recipe_args sets {', '.join(unknown)}, which {source} does not define "
                          f"(its variables: {known})")
    manager = _build_manager(text, overrides, source)
    _check_schedule(manager, source)
    notes = [f"recipe {source}" + (f" with {overrides}" if overrides else "")]
    length = recipe_epochs(manager)
    if requested_epochs is None or requested_epochs == length:
        return manager, source, notes
    if "num_epochs" in overrides:
        notes.append(f"--epochs {requested_epochs} is ignored: recipe_args sets num_epochs={overrides['num_epochs']}")
        return manager, source, notes
    base = variables.get("num_epochs") if _is_number(variables.get("num_epochs")) else length
    scaled = None
    if not staged and base and base > 0:
        scaled = _scale_epochs(text, source, overrides, requested_epochs / base, requested_epochs)
    if scaled is None:
        why = "it is staged" if staged else "it has no epochs to scale"
        notes.append(f"recipe decides the epochs: {length} ({why}); --epochs {requested_epochs} is not used")
        return manager, source, notes
    scaled_text, changes = scaled
    manager = _build_manager(scaled_text, overrides, source)
    _check_schedule(manager, source)
    label = "num_epochs" if _is_number(variables.get("num_epochs")) else "length"
    notes.append(f"recipe {label} {_format_number(base)} -> {requested_epochs}: every epoch value x"
                 f"{requested_epochs / base:.6g}" + ("" if not overrides else
                                                   " (not the --recipe-args variables)"))
    notes += changes
    new_length = recipe_epochs(manager)
    if new_length != requested_epochs:
        notes.append(f"the scaled recipe runs {new_length} epochs, not {requested_epochs}: its epoch range does not "
                     f"follow its variables")
    return manager, source, notes


# ------------------------------------------------------------------------------------------------------ model facts


def _unwrap(model: nn.Module) -> nn.Module:
    """DataParallel / DistributedDataParallel -> the model itself (recipes name the inner model's parameters)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) and not hasattr(model, "froms") else model


def _is_wrapper(module: nn.Module) -> str | None:
    """The child name a quantization wrapper keeps the wrapped module under (None for other modules)."""
    from torch.ao.quantization import QuantWrapper

    if isinstance(module, QuantWrapper):
        return "module"
    if type(module).__name__ == "QATWrapper":
        return "forward_fn"
    return None


def canonical_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its name in the float model, looking through quantization wrappers.

    QAT renames ``model.1.conv.weight`` to ``model.1.conv.module.weight``; masks are stored under the float name so that
    a checkpoint saved before QAT and one saved during QAT (and the EMA, which stays float) agree.
    """
    names: dict[int, str] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        for name, parameter in module.named_parameters(recurse=False):
            names.setdefault(id(parameter), f"{prefix}{name}")
        skip = _is_wrapper(module)
        for name, child in module.named_children():
            walk(child, prefix if name == skip else f"{prefix}{name}.")

    walk(model, "")
    return names


def _named_parameters_canonical(model: nn.Module) -> dict[str, nn.Parameter]:
    by_id = {id(p): p for p in model.parameters()}
    return {name: by_id[key] for key, name in canonical_names(model).items()}


def _module_names(model: nn.Module) -> tuple[list[str], set[str]]:
    """Module names (float names and actual ones) and the module type names present."""
    names, types = set(), set()
    for name, module in model.named_modules():
        names.add(name)
        types.add(type(module).__name__)
    canonical = set()
    for name in names:
        canonical.add(re.sub(r"\.(module|forward_fn)(?=\.|$)", "", name))
    return sorted(names | canonical), types


def _pack_mask(mask: torch.Tensor) -> dict:
    """A mask as bits (8 per byte): pruning masks of yolov5x would otherwise add 86 MB to every checkpoint."""
    flat = mask.detach().reshape(-1).ne(0).cpu()
    padding = (-flat.numel()) % 8
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    packed = (flat.view(-1, 8).to(torch.uint8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)
    return {"shape": list(mask.shape), "bits": packed}


def unpack_mask(packed: dict) -> torch.Tensor:
    """Inverse of the packing in checkpoints: a bool tensor, True where the weight is kept."""
    shape = [int(s) for s in packed["shape"]]
    count = math.prod(shape)
    bits = packed["bits"].to(device="cpu", dtype=torch.uint8).unsqueeze(1).bitwise_and(_BIT_WEIGHTS).ne(0).reshape(-1)
    return bits[:count].reshape(shape)


def _pattern_matches(pattern: str, name: str) -> bool:
    return bool(re.match(pattern[3:], name)) if pattern.startswith("re:") else pattern == name


def _closest(pattern: str, candidates: list[str], count: int = 5) -> list[str]:
    query = pattern[3:] if pattern.startswith("re:") else pattern
    query = re.sub(r"\\(.)", r"\1", query)
    query = re.sub(r"[\^$*+?()\[\]{}|]", "", query)
    close = difflib.get_close_matches(query, candidates, n=count, cutoff=0.3)
    return close or candidates[:count]


def _modifier_patterns(modifier: Any) -> list[str]:
    raw = getattr(modifier, "_params", None) or getattr(modifier, "params", None)
    if raw is None:
        return []
    return [raw] if isinstance(raw, str) else [str(p) for p in raw]


def _targeted_parameters(modifier: Any, model: nn.Module) -> list[str]:
    """Float names of the parameters a pruning-style modifier would act on."""
    from sparseml.pytorch.utils import get_prunable_layers

    patterns = _modifier_patterns(modifier)
    names = list(_named_parameters_canonical(model))
    if "__ALL__" in patterns:
        return names
    if "__ALL_PRUNABLE__" in patterns:
        ids = canonical_names(model)
        return [ids[id(layer.weight)] for _, layer in get_prunable_layers(model) if id(layer.weight) in ids]
    return [name for name in names if any(_pattern_matches(p, name) for p in patterns)]


def _is_torch_layer_type(name: Any) -> bool:
    """Whether ``name`` is a ``torch.nn`` layer class name (e.g. 'SiLU'), as a quantization ``ignore`` entry may be."""
    return isinstance(getattr(nn, str(name), None), type)


def check_recipe_against_model(manager: Any, model: nn.Module, source: str) -> None:
    """Every ``params`` name/regex and every quantization ``ignore``/``scheme_overrides``/``submodules`` entry must
    match something in the model; otherwise a ``RecipeError`` lists each miss with the closest names."""
    parameter_names = list(_named_parameters_canonical(model))
    module_names, type_names = _module_names(model)
    problems = []
    for modifier in manager.iter_modifiers():
        kind = type(modifier).__name__
        for pattern in _modifier_patterns(modifier):
            if pattern in ("__ALL__", "__ALL_PRUNABLE__"):
                continue
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as error:
                    problems.append(f"{kind} params '{pattern}' is not a valid regex ({error})")
                    continue
            if not any(_pattern_matches(pattern, name) for name in parameter_names):
                problems.append(f"{kind} params '{pattern}' matches no parameter; closest: "
                                f"{', '.join(_closest(pattern, parameter_names))}")
        # An ``ignore`` entry naming a torch layer type the model lacks is harmless (the shipped recipes keep 'SiLU'
        # float; a ReLU model has none), so only names that are no type at all, typos, are errors there.
        entries = [entry for entry in getattr(modifier, "ignore", None) or [] if not _is_torch_layer_type(entry)]
        entries += list((getattr(modifier, "scheme_overrides", None) or {}).keys())
        for entry in entries:
            if entry not in type_names and not any(name.startswith(entry) for name in module_names):
                problems.append(f"{kind} names '{entry}', which is neither a module type nor a submodule of this "
                                f"model; closest: {', '.join(_closest(entry, sorted(type_names) + module_names))}")
        submodules = getattr(modifier, "submodules", None) if kind == "QuantizationModifier" else None
        for entry in submodules or []:
            if entry not in module_names:
                problems.append(f"{kind} submodules '{entry}' is not a submodule of this model; closest: "
                                f"{', '.join(_closest(entry, module_names))}")
        # The legacy modifier compares these with type names: a misspelt one would silently change nothing.
        for option in ("exclude_module_types", "custom_quantizable_module_types"):
            entries = (getattr(modifier, option, None) or []) if kind == "QuantizationModifier" else []
            for entry in entries:
                if entry not in type_names and not _is_torch_layer_type(entry):
                    problems.append(f"{kind} {option} '{entry}' is not a layer type of torch.nn or of this model; "
                                    f"closest: {', '.join(_closest(entry, sorted(type_names)))}")
    if problems:
        raise RecipeError(f"{source} does not fit this model:\n  " + "\n  ".join(problems))


def check_distillation_schedule(manager: Any, model: nn.Module, source: str, quantized_base: bool = False,
                                teacher: nn.Module | None = None) -> None:
    """Distillation must end before quantization-aware training starts, and named layers must exist (student layers
    in the model, teacher layers in ``teacher``).

    Per-layer distillation hooks the model's Conv2d layers; QAT replaces them with fused fake-quantized modules, so a
    distillation window that overlaps QAT would silently compare stale features. (The NM recipes end it before QAT.)
    """
    distillers = list(manager.distillation_modifiers)
    if not distillers:
        return
    problems = []
    qat_starts = [float(m.start_epoch) for m in manager.quantization_modifiers]
    module_names, _ = _module_names(model)
    for modifier in distillers:
        kind = type(modifier).__name__
        end = float(modifier.end_epoch)
        if quantized_base:
            problems.append(f"{kind}: the checkpoint is already quantized (QAT); distil before quantization, e.g. "
                            f"from the pruned checkpoint")
        elif qat_starts and (end < 0 or end > min(qat_starts)):
            problems.append(f"{kind} ends at epoch {'never (-1)' if end < 0 else _format_number(end)}, after QAT "
                            f"starts at {_format_number(min(qat_starts))}; set its end_epoch to the QAT start "
                            f"(e.g. end_epoch: eval(qat_start_epoch))")
        for name in getattr(modifier, "student_layer_names", None) or []:
            if name not in module_names:
                problems.append(f"{kind} student layer '{name}' is not a module of this model; closest: "
                                f"{', '.join(_closest(name, module_names))}")
        if teacher is not None:
            teacher_names, _ = _module_names(_unwrap(teacher))
            for name in getattr(modifier, "teacher_layer_names", None) or []:
                if name not in teacher_names:
                    problems.append(f"{kind} teacher layer '{name}' is not a module of the --teacher-weights model; "
                                    f"closest: {', '.join(_closest(name, teacher_names))}")
    if problems:
        raise RecipeError(f"{source}: distillation does not fit this model or schedule:\n  " + "\n  ".join(problems))


def check_quantization_steps(manager: Any, steps_per_epoch: int, start_epoch: int, source: str) -> None:
    """QAT observers must see at least one training step before ``disable_quantization_observer_epoch``.

    SparseML applies QAT and disables the observers at the first optimizer step at or after each epoch. When no step
    falls between the two (a short run of a long recipe: 250 epochs as 3 put QAT at 2.88 and the observers' end at
    2.904), every quantizer keeps its initial scale of 1 and nearly every weight rounds to zero. Refused with the
    step arithmetic instead of training and exporting such a model.
    """
    if steps_per_epoch <= 0:
        return
    for modifier in manager.quantization_modifiers:
        start = float(modifier.start_epoch)
        observers_off = getattr(modifier, "disable_quantization_observer_epoch", None)
        if not _is_number(observers_off) or observers_off < 0 or start < 0 or start < start_epoch:
            continue
        first_step = math.ceil(start * steps_per_epoch - 1e-6) / steps_per_epoch  # epoch value of the first QAT step
        if first_step >= observers_off:
            raise RecipeError(
                f"{source}: QuantizationModifier disable_quantization_observer_epoch {observers_off:g} comes before "
                f"any training step with QAT on (start_epoch {start:g}; with {steps_per_epoch} steps per epoch the "
                f"first QAT step is at {first_step:g}): the quantizers would never see data and most weights would "
                f"round to zero. Fix: more steps per epoch (smaller --batch-size), more --epochs, or a later "
                f"disable_quantization_observer_epoch")


def _projection_state(modifier: Any) -> dict:
    """Per-layer distillation's learned projections (1x1 convs from student to teacher features), on CPU."""
    from sparseml.pytorch.sparsification.distillation import DISTILL_PARAM_GROUP_KEY

    if not getattr(modifier, "_projection", None):
        return {}
    state = modifier.state_dict().get(DISTILL_PARAM_GROUP_KEY) or {}
    return {name: {key: value.detach().cpu() for key, value in layer.items()} for name, layer in state.items()}


def apply_model_defaults(manager: Any, model: nn.Module) -> list[str]:
    """Make every QuantizationModifier run on YOLOv5, including a bare one as in the SparseML YOLOv5 guide.

    SparseML's current QuantizationModifier quantizes the input of every leaf module that its ``ignore`` list does
    not name by wrapping the module in a ``QuantWrapper``, whose forward takes one tensor. ``Concat`` and ``Detect``
    take a list of tensors, so they are added to ``ignore`` when missing (Concat is a leaf and would be wrapped;
    Detect would be wrapped only if a ``scheme_overrides`` entry targeted its type, and its decode must stay float).
    Nothing else changes: SiLU, Upsample and MaxPool2d (single-tensor modules) are quantized or not as the recipe
    says, so a recipe means the same here as in SparseML; the project recipes list them in ``ignore`` themselves.
    An ``ignore`` entry naming a torch layer type the model does not have is dropped (SparseML rejects it): the
    shipped recipes keep 'SiLU' float, and a model built with ``activation: nn.ReLU()`` has none.
    Residual adds quantize through ``models.common.Add``'s ``wrap_qat`` (a ``QATWrapper`` with two inputs).
    The legacy modifier (chosen by SparseML when a recipe uses its options, e.g. ``submodules``) quantizes through
    qconfig propagation and never wraps these modules, so it is left alone. Idempotent: the normalized recipe is the
    text that checkpoints store.
    """
    from sparseml.pytorch.sparsification.quantization.modifier_quantization import QuantizationModifier

    present = {type(module).__name__ for module in model.modules()}
    notes = []
    for modifier in manager.quantization_modifiers:
        if not isinstance(modifier, QuantizationModifier):
            continue
        ignore = list(modifier.ignore or [])
        absent = [name for name in ignore if name not in present and _is_torch_layer_type(name)]
        if absent:
            ignore = [name for name in ignore if name not in absent]
            modifier.ignore = ignore
            notes.append(f"QuantizationModifier: ignore {', '.join(absent)} dropped (no such layer in this model)")
        added = [name for name in ALWAYS_FLOAT_MODULES if name in present and name not in ignore]
        if added:
            modifier.ignore = ignore + added
            notes.append(f"QuantizationModifier: {' and '.join(added)} left float (their input is a list of tensors)")
    return notes


def _manager_from_state_text(text: str, source: str) -> Any:
    apply_compat()
    return _build_manager(text, {}, source)


def _check_state(state: dict) -> None:
    version = state.get("version", 0)
    if version > STATE_VERSION:
        raise RecipeError(f"checkpoint sparsification state version {version} is newer than this code "
                          f"({STATE_VERSION}); update the repository")


def restore_structure(model: nn.Module, state: dict) -> None:
    """Rebuild the structure a checkpoint's sparsification state records (QAT wrappers, fused ConvBn, fake-quant,
    frozen BN), stage by stage at the exact epoch each stage reached, so ``load_state_dict(strict=True)`` works.

    Masks are not needed here: the checkpoint's weights already hold the zeros; training restores masks itself.
    """
    if not state or not state.get("stages"):
        return
    _check_state(state)
    module = _unwrap(model)
    apply_stages(module, state["stages"])
    if bool(state.get("is_quantized")) != has_quantization(module):
        raise RecipeError(f"checkpoint records is_quantized={state.get('is_quantized')} but its recipe "
                          f"{'did not rebuild' if state.get('is_quantized') else 'rebuilt'} a quantized model; "
                          f"the checkpoint's sparsification state is inconsistent")



def apply_stages(module: nn.Module, stages: list[dict]) -> None:
    """Apply each stage's recipe structure at the epoch it reached (``applied_epoch``; ``inf`` for all of it)."""
    for index, stage in enumerate(stages):
        manager = _manager_from_state_text(stage["recipe"], f"checkpoint recipe stage {index}")
        if not manager.structured_modifiers:
            continue
        apply_model_defaults(manager, module)
        with _training_mode(module):
            manager.apply_structure(module, epoch=float(stage["applied_epoch"]), loggers=_quiet_loggers())


def masks_from_zeros(model: nn.Module, recipes: list[str], source: str) -> tuple[dict[str, dict], float]:
    """Packed keep-masks (weight != 0) of every parameter the recipes' pruning modifiers target, by float name, and
    their overall sparsity: the masks a checkpoint written elsewhere would have carried had it been trained here."""
    parameters = _named_parameters_canonical(model)
    masks: dict[str, torch.Tensor] = {}
    for index, text in enumerate(recipes):
        manager = _manager_from_state_text(text, f"{source} recipe {index}")
        for modifier in manager.pruning_modifiers:
            for name in _targeted_parameters(modifier, model):
                if name in parameters:
                    masks[name] = parameters[name].detach().ne(0).cpu()
    total = sum(mask.numel() for mask in masks.values())
    sparsity = 1.0 - sum(int(mask.sum()) for mask in masks.values()) / total if total else 0.0
    return {name: _pack_mask(mask) for name, mask in masks.items()}, sparsity

@contextlib.contextmanager
def _training_mode(module: nn.Module) -> Iterator[None]:
    """SparseML fuses Conv+BN for QAT (``ConvBn2d``) only in training mode; in eval mode it folds BN into the conv,
    which gives a different state dict. Structure changes therefore always run in training mode."""
    was_training = module.training
    module.train()
    try:
        yield
    finally:
        module.train(was_training)


def _quiet_loggers() -> Any:
    """Modifier logs go to our logger, at debug level, and only when someone listens.

    SparseML's default logger writes ./sparse_logs/*.log into the working directory, and its per-layer sparsity logs
    cost a pass over every pruned tensor at each step; without a listener our logger stays disabled.
    """
    from sparseml.pytorch.utils import LoggerManager, PythonLogger

    logger = logging.getLogger(f"{__name__}.sparseml")
    # Never an empty manager: SparseML treats an empty one as "no loggers given" and builds its default file logger.
    return LoggerManager([PythonLogger(logger=logger, enabled=logger.isEnabledFor(logging.DEBUG))], log_python=False)


def _compose(texts: list[str]) -> str:
    """All stages as one staged recipe (SparseML's ``compose_staged``), for people and tools that read the recipe."""
    if len(texts) == 1:
        return texts[0]
    from sparseml.pytorch.optim import ScheduledModifierManager

    composed = texts[0]
    for text in texts[1:]:
        composed = str(ScheduledModifierManager.compose_staged(composed, text))
    return composed


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_is_number(v) for v in value)


# ------------------------------------------------------------------------------------------------------- sparsifier


class RecipeSparsifier(Sparsifier):
    """Drives a SparseML recipe through the training loop's hooks (see ``hooks.Sparsifier`` for the call order)."""

    enabled = True

    def __init__(self, recipe: str, recipe_args: str | dict | None = None, requested_epochs: int | None = None) -> None:
        self._manager, self.source, self._load_notes = load_recipe(recipe, recipe_args, requested_epochs)
        self._model: nn.Module | None = None
        self._optimizer: Optimizer | None = None
        self._wrapped: Any = None
        self._steps_per_epoch = 0
        self._start_epoch = 0
        self._stage_text = ""
        self._composed_text = ""
        self._base_stages: list[dict] = []
        self._base_phase = "dense"
        self._base_masks: dict[str, dict] = {}
        self._resume_state: dict | None = None
        self._constant_sparsity = False
        self._distilling = False
        self._pre_update_epoch = -math.inf
        self._finalized_state: tuple[list[dict], dict[str, dict], float] | None = None
        self._snapshot_cache: tuple[tuple, tuple[list[dict], dict[str, dict], float]] | None = None
        self._notes: list[str] = list(self._load_notes)

    # ------------------------------------------------------------------------------------------- properties
    @property
    def manager(self) -> Any:
        """The SparseML ``ScheduledModifierManager`` running this stage."""
        return self._manager

    @property
    def is_quantized(self) -> bool:
        return self._model is not None and has_quantization(self._model)

    # ------------------------------------------------------------------------------------------- hooks
    def model_built(self, model: nn.Module, checkpoint_state: dict | None, resume: bool = False) -> None:
        """Check the recipe against the model and the checkpoint it starts from; on resume continue its last stage.

        Fine-tuning (``resume=False``) from a sparsified checkpoint adds this recipe as a new stage after the
        checkpoint's stages. Resuming takes the recipe text, masks and schedule state from the checkpoint's last stage.
        """
        module = _unwrap(model)
        self._model = module
        state = checkpoint_state or {}
        if state:
            _check_state(state)
        stages = list(state.get("stages") or [])
        if resume:
            if not stages:
                raise RecipeError("cannot resume with a recipe: the checkpoint holds no sparsification state (it was "
                                  "trained without one); start a new run with --weights instead")
            current = stages.pop()
            manager = _manager_from_state_text(current["recipe"], f"{self.source} (resumed)")
            ours = self._normalized_text(self._manager, module)
            if ours != current["recipe"]:
                self._notes.append(f"resuming with the recipe as the run started it (stored in the checkpoint, "
                                   f"--epochs scaling included); {self.source} as read now differs and is not used")
            self._manager = manager
            self._resume_state = state
        self._base_stages = stages
        self._base_phase = stages[-1]["phase"] if stages else "dense"
        self._base_masks = dict(state.get("masks") or {}) if not resume else dict(state.get("base_masks") or {})
        self._notes += apply_model_defaults(self._manager, module)
        self._stage_text = str(self._manager)
        check_recipe_against_model(self._manager, module, self.source)
        if not resume and stages:
            self._check_against_checkpoint(module, state)
        self._constant_sparsity = self._pruned_parameters_sparse(module)
        try:
            self._composed_text = _compose([s["recipe"] for s in stages] + [self._stage_text])
        except Exception as error:  # noqa: BLE001 - composing is for display; the stages stay separate regardless
            self._composed_text = self._stage_text
            self._notes.append(f"could not compose the staged recipe ({error}); stages are stored separately")

    def optimizer_built(self, model: nn.Module, optimizer: Optimizer, scaler: Any, steps_per_epoch: int,
                        start_epoch: int, default_epochs: int, teacher: nn.Module | None = None) -> TrainingPlan:
        """Attach the recipe to the optimizer; the returned ``plan.scaler`` advances the recipe at every step.

        ``teacher`` goes to the recipe's distillation modifiers; without one they stay off (and the log says so).
        """
        if self._model is None:
            self.model_built(model, None)
        module = self._model
        distillers = sorted({type(m).__name__ for m in self._manager.distillation_modifiers})
        if teacher is not None and not distillers:
            raise RecipeError(f"--teacher-weights is set but {self.source} has no distillation modifier; add a "
                              f"!PerLayerDistillationModifier (as recipes/yolov5n.pruned_quant.yaml does) or drop "
                              f"--teacher-weights")
        if teacher is not None:  # without a teacher the modifiers stay off: nothing to check
            check_distillation_schedule(self._manager, module, self.source,
                                        quantized_base="quantized" in self._base_phase, teacher=teacher)
        self._distilling = teacher is not None
        self._optimizer = optimizer
        self._steps_per_epoch = int(steps_per_epoch)
        self._start_epoch = int(start_epoch)
        resume = self._resume_state
        if resume is None:  # before SparseML touches the model
            check_quantization_steps(self._manager, self._steps_per_epoch, self._start_epoch, self.source)
        else:
            self._restore_schedule(resume)
        with _training_mode(module):
            self._wrapped = self._manager.modify(module, optimizer, self._steps_per_epoch, wrap_optim=scaler,
                                                 epoch=float(start_epoch), loggers=_quiet_loggers(),
                                                 distillation_teacher=teacher if teacher is not None else "disable")
        if resume is not None:
            self._restore_masks(resume)
        epochs = recipe_epochs(self._manager)
        notes = list(self._notes)
        if epochs is None:
            epochs = default_epochs
            notes.append(f"recipe sets no epoch range: training runs the {epochs} epochs asked for")
        else:
            notes.append(f"recipe sets {epochs} epochs")
        notes += self._unreachable_events(epochs)
        if distillers and teacher is None:
            notes.append(f"{', '.join(distillers)} off: no --teacher-weights (pass the dense checkpoint the run starts "
                         f"from, or 'self', to distil)")
        elif distillers:
            notes.append(f"distillation ({', '.join(distillers)}) from the --teacher-weights model")
        owns_learning_rate = bool(self._manager.learning_rate_modifiers)
        if owns_learning_rate:
            kinds = sorted({type(m).__name__ for m in self._manager.learning_rate_modifiers})
            notes.append(f"recipe sets the learning rate ({', '.join(kinds)}): no YOLOv5 scheduler or warmup")
        if resume is not None:
            notes.append(f"resumed sparsification at epoch {start_epoch} with the checkpoint's masks and schedule")
        return TrainingPlan(epochs=int(epochs), owns_learning_rate=owns_learning_rate, scaler=self._wrapped,
                            notes=notes)

    def epoch_start(self, epoch: int) -> EpochDirectives:
        """Advance the recipe to the epoch start, then say the epoch's phase and whether EMA/AMP must be off."""
        module = self._model
        if self._wrapped is not None and self._manager.initialized:
            with _training_mode(module):
                self._manager.update(module, self._optimizer, float(epoch), self._steps_per_epoch)
            self._pre_update_epoch = max(self._pre_update_epoch, float(epoch))
        phase = self.phase_for(epoch)
        previous = self.phase_for(epoch - 1) if epoch > 0 else self._base_phase
        quantized = "quantized" in phase
        notes = self._event_notes(epoch)
        if phase != previous:
            notes.append(f"phase {previous} -> {phase}")
            if quantized and "quantized" not in previous:
                notes.append("quantization-aware training: EMA and AMP are off from now on")
        return EpochDirectives(phase=phase, phase_changed=phase != previous, disable_ema=quantized,
                               disable_amp=quantized, notes=notes)

    def phase_reached(self, epoch: int) -> str:
        """The schedule's phase for ``epoch``, less quantization when QAT has not been applied yet.

        SparseML applies a modifier at the first optimizer step at or after its start epoch. With few steps per epoch
        a QAT start late in an epoch comes after that epoch's last step, so the epoch ends with a float model: it
        must not be labelled (or saved as best_<phase>.pt) as a quantized one.
        """
        phase = self.phase_for(epoch)
        if "quantized" in phase and not self.is_quantized:
            phase = "pruned" if "pruned" in phase else "dense"
        return phase

    def loss_computed(self, loss: Tensor, predictions: Any, images: Tensor, targets: Tensor) -> Tensor:
        """Add the distillation loss. The YOLOv5 loss is summed over the batch; SparseML's gains assume a mean."""
        if not self._distilling or self._wrapped is None:
            return loss
        batch = images.shape[0]
        total = self._manager.loss_update(loss / batch, self._model, self._optimizer, self._wrapped.wrapped_epoch,
                                          self._steps_per_epoch, student_outputs=predictions, student_inputs=images,
                                          student_labels=targets)
        return total * batch

    def skipped_step(self) -> None:
        if self._wrapped is not None:
            self._wrapped.emulated_step()

    def after_optimizer_step(self, model: nn.Module, ema_model: nn.Module | None) -> None:
        """Zero the EMA weights where the model's masks are zero (SparseML masks only the model)."""
        if ema_model is None:
            return
        masks = self._active_masks()
        if not masks:
            return
        ema_parameters = _named_parameters_canonical(_unwrap(ema_model))
        with torch.no_grad():
            for name, mask in masks.items():
                parameter = ema_parameters.get(name)
                if parameter is not None and parameter.shape == mask.shape:
                    parameter.mul_(mask.to(device=parameter.device, dtype=parameter.dtype))

    def checkpoint_state(self, epoch: int, final: bool) -> dict:
        """Plain data (str, numbers, lists, dicts, tensors) for a ``weights_only`` checkpoint.

        Keys: ``recipe`` (all stages composed), ``stages`` (each stage's recipe, the epoch value its schedule reached,
        its phase), ``epoch``, ``final``, ``phase``, ``is_quantized``, ``masks`` (packed bool masks by parameter name,
        see ``unpack_mask``), ``sparsity`` (of the masked parameters), ``modifiers`` (schedule state for resuming).
        """
        # train.py saves last.pt, best.pt and a per-phase best from the same epoch: snapshot the masks once.
        key = (int(epoch), self._wrapped.wrapped_steps if self._wrapped is not None else -1,
               self._finalized_state is not None)
        if self._snapshot_cache is None or self._snapshot_cache[0] != key:
            self._snapshot_cache = (key, self._finalized_state or self._snapshot_modifiers())
        modifiers, masks, sparsity = self._snapshot_cache[1]
        phase = self.phase_reached(epoch)
        quantized = self.is_quantized
        stage = {"recipe": self._stage_text, "applied_epoch": self._applied_epoch(), "epoch": int(epoch),
                 "phase": phase, "is_quantized": quantized, "final": bool(final)}
        return {
            "version": STATE_VERSION,
            "recipe": self._composed_text,
            "stages": [dict(s) for s in self._base_stages] + [stage],
            "epoch": int(epoch),
            "final": bool(final),
            "phase": phase,
            "is_quantized": quantized,
            "masks": masks,
            "base_masks": dict(self._base_masks),
            "sparsity": sparsity,
            "modifiers": modifiers,
            "steps_per_epoch": self._steps_per_epoch,
        }

    def finalize(self, model: nn.Module) -> None:
        """Keep the final masks for later checkpoints, then let SparseML remove its hooks."""
        if self._wrapped is None or not self._manager.initialized:
            return
        self._finalized_state = self._snapshot_modifiers()
        self._manager.finalize(self._model)

    # ------------------------------------------------------------------------------------------- phases
    def phase_for(self, epoch: int) -> str:
        """The model's phase at the end of ``epoch``, from the schedule alone (so a resumed run agrees)."""
        end = epoch + 1
        base_pruned = "pruned" in self._base_phase
        base_quantized = "quantized" in self._base_phase
        quantized = base_quantized or any(self._starts_before(m, end) for m in self._manager.quantization_modifiers)
        pruned = base_pruned or any(self._starts_before(m, end) and self._creates_sparsity(m)
                                    for m in self._manager.pruning_modifiers)
        if pruned and quantized:
            return "pruned_quantized"
        return "quantized" if quantized else "pruned" if pruned else "dense"

    @staticmethod
    def _starts_before(modifier: Any, end: float) -> bool:
        start = getattr(modifier, "start_epoch", -1)
        return start == -1 or start < end

    def _creates_sparsity(self, modifier: Any) -> bool:
        final = getattr(modifier, "_final_sparsity", None)
        if final is None:
            final = getattr(modifier, "final_sparsity", None)
        if isinstance(final, dict):
            final = list(final.keys())
        if isinstance(final, (list, tuple)):
            return any(_is_number(v) and v > 0 for v in final)
        if _is_number(final):
            return final > 0
        return self._constant_sparsity  # ConstantPruningModifier and the like keep what the weights already have

    # ------------------------------------------------------------------------------------------- internals
    @staticmethod
    def _normalized_text(manager: Any, module: nn.Module) -> str:
        apply_model_defaults(manager, module)
        return str(manager)

    def _pruned_parameters_sparse(self, module: nn.Module) -> bool:
        parameters = _named_parameters_canonical(module)
        for modifier in self._manager.pruning_modifiers:
            for name in _targeted_parameters(modifier, module):
                if name in parameters and bool((parameters[name] == 0).any()):
                    return True
        return False

    def _check_against_checkpoint(self, module: nn.Module, state: dict) -> None:
        """Rules for a new recipe on top of a sparsified checkpoint.

        - Quantization cannot be applied twice: a quantized checkpoint plus a QuantizationModifier is an error.
        - A pruning modifier whose ``init_sparsity`` is below the sparsity a parameter already has would first let the
          pruned weights regrow and then prune them again (the previous stage's ramp repeats): an error naming the
          parameters; ``init_sparsity: __FROM_PARAM__`` continues from the checkpoint's sparsity instead.
        - A pruned checkpoint with no pruning modifier on its pruned parameters loses its sparsity as weights regrow:
          a note (a ConstantPruningModifier keeps it).
        """
        stages = state.get("stages") or []
        if state.get("is_quantized") and self._manager.quantization_modifiers:
            stage = next((i for i, s in enumerate(stages) if s.get("is_quantized")), len(stages) - 1)
            raise RecipeError(f"{self.source}: checkpoint is already quantized (recipe stage {stage}); remove the "
                              f"QuantizationModifier or start from the pre-QAT checkpoint (recipes/"
                              f"transfer_quantized.yaml fine-tunes a quantized checkpoint as it is)")
        pruned = {name: 1.0 - float(unpack_mask(packed).float().mean()) for name, packed in self._base_masks.items()}
        pruned = {name: sparsity for name, sparsity in pruned.items() if sparsity > 0}
        covered: set[str] = set()
        for modifier in self._manager.pruning_modifiers:
            targets = _targeted_parameters(modifier, module)
            covered.update(targets)
            init = getattr(modifier, "_init_sparsity", None)
            if not _is_number(init):
                continue
            repeats = [name for name in targets if pruned.get(name, 0.0) > init + 1e-3]
            if repeats:
                worst = max(repeats, key=lambda n: pruned[n])
                stage = max((i for i, s in enumerate(stages) if "pruned" in s.get("phase", "")), default=0)
                raise RecipeError(
                    f"{type(modifier).__name__} starts at init_sparsity {init:g} on {len(repeats)} parameters the "
                    f"checkpoint already pruned (e.g. {worst} at {pruned[worst]:.1%}): the pruning step of recipe "
                    f"stage {stage} would repeat (its zeros regrow, then get pruned again). Use init_sparsity: "
                    f"__FROM_PARAM__ to continue from the checkpoint's sparsity, or a ConstantPruningModifier to "
                    f"keep it")
        uncovered = sorted(set(pruned) - covered)
        if uncovered:
            self._notes.append(f"warning: the checkpoint is pruned but no pruning modifier holds {len(uncovered)} of "
                               f"its pruned parameters (e.g. {uncovered[0]}); their zeros will regrow. Add a "
                               f"ConstantPruningModifier to keep the sparsity")

    def _unreachable_events(self, epochs: int) -> list[str]:
        notes = []
        for modifier in self._manager.iter_modifiers():
            kind = type(modifier).__name__
            for attribute, value in _event_epochs(modifier).items():
                if kind == "EpochRangeModifier" or (attribute == "end_epoch" and kind.startswith("LearningRate")):
                    continue
                if math.floor(value) >= epochs:
                    notes.append(f"warning: {kind} {attribute} {value:g} is at or after the last epoch "
                                 f"({epochs} epochs: 0-{epochs - 1}); it never happens")
        return notes

    def _event_notes(self, epoch: int) -> list[str]:
        notes = []
        for modifier in self._manager.iter_modifiers():
            kind = type(modifier).__name__
            if kind == "EpochRangeModifier" or kind.startswith(("SetLearningRate", "LearningRate")):
                continue
            for attribute, value in _event_epochs(modifier).items():
                if epoch <= value < epoch + 1:
                    notes.append(f"{kind} {attribute.removesuffix('_epoch')} at epoch {value:g}")
        return notes

    def _applied_epoch(self) -> float:
        """The latest epoch value the recipe was advanced to: restoring the structure there reproduces this model."""
        applied = max(float(self._start_epoch), self._pre_update_epoch)
        if self._wrapped is not None:
            steps = self._wrapped.wrapped_steps - 1  # the last step's epoch value, computed as SparseML does
            if steps >= 0:
                applied = max(applied, float(steps // self._steps_per_epoch)
                              + float(steps % self._steps_per_epoch) / float(self._steps_per_epoch))
        return applied

    def _pruning_masks(self, modifier: Any) -> list[tuple[str, torch.Tensor]]:
        """(float name, mask) for every parameter a pruning modifier masks, in the modifier's order."""
        module_masks = getattr(modifier, "module_masks", None)
        if module_masks is None:
            return []
        ids = canonical_names(self._model)
        result = []
        for layer, parameter_name, full_name, mask in zip(module_masks.layers, module_masks.param_names,
                                                          module_masks.names, module_masks.param_masks):
            parameter = getattr(layer, parameter_name)
            name = ids.get(id(parameter)) or re.sub(r"\.(module|forward_fn)(?=\.)", "", full_name)
            result.append((name, mask))
        return result

    def _active_masks(self) -> dict[str, torch.Tensor]:
        """Masks currently held at zero (enabled modifiers), combined per parameter."""
        combined: dict[str, torch.Tensor] = {}
        for modifier in self._manager.pruning_modifiers:
            module_masks = getattr(modifier, "module_masks", None)
            if module_masks is None or not module_masks.enabled:
                continue
            for name, mask in self._pruning_masks(modifier):
                combined[name] = mask if name not in combined else combined[name] * mask
        return combined

    def _snapshot_modifiers(self) -> tuple[list[dict], dict[str, dict], float]:
        """Schedule state of every modifier, and the effective mask of every pruned parameter (packed).

        The effective masks are the checkpoint's base masks overridden by this run's started modifiers (combined with
        AND). A modifier's own mask is stored only where it differs from the effective one (overlapping modifiers, or
        a modifier that has not started yet), so masks are normally stored once.
        """
        effective = {name: unpack_mask(packed) for name, packed in self._base_masks.items()}
        run: dict[str, torch.Tensor] = {}
        modifiers, per_modifier = [], []
        for modifier in self._manager.iter_modifiers():
            attributes = {key: (list(value) if isinstance(value, tuple) else value)
                          for key, value in vars(modifier).items() if key in _SCHEDULE_ATTRIBUTES and _plain(value)}
            entry: dict[str, Any] = {"type": type(modifier).__name__, "attributes": attributes}
            projection = _projection_state(modifier)
            if projection:
                entry["projection"] = projection
            masks = [(name, mask.detach().ne(0).cpu()) for name, mask in self._pruning_masks(modifier)]
            if getattr(modifier, "module_masks", None) is not None:
                entry["masks_enabled"] = bool(modifier.module_masks.enabled)
                entry["mask_names"] = [name for name, _ in masks]
                if getattr(modifier, "_started", False):
                    for name, keep in masks:
                        run[name] = keep if name not in run else run[name] & keep
            per_modifier.append(masks)
            modifiers.append(entry)
        effective.update(run)
        for entry, masks in zip(modifiers, per_modifier):
            if "mask_names" not in entry:
                continue
            entry["own_masks"] = {name: _pack_mask(keep) for name, keep in masks
                                  if (name in effective and not torch.equal(effective[name], keep))
                                  or (name not in effective and not bool(keep.all()))}
        kept = sum(int(mask.sum()) for mask in effective.values())
        total = sum(mask.numel() for mask in effective.values())
        packed = {name: _pack_mask(mask) for name, mask in effective.items()}
        return modifiers, packed, (1.0 - kept / total) if total else 0.0

    def _saved_modifiers(self, state: dict) -> list[dict]:
        saved = state.get("modifiers") or []
        current = list(self._manager.iter_modifiers())
        if [s["type"] for s in saved] != [type(m).__name__ for m in current]:
            raise RecipeError("the checkpoint's modifier state does not match its recipe (modifiers "
                              f"{[s['type'] for s in saved]} vs {[type(m).__name__ for m in current]})")
        return saved

    def _restore_schedule(self, state: dict) -> None:
        """Schedule flags go back before the manager initializes, so QAT is not applied a second time."""
        for modifier, saved in zip(self._manager.iter_modifiers(), self._saved_modifiers(state)):
            for key, value in saved["attributes"].items():
                setattr(modifier, key, list(value) if isinstance(value, list) else value)
            if saved.get("projection"):
                from sparseml.pytorch.sparsification.distillation import DISTILL_PARAM_GROUP_KEY

                # applied when the modifier creates its projections, at the first distillation step
                modifier.load_state_dict({DISTILL_PARAM_GROUP_KEY: dict(saved["projection"])})

    def _restore_masks(self, state: dict) -> None:
        effective = state.get("masks") or {}
        for modifier, saved in zip(self._manager.iter_modifiers(), self._saved_modifiers(state)):
            if "mask_names" not in saved:
                continue
            masks = self._pruning_masks(modifier)
            names = [name for name, _ in masks]
            if sorted(names) != sorted(saved["mask_names"]):
                raise RecipeError(f"{type(modifier).__name__}: the checkpoint masks {len(saved['mask_names'])} "
                                  f"parameters but the model has {len(names)} matching ones; cannot resume exactly")
            restored = []
            for name, current in masks:
                packed = saved["own_masks"].get(name) or effective.get(name)
                mask = unpack_mask(packed) if packed is not None else torch.ones(current.shape, dtype=torch.bool)
                restored.append(mask.to(device=current.device, dtype=current.dtype))
            modifier.module_masks.enabled = bool(saved["masks_enabled"])
            modifier.module_masks.set_param_masks(restored)
