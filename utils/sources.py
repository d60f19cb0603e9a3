"""What detect.py reads: images, video files, a camera or a stream URL, as one sequence of frames.

``open_source`` checks the source when it is called (a missing file, a video OpenCV cannot decode, a camera index
that does not exist, a stream that does not answer), so a bad ``--source`` fails with a message naming it and the fix
before any model is loaded. Iterating the returned ``Source`` decodes lazily, one ``Frame`` at a time.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.dataset import IMG_FORMATS, read_image

VIDEO_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://")
DEFAULT_FPS = 30.0  # cameras and streams often report no frame rate
STREAM_OPEN_TIMEOUT_MS = 15_000
SOURCE_KINDS = "an image, a video, a folder, a glob, a .txt list, a camera index or a stream URL"


class SourceError(ValueError):
    """A ``--source`` that cannot be read; the message names it and says what to do."""


@dataclass
class Frame:
    """One image, or one frame of a video, camera or stream, with what is needed to name its results."""

    image: np.ndarray  # the original BGR pixels
    path: str  # image or video file, stream URL or camera index
    kind: str  # "image", "video" or "stream" (a camera is a stream)
    frame: int = 0  # 1-based count of frames read from this video/stream (Ultralytics' frame number); 0: image
    frames: int = 0  # frames this video will give after --vid-stride; 0 for images, cameras and streams
    position: int = 1  # 1-based index of the file among the source's files
    count: int = 1  # number of files in the source
    fps: float = DEFAULT_FPS  # frame rate of the video after --vid-stride

    @property
    def stem(self) -> str:
        """The source's name without suffix: ``photo`` for photo.jpg, ``0`` for camera 0, ``cam1`` for rtsp://h/cam1."""
        if self.kind == "stream":
            last = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "stream"
            return re.sub(r"[^\w.-]", "_", Path(last).stem or last)
        return Path(self.path).stem

    @property
    def name(self) -> str:
        """Name of this frame's label, crop and CSV row: ``photo`` for an image, ``clip_3`` for frame 3 of clip.mp4."""
        return self.stem if self.kind == "image" else f"{self.stem}_{self.frame}"

    def describe(self) -> str:
        """The start of detect.py's line for this frame, as Ultralytics prints it."""
        if self.kind == "image":
            return f"image {self.position}/{self.count} {self.path}"
        if self.kind == "video":
            return f"video {self.position}/{self.count} (frame {self.frame}/{self.frames or '?'}) {self.path}"
        return f"stream {self.path} (frame {self.frame})"


def is_camera(source: str | Path) -> bool:
    """``0``, ``1``, ...: a camera index, as ``--source 0`` in Ultralytics."""
    return str(source).strip().isdigit()


def is_url(source: str | Path) -> bool:
    return str(source).lower().startswith(STREAM_SCHEMES)


def _suffix(path: str) -> str:
    return path.split("?")[0].rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""


def _is_image(path: str) -> bool:
    return _suffix(path) in IMG_FORMATS


def _is_video(path: str) -> bool:
    return _suffix(path) in VIDEO_FORMATS


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log while probing a source: our error says what failed; its warnings only confuse."""
    level = cv2.getLogLevel()
    cv2.setLogLevel(0)
    try:
        yield
    finally:
        cv2.setLogLevel(level)


def open_capture(target: str | int, kind: str) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture`` of a video file, camera index or stream URL; ``SourceError`` if it won't open."""
    with _quiet_opencv():
        if kind == "stream" and isinstance(target, str):
            capture = cv2.VideoCapture(target, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_OPEN_TIMEOUT_MS])
        else:
            capture = cv2.VideoCapture(target)
    if capture.isOpened():
        return capture
    capture.release()
    if isinstance(target, int):
        raise SourceError(f"cannot open camera {target}: no camera with that index on this machine, or another "
                          f"program holds it; try another index (--source 0 is the first camera) or pass a video file")
    if kind == "stream":
        raise SourceError(f"cannot open stream {target}: OpenCV got no video from it within "
                          f"{STREAM_OPEN_TIMEOUT_MS // 1000} s; check the URL, the network and that the stream is live "
                          f"(try it in ffplay or VLC)")
    raise SourceError(f"cannot open video {target}: OpenCV cannot decode it (a corrupt or truncated file, or a codec "
                      f"this OpenCV build lacks); re-encode it, e.g. ffmpeg -i {target} -c:v libx264 out.mp4")


