"""`mbt data stats`: mean and std of the audio front end's output on a dataset, for `data.normalisation: custom`.

The statistics are over every frame and mel bin of the sampled clips' un-normalised spectrograms (the same front
end, window and sample rate as training), so `(x - spec_mean) / spec_std` gives the data zero mean and unit
variance. A clip shorter than the window is padded exactly as training pads it (silence after the audio, the
front end run over the padded window, AST's `get_norm_stats` way), so the statistics are of what the model is
fed; the summary says how many clips were padded.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mbt.config import Config, build_config
from mbt.data.manifest import read_manifest
from mbt.data.parallel import map_with_progress
from mbt.media.decode import MediaError, decode_clip
from mbt.media.preprocess import Preprocessor
from mbt.media.settings import PreprocessorConfig

log = logging.getLogger("mbt.data")


@dataclass
class SpecStats:
    spec_mean: float | None  # None when no clip could be decoded (never NaN: the JSON stays strict)
    spec_std: float | None
    clips: int  # clips the statistics are over
    frames: int  # spectrogram frames per clip
    bins: int  # mel bins
    frontend: str
    skipped: int  # rows that could not be decoded
    padded: int  # of `clips`, those shorter than the window, padded with silence as in training

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        if not self.clips:
            return (f"no usable clip ({self.skipped} could not be decoded): no statistics; `mbt data check` "
                    "tells why")
        padded = (f"; {self.padded} shorter than the {self.frames}-frame window, padded with silence as training "
                  "pads them" if self.padded else "")
        return "\n".join([
            f"{self.frontend} spectrogram over {self.clips} clips ({self.frames} frames x {self.bins} bins each; "
            f"{self.skipped} undecodable left out{padded}):",
            f"mean {self.spec_mean:.6g}, std {self.spec_std:.6g}",
            "paste into the config's data section:",
            "  normalisation: custom",
            f"  spec_mean: {self.spec_mean:.6g}",
            f"  spec_std: {self.spec_std:.6g}",
        ])


def _clip_moments(window: PreprocessorConfig, task: tuple[str, float | None, float | None]) -> tuple[str, Any]:
    """("ok" | "padded", (count, sum, sum of squares)) of one clip's spectrogram as training computes it, or
    ("skipped", reason)."""
    path, start, end = task
    try:
        clip = decode_clip(path, num_frames=window.num_frames, fps=window.fps, frame_stride=window.frame_stride,
                           audio_seconds=window.audio_seconds, sample_rate=window.sample_rate, start=start, end=end,
                           video=False, audio=True)
    except MediaError as e:
        return "skipped", f"{e.kind}: {e.reason}"
    spec = Preprocessor(window).spectrogram(clip.audio).double()
    return "padded" if clip.audio_padded else "ok", (spec.numel(), spec.sum().item(), spec.pow(2).sum().item())


def spectrogram_stats(manifest: str | Path, cfg: Config | None = None, *, max_clips: int = 1000, jobs: int = 1,
                      seed: int = 0, progress: bool = True) -> SpecStats:
    """Mean / std of the un-normalised front end over up to `max_clips` rows drawn at random (seeded)."""
    if max_clips < 1:
        raise ValueError(f"--max-clips must be >= 1, got {max_clips}")
    # mean 0 / std 1 turns the preprocessor's normalisation off: the statistics are of the raw front end
    window = (cfg or build_config()).preprocessor(stats=(0.0, 1.0))
    rows = read_manifest(manifest)
    if len(rows) > max_clips:
        rows = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), max_clips))]
    tasks = [(str(row.path), row.start, row.end) for row in rows]
    count = total = squares = 0.0
    outcomes = {"ok": 0, "skipped": 0, "padded": 0}
    for (path, _, _), (status, value) in zip(tasks, map_with_progress(partial(_clip_moments, window), tasks,
                                                                       jobs=jobs, desc="stats", progress=progress)):
        outcomes[status] += 1
        if status == "skipped":
            log.debug("%s left out: %s", path, value)
            continue
        n, s, ss = value
        count, total, squares = count + n, total + s, squares + ss
    mean = total / count if count else None
    std = max(squares / count - mean ** 2, 0.0) ** 0.5 if count else None
    return SpecStats(spec_mean=mean, spec_std=std, clips=outcomes["ok"] + outcomes["padded"],
                     frames=window.spec_frames, bins=window.num_mel_bins, frontend=window.audio_frontend, skipped=outcomes["skipped"],
                     padded=outcomes["padded"])

