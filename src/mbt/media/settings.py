"""What decides the model's inputs, as typed settings: clip sampling, augmentation, and the whole preprocessing.

The fields of `ClipSampling` and `Augmentation` are declared once, here: the run config's `data` section and
`PreprocessorConfig` both inherit them, so a key has one type, one default and one line of help. A trained model
carries its `PreprocessorConfig` as `preprocessor.json` (written and read only by `save` / `load` below), so it is
always fed the way it was trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from mbt.errors import ConfigError
from mbt.fileio import write_json
from mbt.schema import Schema, invalid, validate

PREPROCESSOR_FILE = "preprocessor.json"
MEDIA_MODALITIES = ("video", "audio")  # the streams a media file holds
FRAME_LENGTH_MS, FRAME_SHIFT_MS = 25.0, 10.0  # both audio front ends: 100 spectrogram frames a second

# Spectrogram normalisation statistics, (mean, std): x -> (x - mean) / std.
NORMALISATION_STATS: dict[str, tuple[float, float]] = {
    "scenic": (1.102, 2.762),  # official MBT, AudioSet unbalanced train, its own log-mel
    "ast": (-4.2677393, 2 * 4.5689974),  # AST divides by twice the std (ast issue #5)
    "cav-mae": (-5.081, 4.4849),
    "none": (0.0, 1.0),
}

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class ClipSampling(Schema):
    fps: Annotated[float, Field(gt=0)] = 25.0
    """Video frames are sampled on this frame rate's grid (paper: 25)."""
    frame_stride: PositiveInt = 2
    """Sampled frames are this many frames of `fps` apart (paper: 32 frames at stride 2 = 2.56 s)."""
    sample_rate: Annotated[int, Field(ge=4000, le=192000)] = 16000
    """Audio is resampled to this rate (Hz) before the front end."""
    audio_frontend: Literal["kaldi", "logmel"] = "kaldi"
    """'kaldi': the AST / CAV-MAE Kaldi fbank; 'logmel': a plain power log-mel."""
    audio_window: Literal["proportional", "contained"] = "contained"
    """'proportional' (official DMVR): in training the audio window starts at the video window's proportion of the
    clip, evaluation windows sit evenly in each stream; past the clip's end the audio loops. 'contained': both
    windows at the same relative position of what is left after them, so the audio window holds the video's
    moment and stays inside the clip (silence only for a clip shorter than the window)."""


class Augmentation(Schema):
    scale_jitter: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.9, 1.33)
    """[low, high] scale of the random resized crop (training only)."""
    flip: bool = True
    """Random horizontal flip (training only)."""
    color_aug_prob: Probability = 0.8
    """Probability of the colour (brightness/contrast/saturation/hue) jitter of a training clip."""
    color_drop_prob: Probability = 0.1
    """Probability of turning a training clip grey."""
    freq_mask_count: NonNegativeInt = 1
    """SpecAugment frequency masks per training clip."""
    freq_mask_width: NonNegativeInt = 48
    """Largest width (mel bins) of a frequency mask."""
    time_mask_count: NonNegativeInt = 0
    """SpecAugment time masks per training clip (the official config's time masks are disabled: 0)."""
    time_mask_width: NonNegativeInt = 48
    """Largest width (frames) of a time mask."""
    time_shift: NonNegativeInt = 0
    """Largest circular shift (spectrogram frames, either way) of a training clip's spectrogram along time; AST's
    roll augmentation uses 10. Teaches the audio stream that a sound may come at any moment (0: off)."""

    @model_validator(mode="after")
    def _check_jitter(self) -> Augmentation:
        if self.scale_jitter[0] > self.scale_jitter[1]:
            raise invalid("scale_jitter", f"must be [low, high] with low <= high, got {list(self.scale_jitter)}")
        return self


class PreprocessorConfig(ClipSampling, Augmentation):
    """Everything that decides what a model sees, saved beside its weights as `preprocessor.json`."""

    modalities: tuple[Literal["video", "audio"], ...] = MEDIA_MODALITIES
    num_frames: PositiveInt = 32
    image_size: PositiveInt = 224
    short_side: PositiveInt = 256
    """Short side the frames are resized to before the (jittered) crop."""
    value_range: tuple[float, float] = (-1.0, 1.0)
    num_mel_bins: PositiveInt = 128
    spec_frames: PositiveInt = 800
    spec_mean: float
    spec_std: Annotated[float, Field(gt=0)]
    class_names: list[str] | None = None

    @model_validator(mode="after")
    def _check_sizes(self) -> PreprocessorConfig:
        if self.short_side < self.image_size:
            raise invalid("short_side", f"{self.short_side} is smaller than image_size {self.image_size}")
        return self

    @property
    def audio_seconds(self) -> float:
        """Audio window: exactly the samples `spec_frames` frames need (8.015 s for 800), so a full-length clip
        gives spec_frames frames with no padding (Kaldi's snip_edges drops a partial last frame)."""
        return ((self.spec_frames - 1) * FRAME_SHIFT_MS + FRAME_LENGTH_MS) / 1000.0

    @property
    def video_seconds(self) -> float:
        """Video window: `num_frames` frames `frame_stride` apart on the `fps` grid."""
        return self.num_frames * self.frame_stride / self.fps

    def replace(self, **changes: object) -> PreprocessorConfig:
        """A validated copy with some fields changed."""
        return validate(type(self), {**self.model_dump(), **changes}, "preprocessor")

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessorConfig:
        return validate(cls, values, "preprocessor")

    def save(self, directory: str | Path) -> Path:
        """Write `preprocessor.json` into `directory` (created if needed); returns the file's path."""
        return write_json(Path(directory) / PREPROCESSOR_FILE, self.to_dict(), what="preprocessor config")

    @classmethod
    def load(cls, directory: str | Path) -> PreprocessorConfig:
        """Read `preprocessor.json` from a directory (or the file itself)."""
        path = Path(directory)
        if path.is_dir():
            path = path / PREPROCESSOR_FILE
        try:
            values = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no preprocessor config (expected beside the model weights)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
        try:
            return cls.from_dict(values)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
