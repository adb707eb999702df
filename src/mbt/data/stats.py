"""`mbt data stats`: mean and std of the audio front end's output on a dataset, for `data.normalisation: custom`.

The statistics are over every frame and mel bin of the sampled clips' un-normalised spectrograms (the same front
end, window and sample rate as training), so `(x - spec_mean) / spec_std` gives the data zero mean and unit
variance. Clips shorter than the window are left out: their padding is not audio.
"""

from __future__ import annotations

import dataclasses
import logging
import math
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
    spec_mean: float
    spec_std: float
    clips: int  # clips the statistics are over
    frames: int  # spectrogram frames per clip
    bins: int  # mel bins
    frontend: str
    skipped: int  # rows that could not be decoded
    padded: int  # clips shorter than the window, left out

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: statistics over no clip are null, not NaN."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in dataclasses.asdict(self).items()}

    def summary(self) -> str:
        if not self.clips:
            return (f"no usable clip ({self.skipped} could not be decoded, {self.padded} shorter than the window): "
                    "no statistics; `mbt data check` tells why")
        return "\n".join([
            f"{self.frontend} spectrogram over {self.clips} clips ({self.frames} frames x {self.bins} bins each; "
            f"{self.skipped} undecodable and {self.padded} shorter than the window left out):",
            f"mean {self.spec_mean:.6g}, std {self.spec_std:.6g}",
            "paste into the config's data section:",
            "  normalisation: custom",
            f"  spec_mean: {self.spec_mean:.6g}",
            f"  spec_std: {self.spec_std:.6g}",
        ])


def _clip_moments(window: PreprocessorConfig, task: tuple[str, float | None, float | None]) -> tuple[str, Any]:
    """("ok", (count, sum, sum of squares)) of one clip's spectrogram, or ("skipped" | "padded", reason)."""
    path, start, end = task
    try:
        clip = decode_clip(path, num_frames=window.num_frames, fps=window.fps, frame_stride=window.frame_stride,
                           audio_seconds=window.audio_seconds, sample_rate=window.sample_rate, start=start, end=end,
                           video=False, audio=True)
    except MediaError as e:
        return "skipped", f"{e.kind}: {e.reason}"
    if clip.audio_padded:
        return "padded", "shorter than the window"
    spec = Preprocessor(window).spectrogram(clip.audio).double()
    return "ok", (spec.numel(), spec.sum().item(), spec.pow(2).sum().item())


def spectrogram_stats(manifest: str | Path, cfg: Config | None = None, *, max_clips: int = 1000, jobs: int = 1,
                      seed: int = 0, progress: bool = True) -> SpecStats:
    """Mean / std of the un-normalised front end over up to `max_clips` rows drawn at random (seeded)."""
    if max_clips < 1:
        raise ValueError(f"--max-clips must be >= 1, got {max_clips}")
    # mean 0 / std 1 turns the preprocessor's normalisation off: the statistics are of the raw front end
    window = (cfg or build_config()).preprocessor().replace(spec_mean=0.0, spec_std=1.0)
    rows = read_manifest(manifest)
    if len(rows) > max_clips:
        rows = [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), max_clips))]
    tasks = [(str(row.path), row.start, row.end) for row in rows]
    count = total = squares = 0.0
    outcomes = {"ok": 0, "skipped": 0, "padded": 0}
    for (path, _, _), (status, value) in zip(tasks, map_with_progress(partial(_clip_moments, window), tasks,
                                                                       jobs=jobs, desc="stats", progress=progress)):
        outcomes[status] += 1
        if status == "ok":
            n, s, ss = value
            count, total, squares = count + n, total + s, squares + ss
        else:
            log.debug("%s left out: %s", path, value)
    mean = total / count if count else float("nan")
    std = max(squares / count - mean ** 2, 0.0) ** 0.5 if count else float("nan")
    return SpecStats(spec_mean=mean, spec_std=std, clips=outcomes["ok"], frames=window.spec_frames,
                     bins=window.num_mel_bins, frontend=window.audio_frontend, skipped=outcomes["skipped"],
                     padded=outcomes["padded"])

