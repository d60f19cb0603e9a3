"""Resolve ``zoo:`` SparseZoo stubs (``--recipe zoo:...``, ``--weights zoo:...``) to local files.

sparsezoo asks its GraphQL API about every stub before it looks at its own cache, and sends that request without a
timeout: offline it fails with a raw ``requests`` traceback, and behind a network that accepts but never answers it
hangs for good. So a stub is resolved in this order:

1. A local mirror: ``$YOLOV5_SPARSE_ZOO_DIR/<folder>``, where ``<folder>`` is the stub without ``zoo:`` and without
   its query string, ``/`` replaced by ``_``. The folder is read with ``sparsezoo.Model(<folder>)``, which never
   touches the network. Layout: ``training/model.pt`` (and ``training/model.ckpt.pt`` for transfer learning),
   ``recipe/recipe.yaml`` or ``recipe.md`` (and ``recipe_<type>.yaml|md``), optionally ``model.onnx``.
2. The real ``sparsezoo.Model(stub)``, after a 3 s TCP probe of the API host, and bounded by an overall timeout.

Any network failure becomes one ``ZooUnavailableError`` that names the local alternatives.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from utils.sparsification.compat import apply_compat

LOGGER = logging.getLogger(__name__)

ZOO_PREFIX = "zoo:"
ZOO_DIR_ENV = "YOLOV5_SPARSE_ZOO_DIR"  # local mirror: one folder per stub
ZOO_TIMEOUT_ENV = "YOLOV5_SPARSE_ZOO_TIMEOUT"  # seconds for the API lookup
ZOO_DOWNLOAD_TIMEOUT_ENV = "YOLOV5_SPARSE_ZOO_DOWNLOAD_TIMEOUT"  # seconds for downloading one file
DEFAULT_API_URL = "https://api.neuralmagic.com"  # sparsezoo's default when SPARSEZOO_API_URL is unset
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_DOWNLOAD_TIMEOUT_S = 900.0
CONNECT_TIMEOUT_S = 3.0

# Query keys sparsezoo understands; recipe_type (v1 stubs) and recipe (v2) both pick a recipe by name.
_QUERY_KEYS = ("recipe_type", "recipe", "checkpoint", "deployment")
_TOKEN = re.compile(r"^[A-Za-z0-9._-]+$")
_STUB_FORMS = ("zoo:<domain>/<sub_domain>/<architecture>/<framework>/<repo>/<dataset>/<sparse_tag>"
               "[?recipe_type=<type>], e.g. zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned75_quant-none, "
               "or zoo:<architecture>-<dataset>-<sparse_tag>")

T = TypeVar("T")


class ZooUnavailableError(RuntimeError):
    """The SparseZoo API cannot be reached (offline, DNS, refused, no answer in time)."""


class DeadlineExceeded(TimeoutError):
    """A bounded sparsezoo call did not return in time (it may still be blocked in its daemon thread)."""


@dataclass(frozen=True)
class ZooStub:
    """A validated ``zoo:`` stub split into its model path and query parameters."""

    stub: str  # as the user wrote it
    path: str  # without the prefix and the query string
    params: dict[str, str] = field(default_factory=dict)

    @property
    def recipe_type(self) -> str | None:
        return self.params.get("recipe_type") or self.params.get("recipe")

    @property
    def mirror_folder(self) -> str:
        """The folder name this stub has in a local mirror (``$YOLOV5_SPARSE_ZOO_DIR/<mirror_folder>``)."""
        return self.path.replace("/", "_")


def is_zoo_stub(source: object) -> bool:
    return isinstance(source, str) and source.startswith(ZOO_PREFIX)


def parse_stub(stub: str) -> ZooStub:
    """Validate a stub's shape before anything touches the network; a ValueError says what a stub looks like."""
    if not is_zoo_stub(stub):
        raise ValueError(f"not a SparseZoo stub: {stub!r}; expected {_STUB_FORMS}")
    body = stub[len(ZOO_PREFIX):]
    if body.count("?") > 1:
        raise ValueError(f"malformed SparseZoo stub {stub!r}: more than one '?'; expected {_STUB_FORMS}")
    path, _, query = body.partition("?")
    segments = path.split("/")
    if not all(_TOKEN.match(s) and s not in (".", "..") for s in segments):
        raise ValueError(f"malformed SparseZoo stub {stub!r}: empty or invalid path segment in {path!r} (letters, "
                         f"digits, '.', '_' and '-' only); expected {_STUB_FORMS}")
    # sparsezoo treats anything that is not one of its two stub shapes as a local directory: refuse it here instead.
    if not (len(segments) >= 7 or (len(segments) == 1 and segments[0].count("-") >= 2)):
        raise ValueError(f"malformed SparseZoo stub {stub!r}: expected {_STUB_FORMS}")
    params: dict[str, str] = {}
    if "?" in body:
        for pair in query.split("&"):
            key, sep, value = pair.partition("=")
            if not sep or not _TOKEN.match(value or "") or key not in _QUERY_KEYS:
                raise ValueError(f"malformed SparseZoo stub {stub!r}: bad query parameter {pair!r}; expected "
                                 f"key=value with key one of {', '.join(_QUERY_KEYS)}")
            params[key] = value
    return ZooStub(stub=stub, path=path, params=params)


