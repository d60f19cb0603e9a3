"""Read, validate and resolve a dataset YAML (Ultralytics format); fetch the data when it is missing.

Why a module of its own: train, val and export all need the same resolved view of a dataset and the same
clear errors, and downloads must never hang an offline machine.

Path rule (`path:` key):
  * absolute -> used as is;
  * relative -> `<cwd>/<path>` if that exists, else `<anchor>/<path>`, where `<anchor>` is the YAML file's
    parent's parent (the repository root for the YAMLs in `<repo>/data/`; the cwd for a dict). So
    `datasets/shapes` is `<repo>/datasets/shapes` and `../datasets/coco` sits beside the repository.
  * missing `path` -> the anchor itself.
`train`/`val`/`test` entries (a str or a list) are relative to the resolved `path` unless absolute; each may
be an image directory, a .txt file listing images, or a glob pattern.

`download:` values:
  * `python <script or -m module> [args]` -> run with `sys.executable` (argument list, no shell) in the
    directory `path` was resolved against (so `--out <path>` lands at `path`);
  * an http(s) URL, or a list of URLs / `{url: ..., dir: ...}` mappings -> each archive is fetched with a
    timeout and unpacked into the parent of `path` (or into `path/<dir>` for a mapping).
"""

from __future__ import annotations

import glob
import logging
import shlex
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import yaml

LOGGER = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
DOWNLOAD_TIMEOUT_S = 10.0  # per network operation: fail fast offline
_GLOB_CHARS = set("*?[")


class DatasetConfigError(ValueError):
    """A dataset YAML is invalid or its data cannot be found or fetched (the message names the YAML and the fix)."""


def _load_yaml(data: str | Path | dict) -> tuple[dict, Path | None]:
    """Return (mapping, yaml file or None); a bare name like `coco128.yaml` is also looked up in <repo>/data."""
    if isinstance(data, dict):
        return dict(data), None
    file = Path(data).expanduser()
    if not file.is_file() and not file.is_absolute() and (REPO_ROOT / "data" / file).is_file():
        file = REPO_ROOT / "data" / file
    if not file.is_file():
        raise DatasetConfigError(f"dataset YAML {data} not found: pass an existing file (e.g. data/shapes.yaml)")
    file = file.resolve()
    try:
        cfg = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DatasetConfigError(f"{file}: not valid YAML ({e}); fix the syntax") from e
    if not isinstance(cfg, dict):
        raise DatasetConfigError(f"{file}: expected a mapping with train/val/names keys, got {type(cfg).__name__}")
    return cfg, file


def _names(cfg: dict, where: str) -> dict[int, str]:
    """Normalise `names` (list or {int: str}) and check it against `nc`."""
    names = cfg.get("names")
    nc = cfg.get("nc")
    if names is None:
        if nc is None:
            raise DatasetConfigError(f"{where}: missing `names`; add `names: {{0: first_class, ...}}`")
        names = [f"class{i}" for i in range(int(nc))]
    if isinstance(names, (list, tuple)):
        out = {i: str(n) for i, n in enumerate(names)}
    elif isinstance(names, dict):
        try:
            out = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as e:
            raise DatasetConfigError(f"{where}: `names` keys must be integers 0..nc-1") from e
        if sorted(out) != list(range(len(out))):
            raise DatasetConfigError(f"{where}: `names` keys must be exactly 0..{len(out) - 1}, got {sorted(out)}")
        out = dict(sorted(out.items()))
    else:
        raise DatasetConfigError(f"{where}: `names` must be a list or a mapping {{index: name}}")
    if not out:
        raise DatasetConfigError(f"{where}: `names` is empty; list at least one class")
    if nc is not None and int(nc) != len(out):
        raise DatasetConfigError(
            f"{where}: nc={nc} but `names` has {len(out)} entries; fix `nc` to {len(out)} or remove it"
        )
    return out


def _anchor(yaml_file: Path | None) -> Path:
    return yaml_file.parent.parent if yaml_file is not None else Path.cwd()


def _resolve_root(cfg: dict, yaml_file: Path | None) -> tuple[Path, Path]:
    """Apply the `path:` rule of the module docstring; return (root, directory it was resolved against)."""
    anchor = _anchor(yaml_file)
    raw = cfg.get("path")
    if not raw:
        return anchor.resolve(), anchor
    p = Path(str(raw)).expanduser()
    if p.is_absolute():
        return p, anchor
    base = Path.cwd() if (Path.cwd() / p).exists() else anchor
    return (base / p).resolve(), base


def _resolve_split(value: Any, root: Path) -> str | list[str] | None:
    """Make each entry absolute (relative to `root`); keep the str-or-list shape."""
    if value is None or value == "" or value == []:
        return None

    def one(v: Any) -> str:
        text = str(v)
        p = Path(text).expanduser()
        p = p if p.is_absolute() else root / p
        return str(p) if _GLOB_CHARS & set(text) else str(p.resolve())

    return [one(v) for v in value] if isinstance(value, (list, tuple)) else one(value)


def _exists(entries: str | list[str] | None) -> bool:
    if entries is None:
        return False
    for e in [entries] if isinstance(entries, str) else entries:
        if _GLOB_CHARS & set(e):
            if not glob.glob(e, recursive=True):
                return False
        elif not Path(e).exists():
            return False
    return True


