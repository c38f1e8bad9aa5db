"""Video encoding and decoding with PyAV, for multi-episode MP4 files.

LeRobot v3.0 concatenates many episodes into one MP4 per camera and addresses an episode by
its ``[from_timestamp, to_timestamp)`` range. The encoder numbers frames with a 1/fps time base
so that frame ``i`` of a file sits at ``i / fps`` seconds. The decoder is a forward cursor: it
keeps the file open and continues where the previous episode ended, seeking only when asked to
go backwards or far ahead. That makes the usual in-order pass over a dataset decode each frame
once, at the cost of holding one open container per camera.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .errors import DatasetFormatError

# PyAV encoder name and the codec name LeRobot records in info.json for each --vcodec choice.
CODECS = {"h264": ("libx264", "h264"), "av1": ("libsvtav1", "av1")}
# Keyframe every GOP frames: short episodes start near a keyframe, so seeking stays cheap.
GOP = 10


class _Scheduling:
    """The calling thread's scheduling policy, kept across calls into an encoder.

    SVT-AV1 (libsvtav1, 4.1 here), when the process may do so (root), switches the thread that
    opens an encoder to real-time SCHED_FIFO priority 99 and leaves it there. Every process that
    thread forks afterwards inherits it: on a small machine two such busy processes (e.g. ranks
    polling a collective) take every core and starve the threads they wait for. The policy
    found before the encoder is put back after each call into it.
    """

    def __init__(self) -> None:
        self.policy, self.param = os.sched_getscheduler(0), os.sched_getparam(0)

    def restore(self) -> None:
        if os.sched_getscheduler(0) != self.policy or os.sched_getparam(0) != self.param:
            os.sched_setscheduler(0, self.policy, self.param)


class VideoEncoder:
    """Append RGB frames to one MP4 file; frame i gets timestamp i / fps."""

    def __init__(self, path: Path, fps: int, width: int, height: int, vcodec: str = "h264"):
        if vcodec not in CODECS:
            raise ValueError(f"unknown video codec {vcodec!r} (choose from {', '.join(CODECS)})")
        self._scheduling = _Scheduling()
        # SVT-AV1 prints a banner on every stream unless told otherwise.
        os.environ.setdefault("SVT_LOG", "1")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.frames = 0
        self._container = av.open(str(path), mode="w")
        encoder = CODECS[vcodec][0]
        self._stream = self._container.add_stream(encoder, rate=fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = Fraction(1, fps)
        if encoder == "libx264":
            # Deterministic single-thread x264 keeps files byte-identical between runs.
            self._stream.options = {"crf": "18", "g": str(GOP), "threads": "1"}
        else:
            self._stream.options = {"crf": "30", "g": str(GOP), "preset": "10"}

    def add(self, frames: np.ndarray) -> None:
        """frames: uint8 [T, H, W, 3]."""
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            self._container.mux(self._stream.encode(frame))
        self._scheduling.restore()

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        self._scheduling.restore()


class VideoCursor:
    """Decode ``[from_ts, to_ts)`` ranges of one MP4 file, forward-first."""

    def __init__(self, path: Path):
        if not Path(path).is_file():
            raise DatasetFormatError(f"video file {path} not found")
        self.path = Path(path)
        self._container = av.open(str(path))
        self._stream = self._container.streams.video[0]
        self._frames = None  # decode generator
        self._pending = None  # (time, frame) read past the previous range
        self._pos: float | None = None  # timestamp the next read would continue from
        # One reformatter for the whole file: frame.to_ndarray(format=...) builds a new
        # conversion context per frame, which is several times slower on small frames.
        self._rgb = VideoReformatter()

    def _restart(self, seconds: float) -> None:
        offset = int(seconds / self._stream.time_base) if seconds > 0 else 0
        self._container.seek(offset, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._pending = None
        self._pos = seconds

    def _next(self):
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        t = frame.time if frame.time is not None else float(frame.pts * self._stream.time_base)
        return t, frame

    def read(self, from_ts: float, to_ts: float, fps: float) -> np.ndarray:
        """RGB frames [T, H, W, 3] whose timestamps fall in [from_ts, to_ts)."""
        half = 0.5 / fps
        # Continue forward when the range starts where the last one ended (the in-order pass
        # over a file); otherwise seek to the keyframe before it.
        if self._pos is None or from_ts < self._pos - half or from_ts > self._pos + 2.0:
            self._restart(from_ts)
        out = []
        while True:
            item = self._next()
            if item is None:
                break
            t, frame = item
            if t < from_ts - half:
                continue
            if t >= to_ts - half:
                self._pending = item
                break
            out.append(self._rgb.reformat(frame, format="rgb24").to_ndarray())
        self._pos = to_ts
        if not out:
            return np.zeros((0, self._stream.height, self._stream.width, 3), dtype=np.uint8)
        return np.stack(out)

    def close(self) -> None:
        self._container.close()


def count_frames(path: Path) -> int:
    """Number of decodable frames in a file (decodes it; meant for checks and tests)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
