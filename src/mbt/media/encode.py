"""Writes frames and a waveform as an H.264 + AAC mp4 with PyAV (the demo set, tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

# Small, fast and deterministic: one encoder thread, no macroblock-tree lookahead.
_VIDEO_OPTIONS = {"crf": "28", "preset": "veryfast", "threads": "1", "mbtree": "0"}
_AUDIO_OPTIONS = {"aac_coder": "fast"}
_AUDIO_BITRATE = 24000


def write_mp4(path: str | Path, frames: np.ndarray, audio: np.ndarray, fps: int, sample_rate: int) -> None:
    """frames: (T, H, W, 3) in [0, 255] (H = W, even); audio: mono float samples in [-1, 1] at `sample_rate`."""
    frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    audio = np.clip(audio, -1, 1).astype(np.float32)[None]
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps, options=dict(_VIDEO_OPTIONS))
        video.width = video.height = frames.shape[1]
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate, layout="mono", options=dict(_AUDIO_OPTIONS))
        sound.bit_rate = _AUDIO_BITRATE
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            container.mux(video.encode(picture))
        container.mux(video.encode())
        samples = av.AudioFrame.from_ndarray(audio, format="fltp", layout="mono")
        samples.sample_rate = sample_rate
        samples.pts = 0
        container.mux(sound.encode(samples))
        container.mux(sound.encode())
