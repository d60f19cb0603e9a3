"""Reading a recipe: its text (file, ``.md`` front matter, ``zoo:`` stub), checks before SparseML sees it (size,
nesting, bounded ``eval``, modifier tags, YAML syntax), ``--recipe-args`` and ``--epochs`` scaling, and the
``ScheduledModifierManager`` built from it.

A wrong recipe fails here in seconds with a message that says what to change, instead of deep inside SparseML or
after an epoch of training. Checks that need the model live in ``checks.py``.
"""

from __future__ import annotations

import ast
import difflib
import json
import logging
import math
import operator
import re
from pathlib import Path
from typing import Any

import yaml

from utils.sparsification.compat import apply_compat
from utils.sparsification.epochs import (
    ModifierEpochs,
    describe_changes,
    modifier_epochs,
    scale_recipe_epochs,
    scaling_problems,
)
from utils.sparsification.zoo import ZooUnavailableError, is_zoo_stub, resolve_recipe

LOGGER = logging.getLogger(__name__)

# The fields of a modifier at which something happens (the phase changes)
EVENT_ATTRIBUTES = ("start_epoch", "end_epoch", "freeze_bn_stats_epoch", "disable_quantization_observer_epoch")

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
        if is_number(value) and not abs(value) <= MAX_RECIPE_NUMBER:
            raise RecipeError(f"{source}: {key}={value} is out of range (|x| <= {MAX_RECIPE_NUMBER:g}, finite)")
    variables = {key: value for key, value in overrides.items() if is_number(value)}

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
            elif is_number(value) and key not in overrides:
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
        if isinstance(node, ast.Constant) and is_number(node.value):
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
        if not is_number(result) or not abs(result) <= MAX_RECIPE_NUMBER:
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
        for attribute, value in event_epochs(modifier).items():
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


def is_number(value: Any) -> bool:
    """A real int or float (YAML's booleans are ints to Python but never epochs or sparsities)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_manager(text: str, variables: dict[str, Any], source: str) -> Any:
    """SparseML's manager from recipe text and variables; its parse errors become ``RecipeError`` naming ``source``."""
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


def event_epochs(modifier: Any) -> dict[str, float]:
    """The epochs at which ``modifier`` starts, ends, freezes BN or stops observers (the numeric ones)."""
    events = {}
    for attribute in EVENT_ATTRIBUTES:
        value = getattr(modifier, attribute, None)
        if is_number(value) and value >= 0:
            events[attribute] = float(value)
    return events


def recipe_epochs(manager: Any) -> int | None:
    """Epochs the recipe asks for: its EpochRangeModifier's end, else enough epochs for every scheduled event."""
    if manager.epoch_modifiers and manager.max_epochs > 0:
        return int(math.ceil(manager.max_epochs))
    events = [value for modifier in manager.iter_modifiers() for value in event_epochs(modifier).values()]
    return int(math.floor(max(events))) + 1 if events else None


def format_number(value: float) -> str:
    """An epoch or sparsity as people write it (3, not 3.0)."""
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
    return format_number(value) if is_number(value) else str(value)


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
    manager = build_manager(text, overrides, source)
    _check_schedule(manager, source)
    notes = [f"recipe {source}" + (f" with {overrides}" if overrides else "")]
    length = recipe_epochs(manager)
    if requested_epochs is None or requested_epochs == length:
        return manager, source, notes
    if "num_epochs" in overrides:
        notes.append(f"--epochs {requested_epochs} is ignored: recipe_args sets num_epochs={overrides['num_epochs']}")
        return manager, source, notes
    base = variables.get("num_epochs") if is_number(variables.get("num_epochs")) else length
    scaled = None
    if not staged and base and base > 0:
        scaled = _scale_epochs(text, source, overrides, requested_epochs / base, requested_epochs)
    if scaled is None:
        why = "it is staged" if staged else "it has no epochs to scale"
        notes.append(f"recipe decides the epochs: {length} ({why}); --epochs {requested_epochs} is not used")
        return manager, source, notes
    scaled_text, changes = scaled
    manager = build_manager(scaled_text, overrides, source)
    _check_schedule(manager, source)
    label = "num_epochs" if is_number(variables.get("num_epochs")) else "length"
    notes.append(f"recipe {label} {format_number(base)} -> {requested_epochs}: every epoch value x"
                 f"{requested_epochs / base:.6g}" + ("" if not overrides else
                                                   " (not the --recipe-args variables)"))
    notes += changes
    new_length = recipe_epochs(manager)
    if new_length != requested_epochs:
        notes.append(f"the scaled recipe runs {new_length} epochs, not {requested_epochs}: its epoch range does not "
                     f"follow its variables")
    return manager, source, notes


def manager_from_state_text(text: str, source: str) -> Any:
    """A manager from a recipe a checkpoint stored (already normalized: no variables to set)."""
    apply_compat()
    return build_manager(text, {}, source)


def compose_stages(texts: list[str]) -> str:
    """All stages as one staged recipe (SparseML's ``compose_staged``), for people and tools that read the recipe."""
    if len(texts) == 1:
        return texts[0]
    from sparseml.pytorch.optim import ScheduledModifierManager

    composed = texts[0]
    for text in texts[1:]:
        composed = str(ScheduledModifierManager.compose_staged(composed, text))
    return composed