def _frame_rate(capture: cv2.VideoCapture) -> float:
    fps = capture.get(cv2.CAP_PROP_FPS)
    return fps if math.isfinite(fps) and 0 < fps < 1000 else DEFAULT_FPS


def read_frames(capture: cv2.VideoCapture, path: str, kind: str, vid_stride: int = 1, position: int = 1,
                count: int = 1) -> Iterator[Frame]:
    """Frames 1, 1 + N, 1 + 2N, ... of an opened capture (N = ``vid_stride``); releases it when done."""
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else 0
    frames = -(-total // vid_stride) if total > 0 else 0
    fps = _frame_rate(capture) / vid_stride  # the saved video then lasts as long as the source
    number = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok or image is None:
                break
            number += 1
            yield Frame(image, path, kind, frame=number, frames=max(frames, number) if frames else 0,
                        position=position, count=count, fps=fps)
            for _ in range(vid_stride - 1):  # skip without decoding
                if not capture.grab():
                    return
    finally:
        capture.release()
    if number == 0 and kind == "video":
        raise SourceError(f"{path}: OpenCV opened the video but decoded no frame from it (empty, truncated or an "
                          f"unsupported codec); re-encode it, e.g. ffmpeg -i {path} -c:v libx264 out.mp4")


class LatestFrames:
    """Reads a camera or stream on a thread and keeps only its newest frame.

    A live source does not wait for the model: read in turn, frames the model is too slow for pile up in the
    capture's buffer and the detections fall further and further behind. Here the model always gets the newest frame
    (as Ultralytics' LoadStreams does); ``Frame.frame`` keeps counting the frames read, so gaps show what was dropped.
    """

    def __init__(self, capture: cv2.VideoCapture, vid_stride: int = 1) -> None:
        self._capture = capture
        self._vid_stride = vid_stride
        self._condition = threading.Condition()
        self._image: np.ndarray | None = None
        self._number = 0  # frames read (after --vid-stride) so far
        self._stop = False
        self.ended = False
        self._thread = threading.Thread(target=self._read, name="detect-source", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        grabbed = 0
        try:
            while not self._stop and self._capture.grab():
                grabbed += 1
                if (grabbed - 1) % self._vid_stride:
                    continue
                ok, image = self._capture.retrieve()
                if not ok or image is None:
                    break
                with self._condition:
                    self._image, self._number = image, self._number + 1
                    self._condition.notify_all()
        finally:
            self._capture.release()  # here, never while this thread may still be inside grab()
            with self._condition:
                self.ended = True
                self._condition.notify_all()

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """(frame number, image) of the newest frame each time one arrives, until the source ends."""
        taken = 0
        while True:
            with self._condition:
                self._condition.wait_for(lambda seen=taken: self._number > seen or self.ended)
                if self._number == taken:
                    return
                taken, image = self._number, self._image
            yield taken, image

    def close(self, timeout: float = 2.0) -> None:
        """Stop reading; the thread releases the capture when its current read returns."""
        self._stop = True
        self._thread.join(timeout)


def read_live_frames(capture: cv2.VideoCapture, path: str, vid_stride: int = 1) -> Iterator[Frame]:
    """The newest frame of a camera or stream each time the caller asks, until it ends (see ``LatestFrames``)."""
    fps = _frame_rate(capture) / vid_stride
    reader = LatestFrames(capture, vid_stride)
    try:
        for number, image in reader:
            yield Frame(image, path, "stream", frame=number, fps=fps)
    finally:
        reader.close()


def _listed_files(entry: str) -> list[str]:
    """Images and videos named by one ``--source`` entry: a file, a folder (recursive), a glob or a .txt list."""
    path = Path(entry).expanduser()
    if path.is_dir():
        files = glob.glob(str(path / "**" / "*.*"), recursive=True)
    elif path.is_file() and path.suffix.lower() == ".txt":
        files = []
        for line in path.read_text(encoding="utf-8").splitlines():
            listed = Path(line.strip())
            if line.strip():
                listed = listed if listed.is_absolute() else path.parent / listed
                if not listed.is_file():
                    raise SourceError(f"{path} lists {line.strip()}, which does not exist; fix or remove that line")
                files.append(str(listed))
    elif path.is_file():
        if not (_is_image(entry) or _is_video(entry)):
            raise SourceError(f"{entry} is neither an image ({', '.join(IMG_FORMATS)}) nor a video "
                              f"({', '.join(VIDEO_FORMATS)}); convert it or pass {SOURCE_KINDS}")
        files = [str(path)]
    elif set("*?[") & set(entry):
        files = glob.glob(str(path), recursive=True)
    else:
        raise SourceError(f"source not found: {entry} (pass {SOURCE_KINDS})")
    return [f for f in files if _is_image(f) or _is_video(f)]


class Source:
    """The frames of ``--source`` in order: images first, then each video's frames (as Ultralytics orders them)."""

    def __init__(self, source: str | Path | list, vid_stride: int = 1) -> None:
        if int(vid_stride) < 1:
            raise SourceError(f"--vid-stride {vid_stride}: must be at least 1 (1 reads every frame)")
        self.vid_stride = int(vid_stride)
        self.files: list[str] = []
        self._capture: cv2.VideoCapture | None = None
        entries = [str(s) for s in source] if isinstance(source, (list, tuple)) else [str(source)]
        if len(entries) == 1 and (is_camera(entries[0]) or (is_url(entries[0]) and not _is_video(entries[0]))):
            self._open_live(entries[0].strip())
            return
        for entry in entries:
            if is_url(entry):  # a URL of a video file: decoded by OpenCV like a local one
                self.files.append(entry)
            elif is_camera(entry) or is_url(entry):
                raise SourceError(f"{entry}: a camera or stream is read alone; pass it as the only --source")
            else:
                self.files += _listed_files(entry)
        unique = sorted({f if is_url(f) else os.path.abspath(f) for f in self.files})
        self.files = [f for f in unique if _is_image(f)] + [f for f in unique if not _is_image(f)]
        if not self.files:
            raise SourceError(f"no images ({', '.join(IMG_FORMATS)}) or videos ({', '.join(VIDEO_FORMATS)}) found "
                              f"in {source}")
        videos = [f for f in self.files if _is_video(f)]
        for video in reversed(videos):  # fail now, not after the images, if a video cannot be opened
            self.close()
            self._capture = open_capture(video, "video")  # the first stays open for reading

    def _open_live(self, entry: str) -> None:
        if is_url(entry) and _is_image(entry):
            raise SourceError(f"{entry} is an image URL; download it and pass the file")
        self.files = [entry]
        self._capture = open_capture(int(entry) if is_camera(entry) else entry, "stream")

    @property
    def live(self) -> bool:
        """A camera or stream: frames come until it ends or the user stops (Ctrl-C, or q in the window)."""
        return len(self.files) == 1 and (is_camera(self.files[0]) or (is_url(self.files[0])
                                                                      and not _is_video(self.files[0])))

    @property
    def has_video(self) -> bool:
        return self.live or any(_is_video(f) for f in self.files)

    def __iter__(self) -> Iterator[Frame]:
        count = len(self.files)
        for position, path in enumerate(self.files, 1):
            if self.live:
                yield from read_live_frames(self._take_capture(path, "stream"), path, self.vid_stride)
            elif _is_video(path):
                yield from read_frames(self._take_capture(path, "video"), path, "video", self.vid_stride, position,
                                       count)
            else:
                image = read_image(path)
                if image is None:
                    raise SourceError(f"cannot read image {path} (corrupt or not an image); remove or replace it")
                yield Frame(image, path, "image", position=position, count=count)

    def _take_capture(self, path: str, kind: str) -> cv2.VideoCapture:
        capture, self._capture = self._capture, None
        return capture if capture is not None else open_capture(int(path) if is_camera(path) else path, kind)

    def close(self) -> None:
        """Release a capture opened to check the source but never read (e.g. the run stopped early)."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def open_source(source: str | Path | list, vid_stride: int = 1) -> Source:
    """Check ``source`` now and return its frames to iterate; raises ``SourceError`` naming it and the fix."""
    return Source(source, vid_stride)


def display_problem() -> str | None:
    """Why ``cv2.imshow`` cannot show a window here (no display, or a headless OpenCV build), or None if it can."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are unset)"
    try:
        with _quiet_opencv():
            cv2.imshow("detect.py display check", np.zeros((8, 8, 3), np.uint8))
            cv2.waitKey(1)
            cv2.destroyWindow("detect.py display check")
    except cv2.error:
        return "this OpenCV build has no GUI (opencv-python-headless); pip install opencv-python to show windows"
    return None
