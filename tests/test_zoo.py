"""SparseZoo stub resolution: local mirror offline, fast and clear failure without a network, never a hang.

No test here reaches the internet: the API URL always points at 127.0.0.1 (a closed port or a server that never
answers), and the mirror is a folder the test writes.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from utils.sparsification import zoo
from utils.sparsification.zoo import ZooUnavailableError, parse_stub, resolve_recipe, resolve_weights

STUB = "zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned75_quant-none"
FOLDER = "cv_detection_yolov5-s_pytorch_ultralytics_coco_pruned75_quant-none"


def _point_api_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Where sparsezoo sends its API calls: the env var before its import, its module global after."""
    monkeypatch.setenv("SPARSEZOO_API_URL", url)
    graphql = sys.modules.get("sparsezoo.api.graphql")
    if graphql is not None:
        monkeypatch.setattr(graphql, "BASE_API_URL", url)


@pytest.fixture(autouse=True)
def _no_mirror_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(zoo.ZOO_DIR_ENV, raising=False)
    monkeypatch.delenv(zoo.ZOO_TIMEOUT_ENV, raising=False)
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP connections and never answers (a firewall that swallows requests)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    for connection in accepted:  # the abandoned lookup thread gets EOF and ends
        connection.close()
    server.close()


@pytest.fixture
def sparsezoo_ready() -> None:
    """Import sparseml/sparsezoo (with the project's setup: analytics off) before timing anything."""
    zoo._prepare_sparsezoo()
    import sparsezoo  # noqa: F401 - required (requirements.txt): an import error fails the test, not skips it


def _write_mirror(root: Path) -> Path:
    folder = root / FOLDER
    (folder / "training").mkdir(parents=True)
    (folder / "recipe").mkdir()
    (folder / "training" / "model.pt").write_bytes(b"final")
    (folder / "training" / "model.ckpt.pt").write_bytes(b"transfer")
    (folder / "recipe" / "recipe.yaml").write_text("version: 1.1.0\n")
    (folder / "recipe" / "recipe_transfer_learn.md").write_text("---\nversion: 1.1.0\n---\n")
    return folder


# ------------------------------------------------------------------------------------------------------------ stubs
def test_parse_stub_splits_path_and_query() -> None:
    stub = parse_stub(STUB + "?recipe_type=transfer_learn")
    assert stub.path == STUB[len("zoo:"):]
    assert stub.recipe_type == "transfer_learn"
    assert stub.mirror_folder == FOLDER
    assert parse_stub("zoo:yolov5-s-coco-pruned75_quantized").mirror_folder == "yolov5-s-coco-pruned75_quantized"


@pytest.mark.parametrize("bad", [
    "zoo:", "zoo:yolov5s", "zoo:cv/detection/yolov5-s", "zoo:cv//detection/yolov5-s/pytorch/ultralytics/coco/x",
    STUB + "?recipe_type", STUB + "?colour=blue", STUB + "?recipe_type=a?b=c", "zoo:cv/../../etc/x/y/z/w",
    "zoo:cv/detection/yolov5 s/pytorch/ultralytics/coco/pruned",
])
def test_malformed_stub_is_a_value_error_before_any_network(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("network touched for a malformed stub")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ValueError, match="malformed SparseZoo stub"):
        resolve_weights(bad)
    with pytest.raises(ValueError, match="malformed SparseZoo stub"):
        resolve_recipe(bad)


def test_local_paths_pass_through_untouched(tmp_path: Path) -> None:
    assert resolve_recipe("recipes/demo.yaml") == "recipes/demo.yaml"
    assert resolve_weights(str(tmp_path / "best.pt")) == str(tmp_path / "best.pt")


# ----------------------------------------------------------------------------------------------------- local mirror
def test_local_mirror_resolves_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_port: int,
                                       sparsezoo_ready: None) -> None:
    folder = _write_mirror(tmp_path)
    monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(tmp_path))
    _point_api_at(monkeypatch, f"http://127.0.0.1:{closed_port}")  # any API call would fail loudly

    assert resolve_weights(STUB) == str(folder / "training" / "model.pt")
    assert resolve_weights(STUB + "?recipe_type=transfer_learn") == str(folder / "training" / "model.ckpt.pt")
    assert resolve_recipe(STUB) == str(folder / "recipe" / "recipe.yaml")
    assert resolve_recipe(STUB + "?recipe_type=transfer_learn") == str(folder / "recipe" / "recipe_transfer_learn.md")
    with pytest.raises(FileNotFoundError, match=r"recipe_original.*available: recipe.yaml, recipe_transfer_learn.md"):
        resolve_recipe(STUB + "?recipe_type=original")


def test_mirror_without_checkpoint_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        sparsezoo_ready: None) -> None:
    folder = tmp_path / FOLDER  # recipe at the top of the folder, the other layout sparsezoo knows
    folder.mkdir()
    (folder / "recipe.md").write_text("---\nversion: 1.1.0\n---\n")
    monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(tmp_path))
    assert resolve_recipe(STUB) == str(folder / "recipe.md")
    with pytest.raises(FileNotFoundError, match=r"no PyTorch checkpoint \(model.pt"):
        resolve_weights(STUB)


# ----------------------------------------------------------------------------------------------------- no network
def test_closed_port_fails_fast_and_names_the_mirror(monkeypatch: pytest.MonkeyPatch, closed_port: int,
                                                     tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    _point_api_at(monkeypatch, url)
    monkeypatch.setenv(zoo.ZOO_DIR_ENV, str(tmp_path))  # set, but no folder for this stub
    for resolve in (resolve_weights, resolve_recipe):
        start = time.monotonic()
        with pytest.raises(ZooUnavailableError) as caught:
            resolve(STUB + "?recipe_type=transfer_learn")
        assert time.monotonic() - start < 5
        message = str(caught.value)
        assert url in message and "refused" in message
        assert f"$YOLOV5_SPARSE_ZOO_DIR/{FOLDER}" in message
        assert str(tmp_path / FOLDER) in message and "recipes/README.md" in message


def test_silent_server_is_cut_off_by_the_timeout(monkeypatch: pytest.MonkeyPatch, silent_server: int,
                                                 sparsezoo_ready: None) -> None:
    _point_api_at(monkeypatch, f"http://127.0.0.1:{silent_server}")
    timeout = 1.0
    start = time.monotonic()
    with pytest.raises(ZooUnavailableError, match=r"unreachable \(no answer within 1 s\)"):
        resolve_weights(STUB, timeout=timeout)
    assert time.monotonic() - start < timeout + 3


def test_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, silent_server: int,
                                            sparsezoo_ready: None) -> None:
    _point_api_at(monkeypatch, f"http://127.0.0.1:{silent_server}")
    monkeypatch.setenv(zoo.ZOO_TIMEOUT_ENV, "0.5")
    with pytest.raises(ZooUnavailableError, match=r"no answer within 0.5 s"):
        resolve_recipe(STUB)
    monkeypatch.setenv(zoo.ZOO_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="YOLOV5_SPARSE_ZOO_TIMEOUT"):
        resolve_recipe(STUB)


def test_bounded_call_passes_results_and_errors_through() -> None:
    assert zoo._run_bounded(lambda: 42, timeout=5) == 42
    with pytest.raises(KeyError):
        zoo._run_bounded(lambda: {}["missing"], timeout=5)
    with pytest.raises(zoo.DeadlineExceeded):
        zoo._run_bounded(lambda: time.sleep(2), timeout=0.1)
