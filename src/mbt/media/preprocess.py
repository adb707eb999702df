"""From a media file to model inputs: decode a clip, then the video transforms and the audio front end.

What the model sees is decided by a `PreprocessorConfig` (`mbt.media.settings`), saved as `preprocessor.json`
beside the weights, so a trained model is always fed the way it was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from mbt.media import transforms
from mbt.media.decode import MediaError, decode_clip
from mbt.media.fbank import kaldi_fbank, log_mel
from mbt.media.settings import FRAME_LENGTH_MS, FRAME_SHIFT_MS, MEDIA_MODALITIES, PreprocessorConfig

MODALITIES = MEDIA_MODALITIES


@dataclass
class Sample:
    """Model inputs of one clip: "video" (3, T, H, W) float32, "audio" (spec_frames, n_mels) float32.

    `*_pad_fraction`: the share of each window the file did not cover (repeated frames, silence), see `Clip`.
    """

    inputs: dict[str, torch.Tensor]
    video_padded: bool
    audio_padded: bool
    warnings: list[str]
    video_pad_fraction: float = 0.0
    audio_pad_fraction: float = 0.0
    # deferred=True: "video" is the (T, image_size, image_size, 3) uint8 crop and this the (6,) colour draws, for
    # `transforms.finish_video` on the training device
    colour: torch.Tensor | None = None


# An audio window whose peak stays below this (-80 dBFS) is reported as silent.
SILENCE_PEAK = 1e-4


def _audio_window(setting: str, train: bool, with_video: bool) -> str:
    """decode_clip's audio window for `data.audio_window`: official training places the audio at the video
    window's proportion of the clip, official evaluation each stream's window on its own; both loop."""
    if setting == "contained":
        return "contained"
    return "synced" if train and with_video else "looped"


class Preprocessor:
    """Turns a media file (or decoded frames / waveforms) into the inputs the model was configured for."""

    def __init__(self, cfg: PreprocessorConfig):
        self.cfg = cfg

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Preprocessor:
        """The preprocessing a model was trained with, from the `preprocessor.json` beside its weights."""
        return cls(PreprocessorConfig.load(directory))

    def __call__(self, path: str | Path, *, train: bool = False, generator: torch.Generator | None = None,
                 position: float | None = None, crop: int = 1, start: float | None = None,
                 end: float | None = None, modalities: tuple[str, ...] | None = None,
                 deferred: bool = False) -> Sample:
        """Decode and transform one clip of `path`.

        train=True: random window position (from `generator`) unless given, scale-jittered random crop, flip,
        colour augmentation / drop, SpecAugment. train=False: position 0.5 unless given, short-side resize and
        crop `crop` (0 / 1 / 2 = left / centre / right), no augmentation. A requested modality the file lacks
        raises MediaError (no_video / no_audio): the dataset decides whether that is a skip or an error. So does
        a clip whose inputs would not be finite (`non_finite`): a NaN must never reach a model.

        deferred=True (training): the video stops at the uint8 crop (flipped) and `Sample.colour` holds the colour
        jitter's draws; `transforms.finish_video` of the collated batch gives, per clip, the same inputs as
        deferred=False, on whatever device the batch is (float conversion and colour are most of a clip's CPU time).
        """
        cfg = self.cfg
        modalities = tuple(modalities) if modalities is not None else cfg.modalities
        for m in modalities:
            if m not in MODALITIES:
                raise ValueError(f"modality {m!r} cannot be decoded from media; use {MODALITIES}")
        if position is None:
            position = torch.rand((), generator=generator).item() if train else 0.5
        # Let the decoder's scaler shrink big frames to what the transforms need at most (the largest jitter).
        max_short_side = math.ceil(cfg.short_side * cfg.scale_jitter[1]) if train else cfg.short_side
        clip = decode_clip(
            path, num_frames=cfg.num_frames, fps=cfg.fps, frame_stride=cfg.frame_stride,
            audio_seconds=cfg.audio_seconds, sample_rate=cfg.sample_rate, position=position, start=start, end=end,
            video="video" in modalities, audio="audio" in modalities, max_short_side=max_short_side,
            audio_window=_audio_window(cfg.audio_window, train, "video" in modalities),
        )
        inputs: dict[str, torch.Tensor] = {}
        warnings: list[str] = []
        colour = None
        if clip.video is not None:
            seconds = cfg.num_frames * cfg.frame_stride / cfg.fps
            if clip.video_padded:
                warnings.append(f"{clip.video_pad_fraction:.0%} of the {seconds:.2f} s video window at "
                                f"{clip.video_start:.2f} s has no frame of its own: the nearest frame is repeated")
            if train and deferred:
                inputs["video"], colour = self.video_crop(clip.video, generator)
            else:
                inputs["video"] = self.video_tensor(clip.video, train=train, generator=generator, crop=crop)
        if clip.audio is not None:
            if clip.audio_padded:
                warnings.append(f"{clip.audio_pad_fraction:.0%} of the {cfg.audio_seconds:.2f} s audio window at "
                                f"{clip.audio_start:.2f} s is not in the file: padded with silence")
            if clip.audio.abs().max().item() < SILENCE_PEAK:
                warnings.append("silent audio: the window's peak is below -80 dBFS")
            spec = self.spectrogram(clip.audio)
            if train and cfg.time_shift:
                spec = transforms.roll_time(spec, generator, cfg.time_shift)
            if train:
                spec = transforms.spec_augment(spec, generator, cfg.freq_mask_count, cfg.freq_mask_width,
                                               cfg.time_mask_count, cfg.time_mask_width)
            inputs["audio"] = spec
        # The decoder already refuses non-finite samples; this guards the front end too (video comes from uint8).
        if "audio" in inputs and not torch.isfinite(inputs["audio"]).all():
            raise MediaError("non_finite", path, "the audio spectrogram holds NaN or infinite values")
        return Sample(inputs=inputs, video_padded=clip.video_padded, audio_padded=clip.audio_padded,
                      warnings=warnings, video_pad_fraction=clip.video_pad_fraction,
                      audio_pad_fraction=clip.audio_pad_fraction, colour=colour)

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """Front end + pad/crop to spec_frames + normalisation: (spec_frames, num_mel_bins) float32.

        Kaldi front end: the waveform's mean is removed first, as AST / CAV-MAE do. A spectrogram shorter than
        spec_frames is padded with 0 before normalisation (AST / CAV-MAE's fbank padding), i.e. -mean/std after.
        """
        cfg = self.cfg
        spec = self.front_end(wave)[:cfg.spec_frames]
        if spec.shape[0] < cfg.spec_frames:
            spec = torch.nn.functional.pad(spec, (0, 0, 0, cfg.spec_frames - spec.shape[0]))
        return ((spec - cfg.spec_mean) / cfg.spec_std).float()

    def front_end(self, wave: torch.Tensor) -> torch.Tensor:
        """The audio front end alone, un-normalised and of any length: (frames, num_mel_bins), 100 frames/s."""
        cfg = self.cfg
        if cfg.audio_frontend == "kaldi":
            return kaldi_fbank(wave - wave.mean(), sample_rate=cfg.sample_rate, num_mel_bins=cfg.num_mel_bins,
                               frame_length_ms=FRAME_LENGTH_MS, frame_shift_ms=FRAME_SHIFT_MS)
        return log_mel(wave, sample_rate=cfg.sample_rate, num_mel_bins=cfg.num_mel_bins,
                       frame_length_ms=FRAME_LENGTH_MS, frame_shift_ms=FRAME_SHIFT_MS)

    def video_crop(self, frames_uint8: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
        """Training geometry on uint8 frames, and the colour draws: ((T, S, S, 3) uint8 crop, (6,) parameters). The
        same generator draws as `video_tensor(train=True)`, in the same order."""
        cfg = self.cfg
        frames = transforms.random_resized_crop(frames_uint8, cfg.image_size, cfg.scale_jitter, generator,
                                                short_side=cfg.short_side)
        if cfg.flip:
            frames = transforms.random_flip(frames, generator)
        # contiguous: the crop is a view of the whole resized clip, which would otherwise travel with it
        return frames.contiguous(), transforms.draw_colour(generator, cfg.color_aug_prob, cfg.color_drop_prob)

    def video_tensor(self, frames_uint8: torch.Tensor, *, train: bool, generator: torch.Generator | None = None,
                     crop: int = 1) -> torch.Tensor:
        """(T, H, W, 3) uint8 frames -> (3, T, image_size, image_size) float32 in value_range."""
        cfg = self.cfg
        # Geometry on the uint8 frames (fast uint8 resampling, as DMVR resizes uint8), colour on floats.
        if train:
            frames = transforms.random_resized_crop(frames_uint8, cfg.image_size, cfg.scale_jitter, generator,
                                                    short_side=cfg.short_side)
            if cfg.flip:
                frames = transforms.random_flip(frames, generator)
            video = transforms.to_float(frames)
            video = transforms.color_augment(video, generator, prob=cfg.color_aug_prob)
            video = transforms.color_drop(video, generator, prob=cfg.color_drop_prob)
        else:
            frames = transforms.resize_short_side(frames_uint8, cfg.short_side)
            video = transforms.to_float(transforms.crop(frames, cfg.image_size, crop))
        return transforms.to_model_range(video, cfg.value_range)