def sparsezoo_api_url() -> str:
    """The API URL sparsezoo will call: its module value once imported, else what it will read at import."""
    graphql = sys.modules.get("sparsezoo.api.graphql")
    url = getattr(graphql, "BASE_API_URL", None) if graphql is not None else None
    return url or os.getenv("SPARSEZOO_API_URL") or DEFAULT_API_URL


def mirror_dir(stub: ZooStub) -> Path | None:
    """The stub's folder in the local mirror, if ``$YOLOV5_SPARSE_ZOO_DIR`` is set and the folder exists."""
    root = os.getenv(ZOO_DIR_ENV)
    if not root:
        return None
    folder = Path(root).expanduser() / stub.mirror_folder
    return folder if folder.is_dir() else None


def resolve_recipe(recipe: str, timeout: float | None = None) -> str:
    """A local recipe path (or any non-stub string) unchanged; a ``zoo:`` stub -> the path of its recipe file.

    ``?recipe_type=<type>`` picks ``recipe_<type>.(md|yaml)``; without it the model's ``recipe.(md|yaml)``.
    """
    if not is_zoo_stub(recipe):
        return recipe
    stub = parse_stub(recipe)
    model, local = _load_model(stub, timeout)
    candidates = _recipe_candidates(model, local)
    wanted = f"recipe_{stub.recipe_type}" if stub.recipe_type else "recipe"
    chosen = _pick_recipe(candidates, wanted, allow_single=stub.recipe_type is None)
    if chosen is None:
        names = ", ".join(sorted(candidates)) or "none"
        raise FileNotFoundError(f"{stub.stub}: no recipe '{wanted}' in {_where(stub, model, local)} "
                                f"(available: {names})")
    path = chosen if isinstance(chosen, str) else _download(stub, chosen)
    LOGGER.info("recipe %s -> %s%s", stub.stub, path, " (local mirror)" if local else "")
    return path


def resolve_weights(weights: str, timeout: float | None = None) -> str:
    """A local path unchanged; a ``zoo:`` stub -> the path of its PyTorch checkpoint (``training/model.pt``).

    ``?recipe_type=transfer_learn`` (any type containing "transfer") prefers ``model.ckpt.pt``, the checkpoint
    SparseZoo publishes for sparse transfer learning, and falls back to ``model.pt``.
    """
    if not is_zoo_stub(weights):
        return weights
    stub = parse_stub(weights)
    model, local = _load_model(stub, timeout)
    names = ["model.pt", "model.pth"]
    if stub.recipe_type and "transfer" in stub.recipe_type.lower():
        names = ["model.ckpt.pt", "model.ckpt.pth", *names]
    found = _find_training_file(getattr(model, "training", None), names)
    if found is None:
        raise FileNotFoundError(f"{stub.stub}: no PyTorch checkpoint ({' / '.join(names)}) under training/ in "
                                f"{_where(stub, model, local)}")
    path = found.path if local else _download(stub, found)
    LOGGER.info("weights %s -> %s%s", stub.stub, path, " (local mirror)" if local else "")
    return path


