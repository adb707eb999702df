"""The MBT model: per-modality tokenizers + CLS + positional embeddings -> fusion encoder -> shared norm and head."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mbt.errors import ConfigError, DataError
from mbt.fileio import atomic_write, write_json
from mbt.media.settings import PREPROCESSOR_FILE, PreprocessorConfig
from mbt.model.blocks import layer_norm
from mbt.model.config import MODALITY_KINDS, MBTConfig
from mbt.model.fusion import FusionEncoder
from mbt.model.tokenizers import (
    ConvSpectrogramEmbed,
    ConvVideoEmbed,
    FrameSamplingEmbed,
    SpectrogramEmbed,
    TubeletEmbed,
    sampled_frame_indices,
)

log = logging.getLogger("mbt.model")

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class MBTOutput:
    logits: torch.Tensor  # (B, num_classes): the fused prediction (mean of the per-modality logits)
    modality_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # token classifier / pool_per_stream
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # per-modality pooled features after the norm
    # (and the pre-logits layer, when there is one): what the head reads
    # {stream: (B,) bool} for the streams some samples lack (`forward(modality_mask=...)`): their entries of
    # `modality_logits` / `features` are no prediction for those samples. None: every stream ran for every sample.
    modality_mask: dict[str, torch.Tensor] | None = None


def _lecun_normal_(weight: torch.Tensor) -> None:
    fan_in = weight[0].numel()
    nn.init.trunc_normal_(weight, std=math.sqrt(1.0 / fan_in) / 0.87962566103423978, a=-2.0, b=2.0)


def _masked_mean(values: dict[str, torch.Tensor], mask: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per sample, the mean of the streams' (B, ...) values over the streams that sample has."""
    if not any(m in mask for m in values):
        return torch.stack(list(values.values()), dim=0).mean(dim=0)
    total = count = 0
    for m, v in values.items():
        if m in mask:
            shape = (-1,) + (1,) * (v.dim() - 1)
            total = total + torch.where(mask[m].view(shape), v, torch.zeros_like(v))
            count = count + mask[m].to(v.dtype).view(shape)
        else:
            total, count = total + v, count + 1
    return total / count


def _pool(tokens: torch.Tensor, classifier: str, keep: torch.Tensor | None) -> torch.Tensor:
    """gap / gmp / gsp over the tokens (B, N, D); `keep` (B, N, 1) bool leaves masked streams' tokens out."""
    if keep is None:
        if classifier == "gap":
            return tokens.mean(dim=1)
        return tokens.amax(dim=1) if classifier == "gmp" else tokens.sum(dim=1)
    if classifier == "gmp":
        return tokens.masked_fill(~keep, float("-inf")).amax(dim=1)
    summed = tokens.masked_fill(~keep, 0.0).sum(dim=1)
    return summed / keep.sum(dim=1).to(tokens.dtype) if classifier == "gap" else summed


