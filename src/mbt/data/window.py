"""How a config's input windows fit the clips: what `mbt data check` and the start of training tell the user.

A model's windows are fixed by its config: `num_frames` frames `frame_stride` apart at `fps` (the paper's 32 at
stride 2 of 25 fps: 2.56 s) and `spec_frames` spectrogram frames (800: 8.0 s). On clips shorter than a window the
rest is padding (the last frame repeated, silence), which the model cannot tell from content; on the tiny preset a
2 s clip gives 0.64 s of video and an audio window that is half padding. The fit is judged on the median duration
of the clips (headers only, no decoding), with settings that would make both windows fit it.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mbt.media.decode import PAD_TOLERANCE_S, MediaError, probe
from mbt.media.settings import FRAME_LENGTH_MS, FRAME_SHIFT_MS, PreprocessorConfig

# Audio windows padded by more than this fraction (on the median clip) are reported.
PAD_NOTE_FRACTION = 0.1
PROBED_CLIPS = 64  # clips whose headers are read at the start of training


@dataclass
class WindowFit:
    clip_seconds: float  # median duration of the probed clips (their start/end spans where given)
    clips: int  # clips probed
    video_seconds: float  # the video window: num_frames * frame_stride / fps
    audio_seconds: float  # the audio window that spec_frames needs
    frame_stride: int
    fps: float
    num_frames: int
    spec_frames: int
    spec_patch_time: int

    @property
    def audio_padding(self) -> float:
        """Fraction of the audio window past the end of the median clip."""
        return max(0.0, 1.0 - self.clip_seconds / self.audio_seconds)

    @property
    def video_padding(self) -> float:
        return max(0.0, 1.0 - self.clip_seconds / self.video_seconds)

    @property
    def video_coverage(self) -> float:
        """Fraction of the median clip the video window spans."""
        return min(1.0, self.video_seconds / self.clip_seconds)

    def fitting_settings(self) -> dict[str, int]:
        """`data.frame_stride` whose frames span the median clip at the same fps, and the largest `model.spec_frames`
        (a multiple of the patch's time size) whose window the median clip fills."""
        stride = max(1, math.floor(self.clip_seconds * self.fps / self.num_frames))
        usable_ms = (self.clip_seconds + PAD_TOLERANCE_S) * 1000.0 - FRAME_LENGTH_MS
        frames = max(int(usable_ms // FRAME_SHIFT_MS) + 1, self.spec_patch_time)
        return {"data.frame_stride": stride, "model.spec_frames": frames // self.spec_patch_time * self.spec_patch_time}

    @property
    def needs_note(self) -> bool:
        return self.audio_padding > PAD_NOTE_FRACTION or self.video_padding > PAD_NOTE_FRACTION

    def to_json(self) -> dict:
        return {"clip_seconds": round(self.clip_seconds, 3), "clips": self.clips,
                "video_seconds": round(self.video_seconds, 3), "audio_seconds": round(self.audio_seconds, 3),
                "video_coverage": round(self.video_coverage, 3), "audio_padding": round(self.audio_padding, 3),
                "video_padding": round(self.video_padding, 3),
                "fitting_settings": self.fitting_settings() if self.needs_note else None}

    def describe(self) -> str:
        """One paragraph: what the model sees of a typical clip, and the settings that fit it better."""
        text = (f"clips last {self.clip_seconds:.2f} s (median of {self.clips}); the model sees "
                f"{self.video_seconds:.2f} s of video ({self.num_frames} frames {self.frame_stride / self.fps:.2f} s "
                f"apart, {self.video_coverage:.0%} of the clip) and a {self.audio_seconds:.2f} s audio window")
        if self.audio_padding > 0.0:
            text += f", {self.audio_padding:.0%} of it padding"
        if self.video_padding > 0.0:
            text += f"; {self.video_padding:.0%} of the video window is padding"
        if self.needs_note:
            fit = self.fitting_settings()
            text += ("; windows that fit these clips: " + " ".join(f"--set {k}={v}" for k, v in fit.items())
                     + " (or the small-data recipe, `mbt train small-data`)")
        return text


def fit_window(window: PreprocessorConfig, durations: list[float], spec_patch_time: int) -> WindowFit | None:
    """The fit of `window` on clips of the given durations (None when there are none)."""
    if not durations:
        return None
    return WindowFit(clip_seconds=statistics.median(durations), clips=len(durations),
                     video_seconds=window.num_frames * window.frame_stride / window.fps,
                     audio_seconds=window.audio_seconds, frame_stride=window.frame_stride, fps=window.fps,
                     num_frames=window.num_frames, spec_frames=window.spec_frames, spec_patch_time=spec_patch_time)


def clip_seconds(path: str | Path, start: float | None = None, end: float | None = None) -> float | None:
    """Seconds of the span [start, end] of a file, from its headers; None when it cannot be read."""
    try:
        duration = probe(path).duration
    except MediaError:
        return None
    span_end = duration if end is None else min(end, duration)
    return max(span_end - (start or 0.0), 0.0)


def probe_durations(rows: Sequence, max_clips: int = PROBED_CLIPS, seed: int = 0) -> list[float]:
    """Durations of up to `max_clips` manifest rows drawn at random (seeded); unreadable rows are left out."""
    # indices, not rows: a compact manifest of millions of rows builds only the rows drawn
    picked = range(len(rows)) if len(rows) <= max_clips else random.Random(seed).sample(range(len(rows)), max_clips)
    seconds = (clip_seconds(rows[i].path, rows[i].start, rows[i].end) for i in picked)
    return [s for s in seconds if s is not None and s > 0]
