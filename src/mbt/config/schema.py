"""The run config: `model` (an `MBTConfig` plus the preset it starts from), `data` and `train` sections.

This schema is the one source of every run key's type, default, constraint and help (`mbt config keys`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from mbt.errors import ConfigError
from mbt.media.settings import NORMALISATION_STATS, Augmentation, ClipSampling, PreprocessorConfig
from mbt.model.config import PRESETS, MBTConfig
from mbt.schema import Schema, invalid

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegative = Annotated[float, Field(ge=0.0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
DEFAULT_PRESET = "mbt-tiny"


class DataConfig(ClipSampling, Augmentation):
    """Where the clips are and how they become inputs (the sampling and augmentation keys come from media)."""

    train: str | None = None
    """Training manifest (CSV: path,labels[,start,end]), relative to the YAML file's folder; or shards of `mbt data
    shard`: their folder, a shard-list file, a brace pattern (train-{000000..000511}.tar), a URL or pipe: command."""
    val: str | None = None
    """Validation manifest (or shards), evaluated every train.eval_every_epochs with one centre clip."""
    test: str | None = None
    """Test manifest (or shards)."""
    shuffle_buffer: Annotated[int, Field(ge=0)] = 512
    """Shards: samples each loader worker shuffles at a time within a shard (memory: this x the mean sample size);
    0 or 1 = the shards' own order (the shard order is still drawn per epoch)."""
    classes: str | None = None
    """Classes file: one class name a line; its line number is its index."""
    short_side: PositiveInt | None = None
    """Resize the short side to this before cropping; null = image_size * 8 / 7 (256 for 224)."""
    normalisation: Literal["scenic", "ast", "cav-mae", "none", "custom", "dataset"] = "ast"
    """Spectrogram statistics (x - mean) / std: a known set, 'custom' with spec_mean / spec_std, or 'dataset': the
    training set's own, measured when a run starts (as `mbt data stats`) and written into its train_config.yaml."""
    spec_mean: float | None = None
    """Spectrogram mean for normalisation 'custom' (see `mbt data stats`)."""
    spec_std: Annotated[float, Field(gt=0)] | None = None
    """Spectrogram std for normalisation 'custom' (see `mbt data stats`)."""
    eval_clips: PositiveInt = 4
    """Evaluation: clips per video, evenly spaced (official test: 4)."""
    eval_crops: Literal[1, 3] = 1
    """Evaluation: 1 centre crop, or 3 (left / centre / right)."""
    on_missing_modality: Literal["skip", "mask", "error"] = "skip"
    """A clip lacking a modality the model needs: 'skip' (logged and counted), 'mask' (used with the streams it
    has: the model's modality mask keeps the missing one out) or 'error'. Training, validation and tests."""
    max_pad_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Training skips (and counts) a window more than this fraction padding, either modality; see the README."""
    fit_windows: bool = False
    """Fit the input windows to the training clips when a run starts: data.frame_stride so the frames span the
    median clip, model.spec_frames so the audio window is the clip, not padding (written into train_config.yaml)."""
    cache: bool = False
    """Decode every clip once and keep it in memory, without per-epoch augmentation (small sets, the demo)."""

    @model_validator(mode="after")
    def _check_custom_stats(self) -> DataConfig:
        if self.normalisation == "custom" and (self.spec_mean is None or self.spec_std is None):
            raise invalid("spec_std", "normalisation 'custom' needs spec_mean and spec_std (see `mbt data stats`)")
        return self

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()  # inherited (sampling, augmentation) keys come first in pydantic's order
        own = [key for key in type(self).__annotations__ if key in values]
        return {**{key: values[key] for key in own}, **values}

    @property
    def spec_stats(self) -> tuple[float, float]:
        if self.normalisation == "dataset" and (self.spec_mean is None or self.spec_std is None):
            raise ConfigError("data.normalisation 'dataset': the statistics are measured when training starts; "
                              "give data.spec_mean and data.spec_std to use them elsewhere")
        if self.normalisation in ("custom", "dataset"):
            return (float(self.spec_mean), float(self.spec_std))
        return NORMALISATION_STATS[self.normalisation]


class TrainConfig(Schema):
    epochs: PositiveInt = 30
    """Passes over the training manifest."""
    batch_size: PositiveInt = 32
    """Global batch (split over the processes under torchrun)."""
    lr: Annotated[float, Field(gt=0)] = 1e-3
    """Peak learning rate (after warm-up, then cosine decay)."""
    optimizer: Literal["sgd", "adamw"] = "adamw"
    """'sgd' (official: momentum 0.9, lr 0.5, no weight decay) or 'adamw'."""
    momentum: Fraction = 0.9
    """SGD momentum."""
    weight_decay: NonNegative = 0.05
    """Decoupled weight decay (not on biases, norms, embeddings and tokens)."""
    warmup_epochs: NonNegative = 2.5
    """Linear warm-up, in epochs."""
    grad_clip: NonNegative = 1.0
    """Clip the gradient's global norm to this (0 disables clipping)."""
    grad_clip_scope: Literal["global", "process"] = "global"
    """'global': clip the gradient averaged over the processes; 'process': each process clips its own gradient,
    then they are averaged (official: per device before the mean). The same with one process."""
    label_smoothing: Fraction = 0.0
    """Label smoothing (official AudioSet: 0.3)."""
    mixup_alpha: NonNegative = 0.0
    """Mixup Beta(alpha, alpha) (official: 0.5; 0 disables)."""
    mixup_per_modality: bool = False
    """Draw a mixup weight per modality (official `mixmod`)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Autocast precision."""
    grad_accum: PositiveInt = 1
    """Micro-batches accumulated per optimiser step."""
    seed: NonNegativeInt = 0
    """Seed of the weights, the data order and every augmentation."""
    checkpoint_every: PositiveInt = 500
    """Save a checkpoint every this many steps (and at the end of every epoch)."""
    keep_checkpoints: PositiveInt = 2
    """Checkpoints kept (the newest)."""
    num_workers: NonNegativeInt = 2
    """Data-loader worker processes."""
    eval_every_epochs: PositiveInt = 1
    """Evaluate data.val every this many epochs (and after the last)."""
    test_every_epochs: NonNegativeInt = 0
    """Test data.test with data.eval_clips x eval_crops views every this many epochs (official: 4) and after the
    last; 0: after the last only."""
    balanced_sampler: bool = False
    """Sample rows with weights that balance the classes (AudioSet)."""
    init_from: str | None = None
    """A from_pretrained directory, ViT weights (.npz / .safetensors / .pth) to start from, or 'scratch'."""
    init_required: bool = False
    """Refuse to start without train.init_from (the paper recipes: the paper fine-tunes an ImageNet-21k ViT)."""
    init_audio_cls: Literal["zero", "copy"] = "copy"
    """ViT init: the audio CLS token 'copy' of the ViT's, or 'zero' (official: its name lookup misses it)."""
    modality_dropout: dict[Literal["video", "audio", "flow"], Probability] = Field(default_factory=dict)
    """Per modality, the fraction of training samples whose stream is dropped (masked), e.g. {audio: 0.25,
    video: 0.25}; a sample loses at most one stream, so the fractions may sum to at most 1."""
    log_every: PositiveInt = 50
    """Without a terminal (log files, batch jobs): a progress line every this many steps."""
    max_bad_steps: PositiveInt = 10
    """Updates in a row with a non-finite loss (each skipped, its clips logged) before the run stops."""
    compile: bool = False
    """torch.compile the model for training (inductor; the first steps compile); outputs agree up to float rounding."""

    @model_validator(mode="after")
    def _check_modality_dropout(self) -> TrainConfig:
        if sum(self.modality_dropout.values()) > 1.0:
            raise invalid("modality_dropout", f"a sample loses at most one stream: the fractions "
                                              f"{dict(self.modality_dropout)} sum to more than 1")
        return self


SECTIONS: dict[str, type[Schema]] = {"model": MBTConfig, "data": DataConfig, "train": TrainConfig}


class Config(Schema):
    """A whole run. `preset` names the preset that the `model` section's fields override."""

    model: MBTConfig = Field(default_factory=lambda: MBTConfig.preset(DEFAULT_PRESET))
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    preset: Literal[tuple(PRESETS)] = DEFAULT_PRESET  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check_sections_agree(self) -> Config:
        unknown = [m for m in self.train.modality_dropout if m not in self.model.modalities]
        if unknown:
            raise invalid("train.modality_dropout", f"{unknown[0]!r} is not one of model.modalities "
                                                    f"{list(self.model.modalities)}")
        if self.train.modality_dropout and len(self.model.modalities) < 2:
            raise invalid("train.modality_dropout", "needs at least two model.modalities")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The nested form of a YAML file (`model.preset` inside the model section)."""
        return {"model": {"preset": self.preset, **self.model.to_dict()}, "data": self.data.to_dict(),
                "train": self.train.to_dict()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def preprocessor(self, class_names: list[str] | None = None, *,
                     stats: tuple[float, float] | None = None) -> PreprocessorConfig:
        """The model's preprocessing, derived from this run: data.* sampling / augmentation as they are, frames,
        image size and spectrogram size from model.*, the normalisation statistics resolved (or `stats`, for uses
        that only need the windows)."""
        shared = set(ClipSampling.model_fields) | set(Augmentation.model_fields)
        mean, std = stats if stats is not None else self.data.spec_stats
        media_modalities = tuple(m for m in self.model.modalities if m in ("video", "audio"))
        return PreprocessorConfig(
            **{key: getattr(self.data, key) for key in shared},
            modalities=media_modalities, num_frames=self.model.num_frames, image_size=self.model.image_size,
            short_side=(self.data.short_side if self.data.short_side is not None
                        else round(self.model.image_size * 8 / 7)),
            num_mel_bins=self.model.num_mel_bins, spec_frames=self.model.spec_frames, spec_mean=mean, spec_std=std,
            class_names=list(class_names) if class_names is not None else None)
