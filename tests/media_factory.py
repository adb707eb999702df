"""Small media files written with PyAV for tests: any container / codec / frame rate / sample rate / layout.

Frames carry their source index as a 12-bit code of big black/white squares (robust to lossy compression), so a
test can tell exactly which source frame a decoder returned. Audio is whatever `audio_fn` draws (a quiet tone by
default). Nothing here is mbt code: tests use it to make inputs, and the decoders under test never see it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MARKER_COLS, MARKER_ROWS = 4, 3  # 12 bits: frame indices up to 4095
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
_CONTAINERS = {".mp4": "mp4", ".webm": "webm", ".mkv": "matroska", ".mov": "mov", ".avi": "avi", ".wav": "wav",
               ".m4a": "mp4"}


def marker_frame(index: int, size: tuple[int, int]) -> np.ndarray:
    """An RGB frame (H, W, 3) uint8 whose big squares spell `index` in binary (bit 0 top-left, row-major)."""
    width, height = size
    if not 0 <= index < 2 ** (MARKER_COLS * MARKER_ROWS):
        raise ValueError(f"frame index {index} does not fit in {MARKER_COLS * MARKER_ROWS} marker bits")
    frame = np.zeros((height, width, 3), np.uint8)
    bh, bw = height // MARKER_ROWS, width // MARKER_COLS
    for bit in range(MARKER_COLS * MARKER_ROWS):
        if index >> bit & 1:
            r, c = divmod(bit, MARKER_COLS)
            frame[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 255
    return frame


def read_marker(frame: np.ndarray) -> int:
    """The index spelt by `marker_frame` in a decoded (H, W, 3) frame, read from the centre of each square."""
    frame = np.asarray(frame)
    height, width = frame.shape[:2]
    bh, bw = height // MARKER_ROWS, width // MARKER_COLS
    index = 0
    for bit in range(MARKER_COLS * MARKER_ROWS):
        r, c = divmod(bit, MARKER_COLS)
        centre = frame[r * bh + bh // 4:(r + 1) * bh - bh // 4, c * bw + bw // 4:(c + 1) * bw - bw // 4]
        if centre.mean() > 127:
            index |= 1 << bit
    return index


def tone(freq: float = 440.0, amplitude: float = 0.3) -> Callable[[np.ndarray], np.ndarray]:
    """audio_fn drawing a sine of `freq` Hz on every channel."""
    return lambda t: amplitude * np.sin(2 * np.pi * freq * t)


def vfr_times(fps: float, seconds: float) -> list[float]:
    """Irregular frame times averaging `fps`: intervals cycle through 0.5, 1.5 and 1 frame periods."""
    pattern = (0.5, 1.5, 1.0)
    times, t, i = [], 0.0, 0
    while t < seconds - 1e-9:
        times.append(t)
        t += pattern[i % 3] / fps
        i += 1
    return times


@dataclass
class WrittenMedia:
    """What was written: the exact source frame times (seconds) and audio parameters, for expectations."""

    path: Path
    frame_times: list[float]
    fps: Fraction | None
    sample_rate: int | None
    channels: int | None
    num_samples: int
    seconds: float


def write_av(
    path: str | Path,
    *,
    container: str | None = None,
    vcodec: str = "libx264",
    acodec: str = "aac",
    fps: float | Fraction = 25,
    seconds: float = 2.0,
    size: tuple[int, int] = (128, 96),
    sample_rate: int = 16000,
    channels: int = 1,
    frame_fn: Callable[[int, float], np.ndarray] | None = None,
    audio_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    video: bool = True,
    audio: bool = True,
    vfr: bool = False,
    frame_times: Sequence[float] | None = None,
    audio_seconds: float | None = None,
    gop: int | None = None,
    crf: int | None = None,
    codec_options: dict[str, str] | None = None,
) -> WrittenMedia:
    """Write a small audio/video file and return what was written.

    frame_fn(index, time) -> (H, W, 3) uint8 RGB (default: `marker_frame(index)`); audio_fn(times) -> (n,) or
    (channels, n) floats in [-1, 1] for sample times in seconds (default: a 440 Hz tone). `vfr=True` writes irregular
    frame times (`vfr_times`); `frame_times` gives them explicitly. `audio_seconds` lets the audio track be shorter
    or longer than the video. `gop` sets the keyframe interval; `codec_options` adds video encoder options (e.g.
    {"preset": "veryfast"}). The container is taken from the suffix unless given.
    """
    path = Path(path)
    fmt = container or _CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot infer the container from the suffix; pass container=")
    fps = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    width, height = size
    frame_fn = frame_fn or (lambda i, t: marker_frame(i, size))
    audio_fn = audio_fn or tone()
    if frame_times is None:
        frame_times = vfr_times(float(fps), seconds) if vfr else [i / fps for i in range(round(seconds * fps))]
    frame_times = [float(t) for t in frame_times]
    variable = len(frame_times) > 1 and not np.allclose(np.diff(frame_times), 1 / float(fps))

    out = av.open(str(path), "w", format=fmt)
    vstream = astream = None
    if video:
        vstream = out.add_stream(vcodec, rate=fps)
        vstream.width, vstream.height = width, height
        vstream.pix_fmt = "yuv420p"
        if variable:
            # a fine time base so irregular timestamps survive; the container keeps them as written
            vstream.codec_context.time_base = Fraction(1, 1000)
            vstream.time_base = Fraction(1, 1000)
        if gop is not None:
            vstream.codec_context.gop_size = gop
        options = {}
        if crf is not None:
            options["crf"] = str(crf)
        if vcodec == "libx264" and gop is not None:
            # scenecut would add keyframes of its own, making the GOP shorter than asked
            options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        if vcodec in ("libvpx-vp9", "libvpx"):
            options.update({"deadline": "realtime", "cpu-used": "8"})
        vstream.options = {**options, **(codec_options or {})}
    num_samples = 0
    if audio:
        layout = _LAYOUTS.get(channels)
        if layout is None:
            raise ValueError(f"no layout for {channels} channels; use one of {sorted(_LAYOUTS)}")
        astream = out.add_stream(acodec, rate=sample_rate, layout=layout)
        num_samples = round((seconds if audio_seconds is None else audio_seconds) * sample_rate)

    # Write in time order so muxers interleave naturally.
    events: list[tuple[float, str, int]] = [(t, "v", i) for i, t in enumerate(frame_times)] if video else []
    chunk = 1024
    if audio:
        events += [(s / sample_rate, "a", s) for s in range(0, num_samples, chunk)]
    events.sort(key=lambda e: (e[0], e[1]))
    tb = Fraction(1, 1000) if variable else 1 / fps
    for t, kind, i in events:
        if kind == "v":
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_fn(i, t)), format="rgb24")
            frame.pts = round(Fraction(t).limit_denominator(1_000_000) / tb) if variable else i
            frame.time_base = tb
            for packet in vstream.encode(frame):
                out.mux(packet)
        else:
            n = min(chunk, num_samples - i)
            times = (i + np.arange(n)) / sample_rate
            samples = np.asarray(audio_fn(times), dtype=np.float32)
            if samples.ndim == 1:
                samples = np.repeat(samples[None], channels, axis=0)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=_LAYOUTS[channels])
            frame.sample_rate = sample_rate
            frame.pts = i
            frame.time_base = Fraction(1, sample_rate)
            for packet in astream.encode(frame):
                out.mux(packet)
    for stream in (vstream, astream):
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    out.close()
    return WrittenMedia(path=path, frame_times=frame_times if video else [], fps=fps if video else None,
                        sample_rate=sample_rate if audio else None, channels=channels if audio else None,
                        num_samples=num_samples, seconds=seconds)
