"""The model's settings (`MBTConfig`) and its presets. Attribute names are the public API (README, config.json).

`config.json` beside a model's weights is `MBTConfig.to_dict()`; `from_dict` reads it back, and any value is
checked on construction and on assignment, with errors that name the key (`model.fusion_layer: ...`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from mbt.errors import ConfigError
from mbt.schema import Schema, invalid, validate

# What kind of tokenizer each stream name uses, and how many input channels it has. A stream that is not in this
# table is an error, so a misspelt modality cannot become an unused stream.
MODALITY_KINDS: dict[str, tuple[str, int]] = {
    "video": ("video", 3),
    "audio": ("audio", 1),
    "flow": ("video", 2),  # optical flow (dx, dy): a second video-like stream
}

PositiveInt = Annotated[int, Field(ge=1)]
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]


class MBTConfig(Schema):
    """The model. Presets (`MBTConfig.preset`) set the transformer's size; any field can be overridden."""

    modalities: tuple[Literal["video", "audio", "flow"], ...] = ("video", "audio")
    """Streams, in the order their tokens are concatenated (converted official checkpoints: [audio, video])."""
    # Transformer
    depth: PositiveInt = 12
    """Transformer layers of every stream."""
    width: PositiveInt = 768
    """Token width (hidden size)."""
    num_heads: PositiveInt = 12
    """Attention heads; must divide width."""
    mlp_dim: PositiveInt = 3072
    """Hidden size of every block's MLP."""
    # Fusion: layers < fusion_layer run each stream alone; from fusion_layer on the streams exchange information.
    fusion: Literal["bottleneck", "vanilla"] = "bottleneck"
    """How the streams exchange information from fusion_layer on: shared bottleneck tokens, or full attention."""
    fusion_layer: Annotated[int, Field(ge=0)] = 8
    """First fused layer: 0 = early fusion ... depth = late fusion (streams never meet before the head)."""
    num_bottlenecks: PositiveInt = 4
    """Bottleneck tokens B (the official code adds one slot for the CLS token with the token classifier)."""
    share_weights: bool = False
    """One set of transformer weights for all streams (with any fusion, as the official `share_encoder`)."""
    classifier: Literal["token", "gap", "gmp", "gsp"] = "token"
    """'token': per-stream CLS -> shared norm + head, logits averaged; 'gap' / 'gmp' / 'gsp': mean / max / sum
    over all tokens of all streams."""
    pool_per_stream: bool = False
    """With gap / gmp / gsp: pool each stream's tokens apart -> shared norm + head, logits averaged over the
    streams, as the token classifier does (per-stream logits for each stream alone); false: the official pooling
    over all streams' tokens together."""
    representation_size: PositiveInt | None = None
    """Width of the official pre-logits layer (Dense + tanh before the head); null: none (the official config)."""
    # Heads
    num_classes: PositiveInt = 527
    """Outputs of the head (set from data.classes when training)."""
    class_splits: tuple[PositiveInt, ...] | None = None
    """Softmax heads over consecutive class ranges, e.g. [97, 300] for Epic-Kitchens verb / noun."""
    multi_label: bool = False
    """Sigmoid outputs and BCE (AudioSet) instead of one softmax."""
    # Video tokenizer: "tubelet" = 3-D conv over t x p x p tubelets; "frame_sampling" = the official
    # "temporal_sampling": `sampled_frames` evenly spaced frames, each cut into p x p patches by a 2-D conv.
    video_tokenizer: Literal["tubelet", "frame_sampling"] = "tubelet"
    """'tubelet': 3-D patches of tubelet_size frames; 'frame_sampling': sampled_frames 2-D-patched frames."""
    num_frames: PositiveInt = 32
    """Frames of the video input."""
    image_size: PositiveInt = 224
    """Side of the square video crop (pixels)."""
    patch_size: PositiveInt = 16
    """Side of a video patch (pixels)."""
    tubelet_size: PositiveInt = 2
    """Frames of a tubelet."""
    sampled_frames: PositiveInt = 8
    """Frames kept by the frame_sampling tokenizer."""
    stem: Literal["patch", "conv"] = "patch"
    """How pixels and spectrogram become tokens: 'patch': the official linear patch projection; 'conv': a
    convolutional stem (3x3 stride-2 conv + BatchNorm + ReLU layers, then 1x1; per frame, a tubelet's frames
    averaged) with the same token grid, for training from scratch on small data (not in the paper; no official
    or ImageNet weights for it). Patch sizes must be powers of two."""
    # Audio tokenizer: a (time x mel) log-mel spectrogram cut into patches (time first, as the official code)
    spec_frames: PositiveInt = 800
    """Spectrogram frames of the audio input (100 a second: 800 = 8 s)."""
    num_mel_bins: PositiveInt = 128
    """Mel bins of the audio input."""
    spec_patch: tuple[PositiveInt, PositiveInt] = (16, 16)
    """(time, mel) size of a spectrogram patch."""
    weight_init: Literal["official", "trunc_normal"] = "official"
    """Initialisers of a model trained from scratch: 'official': scenic's (Xavier-uniform attention and MLP
    weights, LeCun-normal patch kernels, a zero head); 'trunc_normal': timm's ViT default (trunc-normal(0.02)
    Linear weights, the head's included, zero biases, PyTorch's default convolutions), whose near-identity blocks
    pass the tokenizer's features to the head from the first step (docs/small-data.md section 7). Weights loaded
    from a checkpoint replace either."""
    # Regularisation
    drop_path_rate: Rate = 0.0
    """Stochastic depth of the last layer (rising linearly from 0 at the first)."""
    drop_path_rescale: bool = False
    """Rescale kept branches by 1/(1-p) as timm does (false: the official unscaled stochastic depth)."""
    dropout: Rate = 0.0
    """Dropout after the MLP and attention projections."""
    attention_dropout: Rate = 0.0
    """Dropout of the attention probabilities."""

    @model_validator(mode="after")
    def _check_consistency(self) -> MBTConfig:
        if len(set(self.modalities)) != len(self.modalities):
            raise invalid("modalities", f"a modality is listed twice: {list(self.modalities)}")
        if not self.modalities:
            raise invalid("modalities", "at least one modality is needed")
        if self.width % self.num_heads:
            raise invalid("num_heads", f"{self.num_heads} heads do not divide width {self.width}")
        if self.fusion_layer > self.depth:
            raise invalid("fusion_layer", f"must be in 0..depth ({self.depth}), got {self.fusion_layer}")
        if self.pool_per_stream and self.classifier == "token":
            raise invalid("pool_per_stream", "needs a pooling classifier (gap, gmp or gsp); the token classifier "
                                             "already reads each stream apart")
        if self.image_size % self.patch_size:
            raise invalid("image_size", f"{self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.stem == "conv":
            for key, sides in (("patch_size", (self.patch_size,)), ("spec_patch", tuple(self.spec_patch))):
                if any(side < 2 or side & (side - 1) for side in sides):
                    raise invalid(key, f"the conv stem halves the input per layer: patch sides must be powers of "
                                       f"two (2, 4, 8, 16, ...), got {sides if len(sides) > 1 else sides[0]}")
        if self.video_tokenizer == "tubelet" and self.num_frames % self.tubelet_size:
            raise invalid("num_frames", f"{self.num_frames} frames are not a multiple of tubelet_size "
                                        f"{self.tubelet_size}")
        if self.video_tokenizer == "frame_sampling" and self.sampled_frames > self.num_frames:
            raise invalid("sampled_frames", f"cannot sample {self.sampled_frames} of {self.num_frames} frames")
        if self.spec_frames % self.spec_patch[0]:
            raise invalid("spec_frames", f"{self.spec_frames} is not a multiple of the patch's time size "
                                         f"{self.spec_patch[0]}")
        if self.num_mel_bins % self.spec_patch[1]:
            raise invalid("num_mel_bins", f"{self.num_mel_bins} is not a multiple of the patch's mel size "
                                          f"{self.spec_patch[1]}")
        if self.class_splits is not None:
            if sum(self.class_splits) != self.num_classes:
                raise invalid("class_splits", f"{list(self.class_splits)} must sum to num_classes "
                                              f"({self.num_classes})")
            if self.multi_label:
                raise invalid("class_splits", "class splits are softmax heads; multi_label must be false")
        return self

    # ---------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MBTConfig:
        if name not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return validate(cls, {**PRESETS[name], **overrides}, "model")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MBTConfig:
        return validate(cls, values, "model")

    # ---------------------------------------------------------------- derived shapes
    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of the video input this config expects."""
        return self.input_shape("video")

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
