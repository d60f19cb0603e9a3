"""Make SparseML 1.8.0 work on the pinned modern torch; applied explicitly, once, before any recipe manager exists.

Nothing here runs at import. ``apply_compat()`` is idempotent and is called by ``recipes.py`` before any recipe is
parsed; each fix below has a test in ``tests/test_compat.py`` that fails without it.

1. ``QConfig`` attribute (quantization-aware training crashes without it). torch's ``QConfig`` namedtuple declares
   ``__slots__ = ()``, so its instances take no new attributes, but SparseML tags every QConfig it builds with
   ``qconfig.quantization_scheme = scheme`` (``QuantizationScheme.get_qconfig``/``get_wrapper_qconfig`` and
   ``QATWrapper``). The first optimizer step of the QAT epoch then dies with ``AttributeError: 'QConfig' object has no
   attribute 'quantization_scheme'``. Every one of those QConfigs comes from the module-level
   ``quantization_scheme._get_qconfig``, so we wrap it to return ``SchemeQConfig``: the same named tuple (still an
   ``isinstance`` of ``QConfig``, same fields) minus ``__slots__``. It is defined at module level so that it pickles.
2. Recipe serialization (checkpoints would not rebuild). SparseML writes a modifier's list/dict properties with
   Python's ``str()``, which doubles every backslash inside the quoted strings; YAML single-quoted strings keep them
   doubled. A regex such as ``re:^model\\.1\\..*`` therefore becomes ``re:^model\\\\.1...`` after one save/load
   (``str(manager)``, ``compose_staged``, the recipe stored in a checkpoint) and then matches nothing. We re-serialize
   such values (containers holding a string with a backslash) as YAML flow collections, which round-trip exactly;
   every other property is written as before.
3. Usage analytics. Importing sparseml builds a Google Analytics client that looks up the machine's external IP and
   country (about 2 s of extra import time, and a network request on every manager built). Training must not phone
   home or depend on the network, so unless the user set ``NM_DISABLE_ANALYTICS`` themselves we set it before the first
   import and switch off clients that an earlier import already created.
4. Duplicated log lines. ``sparseml/log.py`` gives the ``sparseml`` and ``__main__`` loggers console handlers of
   their own at INFO, at import; those loggers also propagate to the root logger the scripts configure, so every
   SparseML line (and every ``__main__`` line) printed twice, once with SparseML's timestamp format. We remove those
   two handlers and leave SparseML's lines to the root's configuration, at WARNING unless the script runs with
   ``--verbose`` (``utils.logs``).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any

from torch.ao.quantization import QConfig

from utils.logs import verbose_logging

_APPLIED = False


class SchemeQConfig(QConfig):
    """A ``QConfig`` that accepts SparseML's ``quantization_scheme`` attribute (no ``__slots__``)."""


def _disable_analytics() -> None:
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    if not os.environ["NM_DISABLE_ANALYTICS"]:
        return  # an empty value is falsy for sparsezoo: the user asked for analytics on
    for module_name, attribute in (("sparseml.analytics", "sparseml_analytics"),
                                   ("sparsezoo.analytics", "sparsezoo_analytics")):
        client = getattr(sys.modules.get(module_name), attribute, None)
        if client is not None:
            client._disabled = True


def _patch_qconfig() -> None:
    import sparseml.pytorch.sparsification.quantization.quantization_scheme as quantization_scheme

    original = quantization_scheme._get_qconfig
    if getattr(original, "_yolov5_compat", False):
        return

    @functools.wraps(original)
    def _get_qconfig(activation_args: Any, weight_args: Any) -> QConfig:
        qconfig = original(activation_args, weight_args)
        return SchemeQConfig(qconfig.activation, qconfig.weight)

    _get_qconfig._yolov5_compat = True
    quantization_scheme._get_qconfig = _get_qconfig


def _has_backslash_string(value: Any) -> bool:
    if isinstance(value, str):
        return "\\" in value
    if isinstance(value, dict):
        return any(_has_backslash_string(k) or _has_backslash_string(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_backslash_string(v) for v in value)
    return False


def _patch_recipe_serialization() -> None:
    import yaml
    from sparseml.optim.modifier import BaseModifier

    original = BaseModifier.props
    if getattr(original, "_yolov5_compat", False):
        return

    @functools.wraps(original)
    def props(self: Any, only_serializable: bool, format_str: bool = False, format_repr: bool = False) -> dict:
        formatted = original(self, only_serializable, format_str=format_str, format_repr=format_repr)
        if not format_str:
            return formatted
        for key, value in original(self, only_serializable).items():
            if key in formatted and isinstance(value, (list, tuple, dict)) and _has_backslash_string(value):
                try:
                    plain = list(value) if isinstance(value, tuple) else value
                    formatted[key] = yaml.safe_dump(plain, default_flow_style=True, width=1 << 30).strip()
                except yaml.YAMLError:
                    pass  # not plain data: keep SparseML's own format
        return formatted

    props._yolov5_compat = True
    BaseModifier.props = props


def apply_compat() -> None:
    """Apply every fix above (safe to call many times; only the first call does work)."""
    global _APPLIED
    if _APPLIED:
        return
    _disable_analytics()
    _patch_qconfig()
    _patch_recipe_serialization()
    _route_logging()
    _APPLIED = True


def _route_logging() -> None:
    import sparseml.log  # noqa: F401  (its import adds the handlers removed here)

    for name in ("sparseml", "__main__"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler and getattr(handler, "stream", None) is sys.stderr:
                logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    logging.getLogger("sparseml").setLevel(logging.DEBUG if verbose_logging() else logging.WARNING)