def _run_python(command: str, base: Path, where: str) -> None:
    """Run `python ...` from `download:` with this interpreter, without a shell, in `base`.

    `base` is the directory `path:` was resolved against, so relative output paths in the command land at
    `path`; a relative script is looked up in `base`, the cwd, then the repository root.
    """
    args = shlex.split(command)
    if len(args) >= 2 and not args[1].startswith("-") and not Path(args[1]).is_absolute():
        script = next((b / args[1] for b in (base, Path.cwd(), REPO_ROOT) if (b / args[1]).is_file()), None)
        if script is not None:
            args[1] = str(script)
    argv = [sys.executable, *args[1:]]
    LOGGER.info("Dataset missing: running %s in %s", shlex.join(argv), base)
    try:
        subprocess.run(argv, cwd=base, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise DatasetConfigError(f"{where}: download command {command!r} failed ({e})") from e


def _fetch(url: str, dest_dir: Path, where: str, root: Path) -> Path:
    """Download `url` into `dest_dir` with a timeout; raise a clear error offline."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            dest_dir.mkdir(parents=True, exist_ok=True)
            target = dest_dir / name
            partial = target.with_name(target.name + ".part")
            with open(partial, "wb") as f:
                shutil.copyfileobj(response, f, length=1 << 20)
            partial.replace(target)
            return target
    except Exception as e:  # URLError, timeouts, HTTP errors, connection resets: all mean "not downloadable now"
        raise DatasetConfigError(
            f"{where}: could not download {url} ({type(e).__name__}: {e}). No network? Download it manually and "
            f"unpack it so that the dataset is at {root}, or edit `path:` in the YAML."
        ) from e


def _unpack(archive: Path, dest_dir: Path) -> None:
    """Unpack zip/tar archives safely (no member may escape `dest_dir`), then delete the archive."""
    dest = dest_dir.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (dest / member).resolve().is_relative_to(dest):
                    raise DatasetConfigError(f"{archive}: unsafe member path {member!r}")
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    else:
        return  # not an archive: leave the file where it is
    archive.unlink()


def _download(spec: Any, root: Path, base: Path, where: str) -> None:
    if isinstance(spec, str) and spec.strip().split(maxsplit=1)[0] in ("python", "python3"):
        _run_python(spec.strip(), base, where)
        return
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    for item in items:
        if isinstance(item, dict) and "url" in item:
            url, dest = str(item["url"]), root / str(item.get("dir", ""))
        elif isinstance(item, str):
            url, dest = item.strip(), root.parent
        else:
            url, dest = "", root
        if not url.startswith(("http://", "https://")):
            raise DatasetConfigError(
                f"{where}: unsupported `download:` entry {item!r}; use `python <script> ...`, http(s) URLs or "
                f"{{url, dir}} mappings, or put the data at {root} yourself"
            )
        LOGGER.info("Downloading %s -> %s", url, dest)
        _unpack(_fetch(url, dest, where, root), dest)


def check_dataset(data: str | Path | dict, autodownload: bool = True, require_train: bool = False) -> dict:
    """Validate a dataset YAML (or dict), resolve its paths and fetch the data if `val` is missing.
    With `require_train` (training), a missing `train` split is an error naming the YAML too.

    Returns {path, train, val, test, names, nc, yaml_file}: paths are absolute str (or lists of str, as given),
    `test` may be None, `names` is {int: str}, `yaml_file` is the absolute YAML path (None for a dict).
    """
    cfg, yaml_file = _load_yaml(data)
    where = str(yaml_file) if yaml_file is not None else "dataset dict"
    for key in ("train", "val"):
        if not cfg.get(key):
            raise DatasetConfigError(
                f"{where}: missing `{key}:` key; add e.g. `{key}: images/{key}` (relative to `path:`)"
            )
    names = _names(cfg, where)
    root, base = _resolve_root(cfg, yaml_file)
    splits = {k: _resolve_split(cfg.get(k), root) for k in ("train", "val", "test")}
    if not _exists(splits["val"]):
        missing = splits["val"]
        spec = cfg.get("download")
        if not spec or not autodownload:
            hint = "enable autodownload" if spec else "put the dataset there or add a `download:` entry"
            raise DatasetConfigError(f"{where}: val data not found at {missing}; {hint}")
        _download(spec, root, base, where)
        root, _ = _resolve_root(cfg, yaml_file)
        splits = {k: _resolve_split(cfg.get(k), root) for k in ("train", "val", "test")}
        if not _exists(splits["val"]):
            raise DatasetConfigError(
                f"{where}: download finished but val data is still missing at {splits['val']}; check `download:`"
            )
    if require_train and not _exists(splits["train"]):
        raise DatasetConfigError(f"{where}: train data not found at {splits['train']}; fix `train:` (relative to "
                                 f"`path:` {root}) or put the images there")
    return {
        "path": str(root),
        "train": splits["train"],
        "val": splits["val"],
        "test": splits["test"],
        "names": names,
        "nc": len(names),
        "yaml_file": str(yaml_file) if yaml_file is not None else None,
    }
