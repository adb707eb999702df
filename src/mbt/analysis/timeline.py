"""A PNG of a timeline: the top classes' scores over time, drawn over the recording's spectrogram, so one sees
*when* a sound or an action happens and what the audio looked like then."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mbt.engine.predict import Timeline
from mbt.media.decode import MediaError, decode_clip
from mbt.media.preprocess import Preprocessor

_CHUNK_S = 60.0  # the audio is decoded a minute at a time, so an hour-long file needs no hour of samples in memory
_MAX_COLUMNS = 1600  # spectrogram columns drawn (frames are averaged down to this)
_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def background_spectrogram(preprocessor: Preprocessor, path: str | Path, duration: float) -> np.ndarray | None:
    """(mel bins, columns) un-normalised front-end output of the whole recording, frames averaged into at most
    `_MAX_COLUMNS` columns; None when the file has no audio."""
    cfg = preprocessor.cfg
    frames_per_column = max(1, math.ceil(duration * 100 / _MAX_COLUMNS))  # the front ends give 100 frames/s
    columns = []
    start = 0.0
    while start < duration:
        seconds = min(_CHUNK_S, duration - start)
        try:
            clip = decode_clip(path, num_frames=1, fps=cfg.fps, frame_stride=1, audio_seconds=seconds,
                               sample_rate=cfg.sample_rate, position=0.0, start=start, video=False, audio=True)
        except MediaError:
            return None
        spec = preprocessor.front_end(clip.audio)
        usable = spec.shape[0] // frames_per_column * frames_per_column
        if usable:
            columns.append(spec[:usable].reshape(-1, frames_per_column, spec.shape[1]).mean(dim=1))
        start += seconds
    return torch.cat(columns).T.numpy() if columns else None


def plot_timeline(timeline: Timeline, out: str | Path, *, preprocessor: Preprocessor | None = None,
                  top: int = 5, title: str | None = None,
                  segments: list[tuple[float, float, str]] | None = None) -> Path:
    """Draw the `top` classes (by peak score) of `timeline` over time; with `preprocessor`, over the spectrogram
    of the recording's audio. `segments` (start s, end s, label), e.g. a ground truth, are drawn as labelled bars
    above the plot, in the colour of that label's line. Returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = None
    if preprocessor is not None and "audio" in timeline.modalities:
        spec = background_spectrogram(preprocessor, timeline.path, timeline.duration)
    fig, ax = plt.subplots(figsize=(12, 5.2 if segments else 4.8))
    if spec is not None:
        low, high = np.percentile(spec, [2, 99.5])
        ax.imshow(spec, origin="lower", aspect="auto", cmap="Greys", vmin=low, vmax=high, alpha=0.5,
                  extent=(0, timeline.duration, 0, 1), interpolation="nearest")
        bins = ax.twinx()  # the background's own scale, on the right
        bins.set_ylim(0, spec.shape[0])
        bins.set_ylabel("spectrogram: mel bin (grey)", color="#666666")
        bins.tick_params(axis="y", colors="#666666")
    centres = (timeline.starts + timeline.ends) / 2
    classes = timeline.top_classes(top)
    colours = {c: _COLOURS[rank % len(_COLOURS)] for rank, c in enumerate(classes)}
    for c in classes:
        ax.plot(centres, timeline.scores[:, c], color=colours[c], linewidth=2.4, marker="o", markersize=3.5,
                label=f"{timeline.class_names[c]} (peak {timeline.scores[:, c].max():.2f})", zorder=3)
    for start, end, label in segments or []:
        index = timeline.class_names.index(label) if label in timeline.class_names else None
        colour = colours.get(index, "#555555")
        gap = 0.004 * timeline.duration
        ax.add_patch(Rectangle((start + gap, 1.02), end - start - 2 * gap, 0.065, color=colour, clip_on=False,
                               transform=ax.get_xaxis_transform()))
        ax.text((start + end) / 2, 1.0525, label, ha="center", va="center", fontsize=8, color="white",
                fontweight="bold", clip_on=False, transform=ax.get_xaxis_transform())
    for skip in timeline.skipped:
        ax.axvspan(skip["start"], skip["end"], color="#d62728", alpha=0.08, zorder=1)
    ax.set_xlim(0, timeline.duration)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("score (window centre)")
    ax.grid(axis="y", alpha=0.35)
    if classes:
        ax.legend(loc="upper left", bbox_to_anchor=(1.07 if spec is not None else 1.01, 1.0), frameon=False,
                  fontsize=9, title=f"top {len(classes)} classes (by peak score)")
    streams = "+".join(timeline.modalities) + (f"; no {', '.join(timeline.missing)} track" if timeline.missing
                                               else "")
    ax.set_title(title or f"{Path(timeline.path).name}: {len(timeline.starts)} windows of {timeline.window:g} s "
                          f"every {timeline.hop:g} s ({streams})", fontsize=11, pad=34 if segments else 6)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
