"""Official scenic MBT checkpoints (Flax msgpack TrainState) -> `MBT`, leaf by leaf, float32 throughout.

The variant is read off the parameter tree: which modalities have an embedding, `_spectrogram` blocks or not
(shared weights, with either fusion), a `bottleneck` leaf (bottleneck fusion, with one extra token for the token
classifier), `cls` leaves (token classifier; without them `gap`, or the `gmp` / `gsp` the caller names), a
`pre_logits` leaf (`representation_size`), and every size from a kernel's shape. Every leaf is used exactly once,
with one documented exception: a single-modality tree's `bottleneck` leaf, which the official model creates but
never uses (one modality is a plain ViT), is dropped with a log line. What the tree does not store is given by the
caller: `fusion_layer` (default 8 for 12-layer models, the released ViT-B checkpoints) and, where the token counts
leave a choice, the input sizes (see `infer_config`).

Official `rgb` is our `video`, `spectrogram` our `audio`; converted models list `("audio", "video")`, the official
`modality_fusion` order, so that joint sequences and concatenated outputs are in the same order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mbt.errors import ConfigError
from mbt.fileio import dumps as strict_dumps
from mbt.fileio import write_json
from mbt.interop.flax import LeafPool, dense_weight, flax_block, load_into, squarest_split
from mbt.interop.msgpack_tree import CheckpointError, checkpoint_bytes, flatten, params_subtree, unpack_state
from mbt.media.settings import PreprocessorConfig
from mbt.model import MBT
from mbt.model.config import MBTConfig

log = logging.getLogger(__name__)

RELEASED_DEPTH, RELEASED_FUSION_LAYER = 12, 8  # ViT-B released checkpoints; third-party inference config
CONVERSION_NAME = "conversion.json"
AUDIOSET_CLASSES = 527
# The full-size grids of the official inputs, preferred when a token count allows them.
OFFICIAL_SIDE, OFFICIAL_MEL_BINS = 224, 128


# ==================================================================== config inference
def _blocks(leaves: dict[str, np.ndarray], suffix: str) -> list[int]:
    """Layer indices of the `Transformer/encoderblock_<l><suffix>` blocks present."""
    pattern = re.compile(rf"Transformer/encoderblock_(\d+){suffix}/.+")
    return sorted({int(m.group(1)) for key in leaves if (m := pattern.fullmatch(key))})


def _video_grid(tokens: int, patch: int, steps: int | None, side: int | None, what: str,
                source: str) -> tuple[int, int]:
    """(time steps, grid side) with steps * side**2 == tokens; a given value wins, else the official 14 x 14
    (224 px at patch 16) when it divides, else the largest square grid that divides."""
    if side is not None:
        if side % patch or tokens % (side // patch) ** 2:
            raise CheckpointError(f"{source}: {tokens} video tokens are not a whole number of "
                                  f"{side // patch}x{side // patch} grids (image_size {side}, patch {patch})")
        return tokens // (side // patch) ** 2, side // patch
    if steps is not None:
        per_step, rest = divmod(tokens, steps)
        grid = math.isqrt(per_step)
        if rest or grid * grid != per_step:
            raise CheckpointError(f"{source}: {tokens} video tokens do not split into {steps} {what} of a square "
                                  "grid")
        return steps, grid
    official = OFFICIAL_SIDE // patch
    if tokens % (official * official) == 0:
        return tokens // (official * official), official
    grid = max(g for g in range(1, math.isqrt(tokens) + 1) if tokens % (g * g) == 0)
    return tokens // (grid * grid), grid


def _audio_grid(tokens: int, patch: tuple[int, int], spec_frames: int | None, mel_bins: int | None,
                source: str) -> tuple[int, int]:
    """(time, mel) patch counts; given sizes win, else 128 mel bins when that leaves at least as many time
    patches as mel patches (800 x 128 -> 50 x 8), else the most square split with time >= mel (8 -> 4 x 2)."""
    if mel_bins is not None:
        mel = mel_bins // patch[1]
        if mel_bins % patch[1] or tokens % mel:
            raise CheckpointError(f"{source}: {tokens} audio tokens do not split into rows of {mel} mel patches "
                                  f"(num_mel_bins {mel_bins}, patch {patch[1]})")
        return tokens // mel, mel
    if spec_frames is not None:
        time = spec_frames // patch[0]
        if spec_frames % patch[0] or tokens % time:
            raise CheckpointError(f"{source}: {tokens} audio tokens do not split into {time} time patches "
                                  f"(spec_frames {spec_frames}, patch {patch[0]})")
        return time, tokens // time
    official = OFFICIAL_MEL_BINS // patch[1]
    if tokens % official == 0 and tokens // official >= official:
        return tokens // official, official
    mel, time = squarest_split(tokens)
    return time, mel


def infer_config(leaves: dict[str, np.ndarray], source: str = "checkpoint", **overrides: Any) -> MBTConfig:
    """The MBTConfig of an official parameter tree (flattened), completed by `overrides` (MBTConfig fields).

    Not in the tree, so from `overrides` or defaults: `fusion_layer` (required unless the model has 12 layers:
    then 8, as for the released ViT-B checkpoints), the input sizes where the token counts leave a choice
    (`num_frames`, `image_size`, `spec_frames`, `num_mel_bins`, `sampled_frames`; the defaults prefer the official
    224 px and 128 mel bins), and `multi_label` (default: true for 527 classes, i.e. AudioSet).
    """
    overrides = dict(overrides)
    has_video, has_audio = "embedding/kernel" in leaves, "embedding_spectrogram/kernel" in leaves
    if not (has_video or has_audio):
        raise CheckpointError(f"{source}: neither embedding/kernel (rgb) nor embedding_spectrogram/kernel "
                              "(spectrogram): not an MBT parameter tree")
    for key in ("Transformer/encoder_norm/scale", "output_projection/kernel"):
        if key not in leaves:
            raise CheckpointError(f"{source}: missing leaf {key}")
    modalities = tuple(m for m, present in (("audio", has_audio), ("video", has_video)) if present)
    rgb_layers, spec_layers = _blocks(leaves, ""), _blocks(leaves, "_spectrogram")
    layers = rgb_layers or spec_layers
    if not layers:
        raise CheckpointError(f"{source}: no Transformer/encoderblock_* leaves")
    depth = max(layers) + 1
    share = has_video and has_audio and not spec_layers
    first = f"Transformer/encoderblock_{layers[0]}" + ("" if rgb_layers else "_spectrogram")
    width = leaves["Transformer/encoder_norm/scale"].shape[0]
    query = f"{first}/MultiHeadDotProductAttention_0/query/kernel"
    mlp = f"{first}/MlpBlock_0/Dense_0/kernel"
    for key in (query, mlp):
        if key not in leaves:
            raise CheckpointError(f"{source}: missing leaf {key}")
    if "cls" in leaves:
        classifier = "token"
    else:  # the pooling classifiers have no parameters: gap unless told gmp / gsp
        classifier = overrides.get("classifier", "gap")
        if classifier == "token":
            raise ConfigError(f"model.classifier: the checkpoint {source} has no cls leaf, so it is not 'token'; "
                              "give gap, gmp or gsp")
    cls = 1 if classifier == "token" else 0
    inferred: dict[str, Any] = dict(
        modalities=modalities, depth=depth, width=width, num_heads=leaves[query].shape[1],
        mlp_dim=leaves[mlp].shape[1], share_weights=share, classifier=classifier, stem="patch",
        num_classes=leaves["output_projection/kernel"].shape[1],
        representation_size=leaves["pre_logits/kernel"].shape[1] if "pre_logits/kernel" in leaves else None)
    if "bottleneck" in leaves:
        inferred.update(fusion="bottleneck", num_bottlenecks=leaves["bottleneck"].shape[1] - cls)
    else:
        inferred.update(fusion="vanilla")
    if has_video:
        kernel = leaves["embedding/kernel"].shape
        if len(kernel) == 5:  # (t, h, w, C, D): '3d_conv'
            t, ph, pw = kernel[:3]
            inferred.update(video_tokenizer="tubelet", tubelet_size=t)
        elif len(kernel) == 4:  # (h, w, C, D): 'temporal_sampling', a 2-D conv on sampled frames
            ph, pw = kernel[:2]
            inferred.update(video_tokenizer="frame_sampling")
        else:
            raise CheckpointError(f"{source}: embedding/kernel has shape {kernel}; expected (t, h, w, 3, D) or "
                                  "(h, w, 3, D)")
        if ph != pw:
            raise CheckpointError(f"{source}: embedding/kernel has a {ph}x{pw} patch; only square patches are "
                                  "supported")
        inferred["patch_size"] = ph
    if has_audio:
        inferred["spec_patch"] = tuple(leaves["embedding_spectrogram/kernel"].shape[:2])

    for key, value in overrides.items():
        if key in inferred and _normal(value) != _normal(inferred[key]):
            raise ConfigError(f"model.{key}: the checkpoint says {inferred[key]!r}, override gives {value!r}")
    values = {**inferred, **overrides}
    if "fusion_layer" not in overrides:
        if len(modalities) == 1:
            values["fusion_layer"] = depth  # nothing to fuse
        elif depth == RELEASED_DEPTH:
            values["fusion_layer"] = RELEASED_FUSION_LAYER
            log.warning("%s: fusion_layer is not stored in a checkpoint; using %d (released ViT-B models)",
                        source, RELEASED_FUSION_LAYER)
        else:
            raise ConfigError(f"model.fusion_layer: not stored in the checkpoint {source} ({depth} layers): give "
                              "it (--fusion-layer)")
    if "multi_label" not in overrides and values["num_classes"] == AUDIOSET_CLASSES:
        values["multi_label"] = True

    if has_video:
        pos = leaves.get("Transformer/posembed_input/pos_embedding")
        if pos is None:
            raise CheckpointError(f"{source}: missing leaf Transformer/posembed_input/pos_embedding")
        tokens = pos.shape[1] - cls
        p = values["patch_size"]
        if values["video_tokenizer"] == "tubelet":
            frames = overrides.get("num_frames")
            steps, grid = _video_grid(tokens, p, None if frames is None else frames // values["tubelet_size"],
                                      overrides.get("image_size"), "tubelets", source)
            values.setdefault("num_frames", steps * values["tubelet_size"])
        else:
            steps, grid = _video_grid(tokens, p, overrides.get("sampled_frames"), overrides.get("image_size"),
                                      "sampled frames", source)
            values.setdefault("sampled_frames", steps)
            values.setdefault("num_frames", max(32, steps))  # the official config's clip length
        values.setdefault("image_size", grid * p)
    if has_audio:
        pos = leaves.get("Transformer/posembed_input_spectrogram/pos_embedding")
        if pos is None:
            raise CheckpointError(f"{source}: missing leaf Transformer/posembed_input_spectrogram/pos_embedding")
        time, mel = _audio_grid(pos.shape[1] - cls, values["spec_patch"], overrides.get("spec_frames"),
                                overrides.get("num_mel_bins"), source)
        values.setdefault("spec_frames", time * values["spec_patch"][0])
        values.setdefault("num_mel_bins", mel * values["spec_patch"][1])
    try:
        return MBTConfig(**values)
    except TypeError as e:
        raise ConfigError(f"model: {e}") from None


def _normal(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


# ==================================================================== mapping
def scenic_state(pool: LeafPool, cfg: MBTConfig) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Our parameters from the official leaves: (state, {our name: its leaf})."""
    state: dict[str, np.ndarray] = {}
    origins: dict[str, str] = {}

    def put(key: str, leaf: str, convert: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> None:
        state[key] = convert(pool.take(leaf))
        origins[key] = leaf

    names = {"video": ("embedding", "Transformer/posembed_input", "cls"),
             "audio": ("embedding_spectrogram", "Transformer/posembed_input_spectrogram",
                       "cls" if len(cfg.modalities) == 1 else "clsspectrogram")}
    for m in cfg.modalities:
        embedding, posemb, cls = names[m]
        if m == "audio":
            # (time, mel, C, D) -> (D, C, time, mel): the official 3 channels as they are (the model convolves the
            # mono spectrogram with their sum, as the official conv does on the tiled input)
            put(f"tokenizers.{m}.proj.weight", f"{embedding}/kernel", lambda k: k.transpose(3, 2, 0, 1))
        elif cfg.video_tokenizer == "tubelet":
            put(f"tokenizers.{m}.proj.weight", f"{embedding}/kernel", lambda k: k.transpose(4, 3, 0, 1, 2))
        else:
            put(f"tokenizers.{m}.proj.weight", f"{embedding}/kernel", lambda k: k.transpose(3, 2, 0, 1))
        put(f"tokenizers.{m}.proj.bias", f"{embedding}/bias")
        put(f"pos_embed.{m}", f"{posemb}/pos_embedding")
        if cfg.classifier == "token":
            put(f"cls_token.{m}", cls)

    for layer in range(cfg.depth):
        if cfg.share_weights:
            blocks = {f"encoder.shared.{layer}": f"Transformer/encoderblock_{layer}"}
        else:
            blocks = {}
            for m in cfg.modalities:
                name = f"Transformer/encoderblock_{layer}"
                if m == "audio" and f"{name}_spectrogram/LayerNorm_0/scale" in pool:
                    name += "_spectrogram"  # else a spectrogram-only model trained with share_encoder
                blocks[f"encoder.streams.{m}.{layer}"] = name
        for target, prefix in blocks.items():
            for key, value in flax_block(pool.take, prefix).items():
                state[f"{target}.{key}"] = value
                origins[f"{target}.{key}"] = f"{prefix}/..."

    if "bottleneck" in pool and len(cfg.modalities) == 1:
        # The documented exception to "every leaf used once": the official model creates the parameter whenever
        # use_bottleneck is set, but a single-modality model never runs fusion (the released spec / rgb models).
        pool.take("bottleneck")
        log.info("%s: leaf bottleneck dropped: a single-modality model never uses it (official behaviour)",
                 pool.source)
    elif "bottleneck" in pool:
        if cfg.fusion_layer >= cfg.depth:
            raise CheckpointError(f"{pool.source}: leaf bottleneck is unused with fusion_layer {cfg.fusion_layer} "
                                  f"(late fusion in a {cfg.depth}-layer model); give the fusion layer it was "
                                  "trained with")
        put("encoder.bottleneck", "bottleneck")
    put("norm.weight", "Transformer/encoder_norm/scale")
    put("norm.bias", "Transformer/encoder_norm/bias")
    if cfg.representation_size:
        put("pre_logits.weight", "pre_logits/kernel", dense_weight)
        put("pre_logits.bias", "pre_logits/bias")
    put("head.weight", "output_projection/kernel", dense_weight)
    put("head.bias", "output_projection/bias")
    return state, origins


def _check_float32(leaves: dict[str, np.ndarray], source: str) -> None:
    wrong = [k for k, v in leaves.items() if v.dtype != np.float32]
    if wrong:
        raise CheckpointError(f"{source}: leaf {wrong[0]} has dtype {leaves[wrong[0]].dtype}, expected float32 "
                              f"({len(wrong)} such leaves); converting would change the official numbers")


def load_scenic(path: str | Path, **overrides: Any) -> MBT:
    """An `MBT` with the weights of an official scenic checkpoint (TrainState, `params` or bare tree; xz-compressed
    or not); `overrides` are MBTConfig fields the tree does not store (`fusion_layer`, input sizes,
    `multi_label`, regularisation), see `infer_config`."""
    return _convert(path, checkpoint_bytes(path), overrides)


def _convert(path: str | Path, raw: bytes, overrides: dict[str, Any]) -> MBT:
    source = str(path)
    leaves = flatten(params_subtree(unpack_state(raw, source), source), source)
    _check_float32(leaves, source)
    cfg = infer_config(leaves, source, **overrides)
    model = MBT(cfg)
    pool = LeafPool(leaves, source)
    state, origins = scenic_state(pool, cfg)
    unused = pool.unused()
    if unused:
        raise CheckpointError(f"{source}: {len(unused)} leaves have no place in the model, first {unused[0]} "
                              f"({', '.join(unused[:5])})")
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise CheckpointError(f"{source}: the checkpoint has nothing for {missing[0]} ({len(missing)} parameters)")
    load_into(model, state, source, origins)
    log.info("converted %s: %d leaves -> %s", source, len(leaves), strict_dumps(cfg.to_dict()))
    return model.eval()


def scenic_preprocessing(cfg: MBTConfig) -> PreprocessorConfig:
    """What is known of the official input pipeline, as a `preprocessor.json`: rgb in [-1, 1], 25 fps at stride 2,
    100 spectrogram frames a second of 128 mel bins normalised with (x - 1.102) / 2.762. The official log-mel
    front end was never released; `logmel` is the closest of ours (see conversion.json's notes)."""
    from mbt.config import Config, DataConfig

    data = DataConfig(fps=25.0, frame_stride=2, normalisation="scenic", audio_frontend="logmel")
    return Config(model=cfg, data=data).preprocessor()


def convert_scenic(path: str | Path, out_dir: str | Path, **overrides: Any) -> Path:
    """Convert an official checkpoint into a `MBT.from_pretrained` directory (weights, config.json,
    preprocessor.json, and conversion.json recording the source and its sha256)."""
    raw = checkpoint_bytes(path)
    model = _convert(path, raw, overrides)
    out = model.save_pretrained(out_dir, preprocessing=scenic_preprocessing(model.config))
    record = {
        "source": str(Path(path).resolve()),
        "msgpack_sha256": hashlib.sha256(raw).hexdigest(),
        "official_names": {"rgb": "video", "spectrogram": "audio"},
        "notes": [
            "fusion_layer and the input sizes are not stored in a scenic checkpoint; see config.json",
            "audio front end: scenic's log-mel extraction is unreleased; preprocessor.json uses `logmel` with the "
            "official normalisation (1.102, 2.762): expect a small distribution shift",
        ],
    }
    write_json(out / CONVERSION_NAME, record, what="conversion record")
    return out


def overrides_from_scenic_config(path: str | Path) -> dict[str, Any]:
    """`fusion_layer` and input sizes from a JSON config: a scenic ConfigDict dump (`model.fusion_layer`,
    `dataset_configs.{num_frames, crop_size, spec_shape, num_spec_frames}`) or a fixture's config.json
    (`inputs.rgb.shape` (B,T,H,W,C), `inputs.spectrogram.shape` (B,time,mel,C))."""
    try:
        raw = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    model = raw.get("model", raw)
    out: dict[str, Any] = {}
    if "fusion_layer" in model:
        out["fusion_layer"] = int(model["fusion_layer"])
    data = raw.get("dataset_configs", {})
    if "num_frames" in data:
        out["num_frames"] = int(data["num_frames"])
    if "crop_size" in data:
        out["image_size"] = int(data["crop_size"])
    if "spec_shape" in data:
        out["spec_frames"] = int(data["spec_shape"][0]) * int(data.get("num_spec_frames", 1))
        out["num_mel_bins"] = int(data["spec_shape"][1])
    inputs = raw.get("inputs", {})
    if "shape" in inputs.get("rgb", {}):
        _, frames, height, width, _ = inputs["rgb"]["shape"]
        if height != width:
            raise ConfigError(f"{path}: inputs.rgb.shape {inputs['rgb']['shape']}: only square frames are supported")
        out.update(num_frames=int(frames), image_size=int(height))
    if "shape" in inputs.get("spectrogram", {}):
        out.update(spec_frames=int(inputs["spectrogram"]["shape"][1]),
                   num_mel_bins=int(inputs["spectrogram"]["shape"][2]))
    return out