class MBT(nn.Module):
    def __init__(self, config: MBTConfig):
        super().__init__()
        if config.fusion == "bottleneck" and config.fusion_layer == config.depth - 1 and len(config.modalities) > 1:
            # In layer Lf every stream reads the learned bottleneck; the averaged update is discarded after the last
            # layer, so fusing only there exchanges nothing (as in the official code).
            log.warning("bottleneck fusion at the last layer (fusion_layer = depth - 1) exchanges no information "
                        "between the streams; use fusion_layer <= depth - 2")
        self.config = config
        # Preprocessing that the weights were trained with (preprocessor.json); set by training / from_pretrained.
        self.preprocessing: PreprocessorConfig | None = None
        d = config.width
        self.tokenizers = nn.ModuleDict()
        self.pos_embed = nn.ParameterDict()
        self.cls_token = nn.ParameterDict()
        for m in config.modalities:
            kind, channels = MODALITY_KINDS[m]
            if config.stem == "conv":
                self.tokenizers[m] = self._conv_tokenizer(kind, channels)
            elif kind == "audio":
                self.tokenizers[m] = SpectrogramEmbed(d, config.spec_patch)
            elif config.video_tokenizer == "tubelet":
                self.tokenizers[m] = TubeletEmbed(channels, d, config.tubelet_size, config.patch_size)
            else:
                self.tokenizers[m] = FrameSamplingEmbed(channels, d, config.patch_size, config.num_frames,
                                                        config.sampled_frames)
            if config.classifier == "token":
                self.cls_token[m] = nn.Parameter(torch.zeros(1, 1, d))
            self.pos_embed[m] = nn.Parameter(torch.randn(1, config.num_tokens(m), d) * 0.02)
        self.encoder = FusionEncoder(config)
        self.norm = layer_norm(d)  # one final LayerNorm shared by all modalities (official `encoder_norm`)
        # official `pre_logits`: Dense + tanh shared by the streams, only with representation_size
        self.pre_logits = nn.Linear(d, config.representation_size) if config.representation_size else None
        # shared, zero-initialised (official `output_projection`)
        self.head = nn.Linear(config.representation_size or d, config.num_classes)
        self._init_weights()

    def _conv_tokenizer(self, kind: str, channels: int) -> nn.Module:
        config = self.config
        if kind == "audio":
            return ConvSpectrogramEmbed(config.width, config.spec_patch)
        if config.video_tokenizer == "tubelet":
            return ConvVideoEmbed(channels, config.width, config.patch_size, config.tubelet_size)
        return ConvVideoEmbed(channels, config.width, config.patch_size, 1,
                              sampled_frame_indices(config.num_frames, config.sampled_frames))

    # ------------------------------------------------------------------ init (official initialisers)
    def _init_weights(self) -> None:
        if self.config.weight_init == "trunc_normal":
            self._init_trunc_normal()
            return
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and name.endswith("attn.qkv"):
                d = module.in_features
                for chunk in module.weight.data.split(d, dim=0):  # xavier per q / k / v (fan_out = D)
                    nn.init.xavier_uniform_(chunk)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear) and name.endswith("attn.proj"):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear) and ".mlp." in f".{name}":
                nn.init.xavier_uniform_(module.weight)
                nn.init.normal_(module.bias, std=1e-6)
            elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
                if module.bias is not None:  # the conv stem's 3x3 layers have none (BatchNorm follows)
                    nn.init.zeros_(module.bias)
                if isinstance(module, nn.Conv3d):
                    # central-frame init: a 2-D kernel at the middle time index, zeros elsewhere (what the official
                    # name means; its random initializer zeroes the width axis by mistake)
                    weight = module.weight.data
                    weight.zero_()
                    _lecun_normal_(weight[:, :, weight.shape[2] // 2])
                else:
                    _lecun_normal_(module.weight.data)
        if self.pre_logits is not None:  # flax Dense defaults: lecun normal kernel, zero bias
            _lecun_normal_(self.pre_logits.weight.data)
            nn.init.zeros_(self.pre_logits.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def _init_trunc_normal(self) -> None:
        """timm's ViT default: every Linear (the head too) trunc-normal(0.02) with zero bias; convolutions keep
        PyTorch's default. With small residual branches the blocks start near the identity, so the head reads the
        tokenizer's (e.g. the conv stem's local) features from the first step instead of six random blocks'."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @staticmethod
    def count_parameters(config: MBTConfig, *, buffers: bool = False) -> int:
        """Parameters (with `buffers`: every state-dict tensor element) of the model `config` describes, counted
        on the meta device: nothing is allocated.

        The count is linear in depth (every layer adds the same blocks), so two shallow models give it exactly;
        building the model itself, even on the meta device, would take minutes at a depth of 10,000."""
        fused = config.fusion_layer < config.depth

        def count(depth: int) -> int:
            shallow = config.model_copy(update={"depth": depth, "fusion_layer": 0 if fused else depth})
            with torch.device("meta"):
                model = MBT(shallow)
                tensors = model.state_dict().values() if buffers else model.parameters()
                return sum(t.numel() for t in tensors)

        per_layer = count(3) - count(2)
        return count(2) + (config.depth - 2) * per_layer

    # ------------------------------------------------------------------ ownership (FLOP and parameter attribution)
    def module_owners(self) -> dict[str, str]:
        """Qualified name of each stream's tokenizer and blocks -> the stream (JOINT for shared blocks)."""
        owners = {f"tokenizers.{m}": m for m in self.config.modalities}
        return {**owners, **self.encoder.block_owners(prefix="encoder.")}

    def parameter_owners(self) -> dict[str, str]:
        """Parameter name -> the stream it belongs to; shared ones (bottleneck, norm, head) are left out."""
        tokens = {f"{kind}.{m}": m for kind in ("pos_embed", "cls_token") for m in self.config.modalities}
        modules = self.module_owners()
        owners = {}
        for name, _ in self.named_parameters():
            stream = tokens.get(name) or next((s for prefix, s in modules.items() if name.startswith(prefix + ".")),
                                              None)
            if stream is not None:
                owners[name] = stream
        return owners

    # ------------------------------------------------------------------ forward
    def embed(self, m: str, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizers[m](x)
        if self.config.classifier == "token":
            tokens = torch.cat([self.cls_token[m].expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.pos_embed[m]

    def _check_input(self, m: str, x: torch.Tensor) -> None:
        expected = self.config.input_shape(m)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"{m}: expected input of shape (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")

    def forward(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None, *,
                fuse: bool = True, modality_mask: dict[str, torch.Tensor] | None = None,
                **inputs: torch.Tensor | None) -> MBTOutput:
        """video: (B, 3, T, H, W); audio: (B, T_spec, n_mels) log-mel; other streams (e.g. `flow`) by name.

        A modality given as None (or left out) is not run: the model then uses the streams it has.
        `modality_mask` {stream: (B,) bool} marks the samples that lack a stream (False), so that one batch can mix
        complete and incomplete clips: in those samples the stream's input (e.g. zeros) reaches nothing — not the
        bottleneck average, not the other streams' attention keys, not the logit mean or the pooled tokens — and
        each sample's outputs are those of running it alone with the streams it has.
        `fuse=False`: every layer runs the streams apart (the official `test_with_bottlenecks=False`).
        """
        inputs = {"video": video, "audio": audio, **inputs}
        unknown = [m for m, x in inputs.items() if x is not None and m not in self.config.modalities]
        if unknown:
            raise ValueError(f"input {unknown[0]!r} is not a modality of this model {self.config.modalities}")
        present = [m for m in self.config.modalities if inputs.get(m) is not None]
        if not present:
            raise ValueError(f"no input given; this model takes {', '.join(self.config.modalities)}")
        for m in present:
            self._check_input(m, inputs[m])
        present, mask = self._partial_mask(present, inputs, modality_mask)
        tokens = self.encoder({m: self.embed(m, inputs[m]) for m in present}, fuse=fuse, mask=mask)
        return self.classify(tokens, mask)

    def _partial_mask(self, present: list[str], inputs: dict[str, torch.Tensor | None],
                      modality_mask: dict[str, torch.Tensor] | None) -> tuple[list[str], dict | None]:
        """The streams to run and the masks of those only some samples have (None when there are none): in
        evaluation a stream no sample has is not run at all, which is the same computation; in training it still
        runs, masked, so that its parameters get (zero) gradients as DDP expects of every parameter."""
        if not modality_mask:
            return present, None
        batch = inputs[present[0]].shape[0]
        masks = {}
        for m, value in modality_mask.items():
            if m not in self.config.modalities:
                raise ValueError(f"modality_mask: {m!r} is not a modality of this model {self.config.modalities}")
            if value is None or m not in present:
                continue
            value = torch.as_tensor(value, device=inputs[m].device)
            if value.shape != (batch,) or value.dtype != torch.bool:
                raise ValueError(f"modality_mask[{m!r}]: expected a ({batch},) bool tensor, got "
                                 f"{tuple(value.shape)} {value.dtype}")
            masks[m] = value
        kept = [m for m in present if m not in masks or bool(masks[m].any()) or self.training]
        if not kept:
            raise ValueError("modality_mask: every stream is masked in every sample")
        partial = {m: v for m, v in masks.items() if m in kept and not bool(v.all())}
        if partial:
            has_any = torch.zeros(batch, dtype=torch.bool, device=next(iter(partial.values())).device)
            for m in kept:
                has_any |= partial[m] if m in partial else True
            if not bool(has_any.all()):
                sample = int((~has_any).nonzero()[0, 0])
                raise ValueError(f"modality_mask: sample {sample} has no stream left")
        return kept, partial or None

    def classify(self, tokens: dict[str, torch.Tensor], mask: dict[str, torch.Tensor] | None = None) -> MBTOutput:
        """Shared norm, pooling and head; `mask` as `forward`'s: a sample's pooling and logit mean use only the
        streams it has."""
        mask = mask or {}
        if self.config.classifier == "token" or self.config.pool_per_stream:
            if self.config.classifier == "token":
                pooled = {m: self.norm(x[:, 0]) for m, x in tokens.items()}
            else:  # each stream's tokens pooled apart (a sample lacking a stream is left out of the logit mean)
                pooled = {m: _pool(self.norm(x), self.config.classifier, None) for m, x in tokens.items()}
            features = {m: self._pre_logits(f) for m, f in pooled.items()}
            modality_logits = {m: self.head(f) for m, f in features.items()}
            # evaluation output of the official code: the mean of the per-modality logits
            logits = _masked_mean(modality_logits, mask)
            return MBTOutput(logits, modality_logits, features, {m: mask[m] for m in tokens if m in mask} or None)
        # gap / gmp / gsp: mean / max / sum over all tokens of all streams (official: the 3136 video tokens
        # outweigh the 400 audio ones)
        normed = self.norm(torch.cat(list(tokens.values()), dim=1))
        keep = None
        if any(m in mask for m in tokens):
            keep = torch.cat([(mask[m] if m in mask else torch.ones(x.shape[0], dtype=torch.bool, device=x.device))
                              [:, None].expand(-1, x.shape[1]) for m, x in tokens.items()], dim=1)[..., None]
        pooled = _pool(normed, self.config.classifier, keep)
        pooled = self._pre_logits(pooled)
        return MBTOutput(self.head(pooled), {}, {"all": pooled})

    def _pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pre_logits is None else torch.tanh(self.pre_logits(x))

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path,
                        preprocessing: PreprocessorConfig | dict[str, Any] | None = None) -> Path:
        """Weights (safetensors), config.json and, when known, preprocessor.json (written by its owner)."""
        from safetensors.torch import save

        directory = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        data = save(state, metadata={"format": "pt"})
        atomic_write(directory / WEIGHTS_NAME, lambda handle: handle.write(data), what="model weights")
        write_json(directory / CONFIG_NAME, self.config.to_dict(), what="model config")
        preprocessing = preprocessing if preprocessing is not None else self.preprocessing
        if isinstance(preprocessing, dict):  # the plain form of preprocessor.json, validated
            preprocessing = PreprocessorConfig.from_dict(preprocessing)
        if preprocessing is not None:
            preprocessing.save(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> MBT:
        """Loads a `save_pretrained` directory. The weight file's tensor names and shapes are checked against
        config.json before the model is built (a config asking for a huge model fails at once), and every
        loaded tensor must be finite."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory}: no {name}; expected a directory written by save_pretrained "
                                        "(or `mbt train` / `mbt convert`)")
        try:
            values = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{directory / CONFIG_NAME}: not valid JSON: {e}") from None
        try:
            config = MBTConfig.from_dict(values)
        except ConfigError as e:
            raise ConfigError(f"{directory / CONFIG_NAME}: {e}") from None
        weights = directory / WEIGHTS_NAME
        try:
            with safe_open(str(weights), framework="pt") as handle:
                stored = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"{weights}: not a readable safetensors file ({' '.join(str(e).split())[:160]})") from None
        for m in config.modalities:  # earlier versions stored the spectrogram kernel with 1 channel, their sum
            key = f"tokenizers.{m}.proj.weight"
            if MODALITY_KINDS[m][0] == "audio" and key in stored and len(stored[key]) == 4 and stored[key][1] == 1:
                stored[key] = (stored[key][0], SpectrogramEmbed.CHANNELS, *stored[key][2:])  # split when loaded
        stored_count, expected_count = sum(math.prod(s) for s in stored.values()), cls.count_parameters(config, buffers=True)
        if stored_count != expected_count:  # found before anything of config.json's size is built
            raise ValueError(f"{weights}: holds {stored_count:,} parameters, config.json describes a model of "
                             f"{expected_count:,} (depth {config.depth}, width {config.width}); they do not match")
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        missing = sorted(set(expected) - set(stored))
        unexpected = sorted(set(stored) - set(expected))
        wrong = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
        if missing or unexpected or wrong:
            detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected else
                      f"{wrong[0]} is {stored[wrong[0]]} in the file, {expected[wrong[0]]} by config.json")
            raise ValueError(f"{weights}: weights do not match config.json ({detail})")
        model = cls(config)
        try:
            state = load_file(str(weights), device=str(map_location))
        except (SafetensorError, OSError) as e:
            raise DataError(f"{weights}: cannot read the weights ({' '.join(str(e).split())[:160]})") from None
        for key, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise DataError(f"{weights}: tensor {key} holds {bad} non-finite value(s): the file is damaged")
        model.load_state_dict(state)
        if (directory / PREPROCESSOR_FILE).is_file():
            model.preprocessing = PreprocessorConfig.load(directory)
        return model.to(map_location)