# ---------------------------------------------------------------------------------------------------------- internals
def _load_model(stub: ZooStub, timeout: float | None) -> tuple[Any, bool]:
    """``sparsezoo.Model`` for the stub: from the local mirror if present (offline), else from the API (bounded)."""
    timeout = _seconds(timeout, ZOO_TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    folder = mirror_dir(stub)
    if folder is not None:
        _prepare_sparsezoo()
        # Offline by design; bounded all the same, in case sparsezoo was imported earlier with its analytics on.
        try:
            return _run_bounded(lambda: _sparsezoo_model(str(folder)), timeout), True
        except DeadlineExceeded:
            raise ZooUnavailableError(f"cannot read the local mirror {folder} for {stub.stub}: sparsezoo did not "
                                      f"finish within {timeout:g} s (set NM_DISABLE_ANALYTICS=1 to stop its network "
                                      f"probe)") from None
        except ValueError as error:
            raise ValueError(f"{folder} (local mirror of {stub.stub}) is not a SparseZoo model folder: {error}. "
                             f"Expected training/model.pt and/or recipe/recipe.yaml inside.") from None

    url = sparsezoo_api_url()
    _probe(url, stub)
    _prepare_sparsezoo()
    try:
        return _run_bounded(lambda: _sparsezoo_model(stub.stub), timeout), False
    except DeadlineExceeded:
        raise ZooUnavailableError(_unavailable(stub, url, f"no answer within {timeout:g} s")) from None
    except Exception as error:
        if _is_network_error(error):
            raise ZooUnavailableError(_unavailable(stub, url, _describe(error))) from error
        raise


def _prepare_sparsezoo() -> None:
    """The project's one-time SparseML setup; among others it stops sparsezoo's analytics, which at import looks up
    the machine's external IP with no timeout. Runs in the caller's thread: a timed-out import must not hold the
    import lock."""
    apply_compat()


def _sparsezoo_model(source: str) -> Any:
    from sparsezoo import Model

    return Model(source)


def _download(stub: ZooStub, file: Any) -> str:
    """Download one file of a stub's model (``File.path`` downloads on first access), bounded."""
    timeout = _seconds(None, ZOO_DOWNLOAD_TIMEOUT_ENV, DEFAULT_DOWNLOAD_TIMEOUT_S)
    try:
        return str(_run_bounded(lambda: file.path, timeout))
    except DeadlineExceeded:
        raise ZooUnavailableError(f"cannot download {getattr(file, 'name', 'a file')} of {stub.stub}: not finished "
                                  f"within {timeout:g} s (raise ${ZOO_DOWNLOAD_TIMEOUT_ENV}, or mirror the stub into "
                                  f"${ZOO_DIR_ENV}/{stub.mirror_folder}; see recipes/README.md)") from None
    except Exception as error:
        if _is_network_error(error):
            raise ZooUnavailableError(_unavailable(stub, sparsezoo_api_url(), _describe(error))) from error
        raise


def _find_training_file(training: Any, names: list[str]) -> Any:
    """The first of ``names`` in the training folder; sparsezoo's ``default`` view first (it prefers pre-QAT)."""
    if training is None:
        return None
    try:
        default = training.default
    except (AttributeError, StopIteration, KeyError):
        default = None
    for directory in (default, training):
        if directory is None or not hasattr(directory, "get_file"):
            continue
        for name in names:
            found = directory.get_file(name)
            if found is not None:
                return found
    return None


def _recipe_candidates(model: Any, local: bool) -> dict[str, Any]:
    """Recipe name -> a path (local) or a sparsezoo File (remote, downloaded only once chosen)."""
    candidates: dict[str, Any] = {}
    recipes = getattr(getattr(model, "recipes", None), "recipes", None) or []
    for entry in recipes:
        if local:
            entry_path = Path(entry.path)
            # A mirror's recipe/ folder is listed by sparsezoo as one entry: look inside.
            files = sorted(entry_path.iterdir()) if entry_path.is_dir() else [entry_path]
            for file in files:
                if file.suffix in (".md", ".yaml", ".yml"):
                    candidates.setdefault(file.name, str(file))
        else:
            candidates.setdefault(entry.name, entry)
    return candidates


def _pick_recipe(candidates: dict[str, Any], wanted: str, allow_single: bool) -> Any:
    def key(name: str) -> str:
        return name.replace("-", "_").lower()

    by_stem = {key(Path(name).stem): item for name, item in candidates.items()}
    if key(wanted) in by_stem:
        return by_stem[key(wanted)]
    if allow_single and len(candidates) == 1:
        return next(iter(candidates.values()))
    return None


def _where(stub: ZooStub, model: Any, local: bool) -> str:
    return f"the local mirror {getattr(model, '_path', '')}" if local else f"the SparseZoo model {stub.path}"


def _probe(url: str, stub: ZooStub) -> None:
    """Fail within seconds when the API host (or the proxy in front of it) takes no TCP connection."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ZooUnavailableError(_unavailable(stub, url, "the URL has no host"))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or host, proxy_parts.port or 8080
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        raise ZooUnavailableError(_unavailable(stub, url, _describe(error, host, port))) from error


def _run_bounded(function: Callable[[], T], timeout: float) -> T:
    """Run ``function`` in a daemon thread and wait at most ``timeout`` s (TimeoutError after).

    Not a ThreadPoolExecutor: its workers are joined at interpreter exit, so a request that never returns would
    hang the process on exit. A daemon thread left blocked on a dead socket is simply dropped.
    """
    future: Future = Future()

    def work() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = function()
        except BaseException as error:  # handed to the caller
            future.set_exception(error)
        else:
            future.set_result(result)

    threading.Thread(target=work, name="sparsezoo-lookup", daemon=True).start()
    try:
        return future.result(timeout=timeout)
    except TimeoutError:
        if future.done():  # the function itself raised a TimeoutError (e.g. a socket timeout)
            raise
        raise DeadlineExceeded(f"no result within {timeout:g} s") from None


def _is_network_error(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror, socket.herror)):
        return True
    requests = sys.modules.get("requests")
    if requests is None:
        return False
    network = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.HTTPError)
    return isinstance(error, network)


def _describe(error: BaseException, host: str | None = None, port: int | None = None) -> str:
    target = f" {host}:{port}" if host else ""
    if isinstance(error, socket.gaierror):
        return f"DNS lookup of{target or ' the host'} failed: {error}"
    if isinstance(error, ConnectionRefusedError):
        return f"connection to{target} refused"
    if isinstance(error, TimeoutError):
        return f"no TCP connection to{target} within {CONNECT_TIMEOUT_S:g} s"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:240]}"


def _unavailable(stub: ZooStub, url: str, cause: str) -> str:
    root = os.getenv(ZOO_DIR_ENV)
    looked = f" (looked for {Path(root).expanduser() / stub.mirror_folder}: not there)" if root else ""
    return (f"cannot resolve {stub.stub}: SparseZoo API {url} unreachable ({cause}). Pass a local recipe/.pt path, "
            f"or mirror the stub into ${ZOO_DIR_ENV}/{stub.mirror_folder}{looked} (see recipes/README.md)")


def _seconds(value: float | None, env: str, default: float) -> float:
    if value is not None:
        seconds = float(value)
    else:
        raw = os.getenv(env)
        try:
            seconds = float(raw) if raw else default
        except ValueError:
            raise ValueError(f"${env}={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"timeout must be positive, got {seconds:g} s")
    return seconds
