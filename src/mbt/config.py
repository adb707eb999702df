"""Typed configuration: the model (`MBTConfig`), the data pipeline and training, presets, YAML + dotted overrides.

Every value is validated when the config is built; errors name the key at fault (``model.fusion_layer``), so a
typo in a YAML file or a ``--set`` never becomes a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


# What kind of tokenizer each stream name uses, and how many input channels it has. A stream that is not in this
# table is an error, so a misspelt modality cannot become an unused stream.
MODALITY_KINDS: dict[str, tuple[str, int]] = {
    "video": ("video", 3),
    "audio": ("audio", 1),
    "flow": ("video", 2),  # optical flow (dx, dy): a second video-like stream
}


@dataclass
class MBTConfig:
    """The model. Attribute names are the public API (see README)."""

    modalities: tuple[str, ...] = ("video", "audio")
    # Transformer
    depth: int = 12
    width: int = 768
    num_heads: int = 12
    mlp_dim: int = 3072
    # Fusion: layers < fusion_layer run each stream alone; from fusion_layer on the streams exchange information.
    fusion: str = "bottleneck"  # "bottleneck" | "vanilla"
    fusion_layer: int = 8  # 0 = early fusion ... depth = late fusion
    num_bottlenecks: int = 4
    share_weights: bool = False
    classifier: str = "token"  # "token" | "gap"
    # Heads
    num_classes: int = 527
    class_splits: tuple[int, ...] | None = None  # e.g. (97, 300) for Epic-Kitchens verb / noun; sums to num_classes
    multi_label: bool = False  # sigmoid outputs (AudioSet) instead of softmax
    # Video tokenizer: "tubelet" = 3-D conv over t x p x p tubelets; "frame_sampling" = the official
    # "temporal_sampling": `sampled_frames` evenly spaced frames, each cut into p x p patches by a 2-D conv.
    video_tokenizer: str = "tubelet"
    num_frames: int = 32
    image_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 2
    sampled_frames: int = 8
    # Audio tokenizer: a (time x mel) log-mel spectrogram cut into patches (time first, as the official code)
    spec_frames: int = 800  # 100 frames per second -> 8 s
    num_mel_bins: int = 128
    spec_patch: tuple[int, int] = (16, 16)
    # Regularisation
    drop_path_rate: float = 0.0
    # The official stochastic depth keeps surviving branches unscaled (x * (1 - drop) + inputs); timm rescales by
    # 1 / (1 - p). False = official behaviour.
    drop_path_rescale: bool = False
    dropout: float = 0.0
    attention_dropout: float = 0.0

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.spec_patch = tuple(self.spec_patch)
        if self.class_splits is not None:
            self.class_splits = tuple(int(c) for c in self.class_splits)
        self.validate()

    # ---------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MBTConfig:
        if name not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        values = {**PRESETS[name], **overrides}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"model.{sorted(unknown)[0]}: not an MBTConfig field")
        return cls(**values)

    # ---------------------------------------------------------------- derived shapes
    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of the video input this config expects."""
        return (MODALITY_KINDS["video"][1], self.num_frames, self.image_size, self.image_size)

    @property
    def audio_shape(self) -> tuple[int, int]:
        """(T_spec, n_mels) of the log-mel input this config expects."""
        return (self.spec_frames, self.num_mel_bins)

    def input_shape(self, modality: str) -> tuple[int, ...]:
        kind, channels = MODALITY_KINDS[modality]
        if kind == "audio":
            return self.audio_shape
        return (channels, self.num_frames, self.image_size, self.image_size)

    def token_grid(self, modality: str) -> tuple[int, ...]:
        """Patch grid of a stream: (t, h, w) for video-like streams, (time, mel) for audio."""
        kind, _ = MODALITY_KINDS[modality]
        if kind == "audio":
            return (self.spec_frames // self.spec_patch[0], self.num_mel_bins // self.spec_patch[1])
        side = self.image_size // self.patch_size
        t = self.num_frames // self.tubelet_size if self.video_tokenizer == "tubelet" else self.sampled_frames
        return (t, side, side)

    def num_tokens(self, modality: str) -> int:
        """Tokens of a stream, CLS included when the classifier is `token`."""
        return math.prod(self.token_grid(modality)) + (1 if self.classifier == "token" else 0)

    @property
    def num_bottleneck_tokens(self) -> int:
        # The official code adds a slot for the CLS token when classifier == "token": "4 bottlenecks" are 5 tokens.
        return self.num_bottlenecks + (1 if self.classifier == "token" else 0)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"model.{key}: {why}")

        need(len(self.modalities) >= 1, "modalities", "at least one modality is needed")
        for m in self.modalities:
            need(m in MODALITY_KINDS, "modalities", f"unknown modality {m!r}; known: {sorted(MODALITY_KINDS)}")
        need(len(set(self.modalities)) == len(self.modalities), "modalities", "a modality is listed twice")
        for key in ("depth", "width", "num_heads", "mlp_dim", "num_classes", "patch_size", "num_frames",
                    "image_size", "tubelet_size", "sampled_frames", "spec_frames", "num_mel_bins"):
            value = getattr(self, key)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
                 f"must be a positive integer, got {value!r}")
        need(self.width % self.num_heads == 0, "num_heads",
             f"{self.num_heads} heads do not divide width {self.width}")
        need(self.fusion in ("bottleneck", "vanilla"), "fusion",
             f"must be 'bottleneck' or 'vanilla', got {self.fusion!r}")
        need(isinstance(self.fusion_layer, int) and 0 <= self.fusion_layer <= self.depth, "fusion_layer",
             f"must be in 0..depth ({self.depth}), got {self.fusion_layer!r}")
        need(isinstance(self.num_bottlenecks, int) and self.num_bottlenecks >= 1, "num_bottlenecks",
             f"must be >= 1, got {self.num_bottlenecks!r}")
        need(self.classifier in ("token", "gap"), "classifier", f"must be 'token' or 'gap', got {self.classifier!r}")
        need(not (self.share_weights and self.fusion == "bottleneck" and self.fusion_layer < self.depth),
             "share_weights", "shared weights are only defined for vanilla (or late) fusion, as in the official code")
        need(self.video_tokenizer in ("tubelet", "frame_sampling"), "video_tokenizer",
             f"must be 'tubelet' or 'frame_sampling', got {self.video_tokenizer!r}")
        need(self.image_size % self.patch_size == 0, "image_size",
             f"{self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.video_tokenizer == "tubelet":
            need(self.num_frames % self.tubelet_size == 0, "num_frames",
                 f"{self.num_frames} frames are not a multiple of tubelet_size {self.tubelet_size}")
        else:
            need(self.sampled_frames <= self.num_frames, "sampled_frames",
                 f"cannot sample {self.sampled_frames} of {self.num_frames} frames")
        need(len(self.spec_patch) == 2 and all(int(p) > 0 for p in self.spec_patch), "spec_patch",
             "must be two positive integers (time, mel)")
        need(self.spec_frames % self.spec_patch[0] == 0, "spec_frames",
             f"{self.spec_frames} is not a multiple of the patch's time size {self.spec_patch[0]}")
        need(self.num_mel_bins % self.spec_patch[1] == 0, "num_mel_bins",
             f"{self.num_mel_bins} is not a multiple of the patch's mel size {self.spec_patch[1]}")
        for key in ("drop_path_rate", "dropout", "attention_dropout"):
            value = getattr(self, key)
            need(isinstance(value, (int, float)) and 0.0 <= value < 1.0, key, f"must be in [0, 1), got {value!r}")
        if self.class_splits is not None:
            need(all(c > 0 for c in self.class_splits) and sum(self.class_splits) == self.num_classes,
                 "class_splits", f"{self.class_splits} must be positive and sum to num_classes ({self.num_classes})")
            need(not self.multi_label, "class_splits", "class splits are softmax heads; multi_label must be false")

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modalities"] = list(self.modalities)
        d["spec_patch"] = list(self.spec_patch)
        d["class_splits"] = None if self.class_splits is None else list(self.class_splits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MBTConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"model.{sorted(unknown)[0]}: not an MBTConfig field")
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    # CPU-friendly: ViT-Ti width and heads at half depth, 8 frames of 112^2 and 4 s of audio
    # (196 video + 200 audio tokens), mid fusion two thirds of the way up as in the paper.
    "mbt-tiny": dict(depth=6, width=192, num_heads=3, mlp_dim=768, fusion_layer=4, num_frames=8, image_size=112,
                     spec_frames=400, drop_path_rate=0.1),
    # The paper's inputs: 32 frames of 224^2 (tubelet 2 -> 3136 tokens), 800 x 128 spectrogram (400 tokens).
    "mbt-small": dict(depth=12, width=384, num_heads=6, mlp_dim=1536, fusion_layer=8, drop_path_rate=0.3),
    "mbt-base": dict(depth=12, width=768, num_heads=12, mlp_dim=3072, fusion_layer=8, drop_path_rate=0.3),
    "mbt-large": dict(depth=24, width=1024, num_heads=16, mlp_dim=4096, fusion_layer=16, drop_path_rate=0.3),
}


# ==================================================================== data and training
# Spectrogram normalisation statistics, (mean, std): x -> (x - mean) / std.
NORMALISATION_STATS: dict[str, tuple[float, float]] = {
    "scenic": (1.102, 2.762),  # official MBT, AudioSet unbalanced train, its own log-mel
    "ast": (-4.2677393, 2 * 4.5689974),  # AST divides by twice the std (ast issue #5)
    "cav-mae": (-5.081, 4.4849),
    "none": (0.0, 1.0),
}


@dataclass
class DataConfig:
    train: str | None = None
    val: str | None = None
    test: str | None = None
    classes: str | None = None
    # video sampling: `model.num_frames` frames, `frame_stride` apart at `fps` (paper: 32 at stride 2 of 25 fps)
    fps: float = 25.0
    frame_stride: int = 2
    short_side: int | None = None  # resize before cropping; None = image_size * 8 / 7 (256 for 224)
    # audio
    sample_rate: int = 16000
    audio_frontend: str = "kaldi"  # "kaldi" (AST/CAV-MAE fbank) | "logmel" (plain power log-mel)
    normalisation: str = "ast"  # a key of NORMALISATION_STATS, or "custom" with spec_mean / spec_std
    spec_mean: float | None = None
    spec_std: float | None = None
    # augmentation (training only)
    scale_jitter: tuple[float, float] = (0.9, 1.33)
    flip: bool = True
    color_aug_prob: float = 0.8
    color_drop_prob: float = 0.1
    freq_mask_count: int = 1
    freq_mask_width: int = 48
    time_mask_count: int = 0  # the official config's time masks are disabled by lingvo (max_ratio 0)
    time_mask_width: int = 48
    # evaluation views: official test = 4 evenly spaced clips x 1 centre crop
    eval_clips: int = 4
    eval_crops: int = 1
    # what to do with a clip lacking a modality the model needs: "skip" (logged and counted) or "error"
    on_missing_modality: str = "skip"
    # a training window more than this fraction padding (repeated frames or silence, either modality) is skipped
    max_pad_fraction: float = 0.5
    # decode every clip once and keep it in memory, without per-epoch augmentation (small sets, the demo)
    cache: bool = False

    def validate(self) -> None:
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"data.{key}: {why}")

        need(self.fps > 0, "fps", f"must be > 0, got {self.fps!r}")
        need(isinstance(self.frame_stride, int) and self.frame_stride >= 1, "frame_stride", "must be an integer >= 1")
        need(self.audio_frontend in ("kaldi", "logmel"), "audio_frontend",
             f"must be 'kaldi' or 'logmel', got {self.audio_frontend!r}")
        need(self.normalisation in (*NORMALISATION_STATS, "custom"), "normalisation",
             f"must be one of {sorted(NORMALISATION_STATS) + ['custom']}, got {self.normalisation!r}")
        if self.normalisation == "custom":
            need(self.spec_mean is not None and self.spec_std is not None and self.spec_std > 0, "spec_std",
                 "normalisation 'custom' needs spec_mean and a positive spec_std (see `mbt data stats`)")
        need(self.sample_rate > 0, "sample_rate", "must be > 0")
        need(len(self.scale_jitter) == 2 and 0 < self.scale_jitter[0] <= self.scale_jitter[1], "scale_jitter",
             "must be [low, high] with 0 < low <= high")
        for key in ("color_aug_prob", "color_drop_prob"):
            need(0.0 <= getattr(self, key) <= 1.0, key, "must be a probability in [0, 1]")
        for key in ("freq_mask_count", "freq_mask_width", "time_mask_count", "time_mask_width"):
            need(isinstance(getattr(self, key), int) and getattr(self, key) >= 0, key, "must be an integer >= 0")
        need(self.eval_clips >= 1 and self.eval_crops in (1, 3), "eval_crops",
             "eval_clips must be >= 1 and eval_crops 1 (centre) or 3 (left/centre/right)")
        need(self.on_missing_modality in ("skip", "error"), "on_missing_modality", "must be 'skip' or 'error'")
        need(isinstance(self.max_pad_fraction, (int, float)) and 0.0 <= self.max_pad_fraction <= 1.0,
             "max_pad_fraction", f"must be a fraction in [0, 1], got {self.max_pad_fraction!r}")

    @property
    def spec_stats(self) -> tuple[float, float]:
        if self.normalisation == "custom":
            return (float(self.spec_mean), float(self.spec_std))
        return NORMALISATION_STATS[self.normalisation]


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"  # "sgd" (official: momentum 0.9, lr 0.5, no weight decay) | "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.05
    warmup_epochs: float = 2.5
    grad_clip: float = 1.0
    label_smoothing: float = 0.0  # official AudioSet: 0.3
    mixup_alpha: float = 0.0  # official: 0.5
    mixup_per_modality: bool = False  # official `mixmod`
    precision: str = "fp32"  # "fp32" | "bf16"
    grad_accum: int = 1
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    num_workers: int = 2
    eval_every_epochs: int = 1
    balanced_sampler: bool = False
    init_from: str | None = None  # a from_pretrained directory, or ViT weights (.npz / .safetensors / .pth)

    def validate(self) -> None:
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"train.{key}: {why}")

        for key in ("epochs", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "eval_every_epochs"):
            need(isinstance(getattr(self, key), int) and getattr(self, key) >= 1, key, "must be an integer >= 1")
        need(isinstance(self.num_workers, int) and self.num_workers >= 0, "num_workers", "must be an integer >= 0")
        need(self.lr > 0, "lr", f"must be > 0, got {self.lr!r}")
        need(self.optimizer in ("sgd", "adamw"), "optimizer", f"must be 'sgd' or 'adamw', got {self.optimizer!r}")
        need(self.precision in ("fp32", "bf16"), "precision", f"must be 'fp32' or 'bf16', got {self.precision!r}")
        need(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")
        need(self.mixup_alpha >= 0.0, "mixup_alpha", "must be >= 0")
        need(self.warmup_epochs >= 0.0, "warmup_epochs", "must be >= 0")
        need(self.grad_clip >= 0.0, "grad_clip", "must be >= 0 (0 disables clipping)")


@dataclass
class Config:
    """A whole run: `model`, `data`, `train` sections. `model.preset` names the preset the model fields override."""

    model: MBTConfig = field(default_factory=lambda: MBTConfig.preset("mbt-tiny"))
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "mbt-tiny"

    def to_dict(self) -> dict[str, Any]:
        model = {"preset": self.preset, **self.model.to_dict()}
        data = dataclasses.asdict(self.data)
        data["scale_jitter"] = list(self.data.scale_jitter)
        return {"model": model, "data": data, "train": dataclasses.asdict(self.train)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = {"data": DataConfig, "train": TrainConfig}


def parse_value(text: str) -> Any:
    """`--set key=value` values are YAML scalars/lists: 8, 0.5, true, [video, audio], null."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse value {text!r}: {e}") from None


def _coerce(key: str, value: Any, default: Any, annotation: str) -> Any:
    """Check a value's type against the field it sets (YAML gives ints for floats etc.)."""
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"{key}: may not be null")
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value
    if annotation.startswith("int") and "float" not in annotation:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, got {value!r}")
        return value
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, got {value!r}")
        return float(value)
    if annotation.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, got {value!r}")
        return value
    if annotation.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: must be a list, got {value!r}")
        return tuple(value)
    return value


def _apply(section_name: str, cls: type, values: dict[str, Any], base: Any | None = None) -> Any:
    types = {f.name: f for f in fields(cls)}
    kwargs = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"{section_name}.{key}: unknown key; known keys: {', '.join(sorted(types))}")
        kwargs[key] = _coerce(f"{section_name}.{key}", value, None, str(types[key].type))
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{section_name}: {e}") from None
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def build_config(raw: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    """A validated Config from a nested dict (a YAML file) and `section.key=value` overrides."""
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for section in raw:
        if section not in ("model", "data", "train"):
            raise ConfigError(f"{section}: unknown section; known sections: model, data, train")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2 or parts[0] not in ("model", "data", "train"):
            raise ConfigError(f"{dotted}: expected model.<key>, data.<key> or train.<key>")
        raw.setdefault(parts[0], {})[parts[1]] = parse_value(text)

    model_values = dict(raw.get("model", {}))
    preset = model_values.pop("preset", "mbt-tiny")
    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    model = _apply("model", MBTConfig, model_values, MBTConfig.preset(preset))
    data = _apply("data", DataConfig, raw.get("data", {}))
    train = _apply("train", TrainConfig, raw.get("train", {}))
    return Config(model=model, data=data, train=train, preset=preset)


def load_config(source: str | Path, overrides: list[str] | None = None) -> Config:
    """CONFIG as the CLI takes it: a YAML path, a file name in the packaged configs, or a preset name."""
    text = str(source)
    if text in PRESETS:
        return build_config({"model": {"preset": text}}, overrides)
    path = Path(text)
    base = path.parent  # manifest paths in a user's YAML file are relative to the file
    if not path.exists():
        packaged = Path(__file__).parent / "configs" / (path.name if path.suffix else f"{path.name}.yaml")
        if packaged.exists():
            path, base = packaged, Path.cwd()  # ... and in a packaged recipe, to where the command runs
        else:
            raise ConfigError(f"config {text!r}: no such file, and not a preset ({', '.join(sorted(PRESETS))})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with model / data / train sections")
    data = raw.get("data") or {}
    for key in ("train", "val", "test", "classes"):
        value = data.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            data[key] = str((base / value).resolve())
    return build_config(raw, overrides)
