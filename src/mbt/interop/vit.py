"""Initialise MBT from a 2-D ViT (e.g. ImageNet-21k ViT-B/16), as the official `init_from` does.

Weights: Google's `.npz` (vit_jax / big_vision / scenic naming: `Transformer/encoderblock_i/...`, `embedding/kernel`,
`cls`, `Transformer/posembed_input/pos_embedding`, optionally under `opt/target/` or `params/`) or timm-named
`.safetensors` / `.pth` (`blocks.i.attn.qkv.weight`, `patch_embed.proj.weight`, `cls_token`, `pos_embed`, ...;
`.pth` is read with `torch.load(weights_only=True)`, never unpickled).

What goes where (official `mbt/model_utils.py` unless noted):
- every ViT block into the same layer of every stream (or of the shared stack); the final norm into `norm`;
  the head is not loaded (new classes: it stays zero);
- video tubelet kernel inflated from the 2-D patch kernel: `central_frame` (the 2-D kernel at time index t//2,
  zeros elsewhere), `average` (tiled / t) or `arp` (tiled, weighted by approximate rank pooling, Bilen et al.);
- audio patch kernel: the 2-D RGB kernel unchanged (3 input channels, as the official copy; the tokenizer
  convolves the mono spectrogram with their sum, which is what the official conv computes on the tiled input);
- positional embeddings: the CLS entry kept; video: the 2-D grid (bilinearly resized with
  `scipy.ndimage.zoom(order=1)` if the frame grid differs) tiled over time; audio: the grid resized to the
  spectrogram's (time, mel) patch grid; bottleneck tokens: the grid resized to a gh x gw grid of the bottleneck
  count (gh the largest divisor <= sqrt(n): 4 -> 2x2, 6 -> 2x3, a prime n -> 1 x n; the official code only
  handles counts where floor(sqrt(n)) divides n, where the two agree), the CLS entry prepended (token classifier);
- the ViT `cls` into every stream's CLS token. The official code leaves the audio CLS at zero because it looks
  for `cls_spectrogram` where the parameter is `clsspectrogram`: `audio_cls="zero"` reproduces that.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage
import torch

from mbt.interop.flax import LeafPool, flax_block, load_into, squarest_split
from mbt.interop.msgpack_tree import CheckpointError
from mbt.model import MBT
from mbt.model.config import MODALITY_KINDS

log = logging.getLogger(__name__)

VIDEO_KERNEL_INITS = ("central_frame", "average", "arp")
AUDIO_CLS_OPTIONS = ("copy", "zero")
NPZ_PREFIXES = ("", "opt/target/", "params/")
# Parameters of a plain ViT in timm's names (= our block names); anything else is not a plain ViT.
_TIMM_KEY = re.compile(r"cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)"
                       r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)")
_TIMM_IGNORED = re.compile(r"(head|pre_logits)(\..+)?")  # a classifier for other classes: never loaded
_BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
               "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
               "mlp.fc2.bias")


@dataclass
class VitWeights:
    """A ViT's parameters in timm's names, float32."""

    state: dict[str, torch.Tensor]
    source: str
    format: str  # "npz" | "timm"
    ignored: list[str] = field(default_factory=list)  # head / pre_logits / optimizer state
    num_heads: int | None = None  # known from .npz attention kernels (D, H, Dh); timm's fused qkv hides it

    @property
    def width(self) -> int:
        return self.state["patch_embed.proj.weight"].shape[0]

    @property
    def patch(self) -> int:
        return self.state["patch_embed.proj.weight"].shape[-1]

    @property
    def depth(self) -> int:
        return len({k.split(".")[1] for k in self.state if k.startswith("blocks.")})

    @property
    def has_cls(self) -> bool:
        return "cls_token" in self.state

    @property
    def grid(self) -> np.ndarray:
        """The positional embeddings of the patches as a (side, side, D) float32 grid."""
        pos = self.state["pos_embed"][0, 1 if self.has_cls else 0:]
        side = math.isqrt(pos.shape[0])
        return pos.reshape(side, side, -1).numpy()


# ==================================================================== reading
def _float32(name: str, value: torch.Tensor, source: str) -> torch.Tensor:
    if value.dtype in (torch.float16, torch.bfloat16):
        value = value.float()  # exact: every half value is a float32 value
    if value.dtype != torch.float32:
        raise CheckpointError(f"{source}: {name} has dtype {value.dtype}; expected float32 (or float16 / bfloat16)")
    if not bool(torch.isfinite(value).all()):
        raise CheckpointError(f"{source}: {name} holds {int((~torch.isfinite(value)).sum())} non-finite value(s): "
                              "the weight file is damaged")
    return value


def _npz_state(path: Path) -> VitWeights:
    source = str(path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    prefix = next((p for p in NPZ_PREFIXES if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise CheckpointError(f"{source}: no embedding/kernel (nor opt/target/ or params/ prefixed): not a ViT .npz")
    ignored = sorted(k for k in arrays if not k.startswith(prefix))  # e.g. optimizer state beside opt/target/
    leaves = {k[len(prefix):]: a for k, a in arrays.items() if k.startswith(prefix)}
    # big_vision with scan: one `encoderblock` whose arrays are stacked over layers
    for key in [k for k in leaves if k.startswith("Transformer/encoderblock/")]:
        stacked = leaves.pop(key)
        for layer, array in enumerate(stacked):
            leaves[key.replace("encoderblock/", f"encoderblock_{layer}/", 1)] = array
    if "pos_embedding" in leaves:  # big_vision keeps it at the top
        leaves["Transformer/posembed_input/pos_embedding"] = leaves.pop("pos_embedding")
    pool = LeafPool(leaves, source)

    def take(key: str) -> torch.Tensor:
        array = pool.take(key)
        if array.dtype.kind != "f":  # e.g. bfloat16 stored as raw 2-byte records
            raise CheckpointError(f"{source}: {prefix}{key} has dtype {array.dtype}; expected float32")
        return _float32(f"{prefix}{key}", torch.from_numpy(np.array(array)), source)

    vit_jax = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in pool
    names = (dict(attention="MultiHeadDotProductAttention_1", norms=("LayerNorm_0", "LayerNorm_2"), mlp="MlpBlock_3")
             if vit_jax else {})
    state = {"patch_embed.proj.weight": take("embedding/kernel").permute(3, 2, 0, 1).contiguous(),  # -> (D, 3, p, p)
             "patch_embed.proj.bias": take("embedding/bias"),
             "pos_embed": take("Transformer/posembed_input/pos_embedding"),
             "norm.weight": take("Transformer/encoder_norm/scale"),
             "norm.bias": take("Transformer/encoder_norm/bias")}
    if "cls" in pool:
        state["cls_token"] = take("cls")
    layers = sorted({int(m.group(1)) for k in leaves if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    for layer in layers:
        block = flax_block(lambda key: take(key).numpy(), f"Transformer/encoderblock_{layer}", **names)
        state.update({f"blocks.{layer}.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in block.items()})
    attention = names.get("attention", "MultiHeadDotProductAttention_0")
    num_heads = leaves[f"Transformer/encoderblock_0/{attention}/query/kernel"].shape[1] if layers else None
    for key in pool.unused():
        if key.split("/")[0] in ("head", "pre_logits"):
            pool.take(key)
            ignored.append(f"{prefix}{key}")
    unknown = pool.unused()
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} arrays are not part of a plain ViT, first {prefix}{unknown[0]}")
    return VitWeights(state, source, "npz", sorted(ignored), num_heads)


def _timm_state(path: Path) -> VitWeights:
    source = str(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: Any = load_file(str(path))
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several kinds (UnpicklingError, RuntimeError, ...) for a refused file
            raise CheckpointError(f"{source}: cannot be read with torch.load(weights_only=True): {e}") from None
        for wrapper in ("model", "state_dict"):
            if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{source}: expected a state dict of tensors")
    state, ignored = {}, []
    for key, value in raw.items():
        if _TIMM_KEY.fullmatch(key):
            state[key] = _float32(key, value, source)
        elif _TIMM_IGNORED.fullmatch(key):
            ignored.append(key)
        else:
            raise CheckpointError(f"{source}: {key} is not part of a plain timm ViT (patch_embed, cls_token, "
                                  "pos_embed, blocks, norm, head)")
    return VitWeights(state, source, "timm", sorted(ignored))


def load_vit_weights(path: str | Path) -> VitWeights:
    """A 2-D ViT's parameters in timm's names, from `.npz`, `.safetensors` or `.pth` / `.pt` / `.bin`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ViT weight file")
    vit = _npz_state(path) if path.suffix == ".npz" else _timm_state(path)
    for key in ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "norm.weight", "norm.bias"):
        if key not in vit.state:
            raise CheckpointError(f"{path}: missing {key}")
    for layer in range(vit.depth):
        for key in _BLOCK_KEYS:
            if f"blocks.{layer}.{key}" not in vit.state:
                raise CheckpointError(f"{path}: missing blocks.{layer}.{key}")
    kernel = vit.state["patch_embed.proj.weight"]
    if kernel.ndim != 4 or kernel.shape[1] != 3 or kernel.shape[2] != kernel.shape[3]:
        raise CheckpointError(f"{path}: patch kernel of shape {tuple(kernel.shape)}; expected (D, 3, p, p)")
    patches = vit.state["pos_embed"].shape[1] - (1 if vit.has_cls else 0)
    if math.isqrt(patches) ** 2 != patches:
        raise CheckpointError(f"{path}: pos_embed has {patches} patch positions, not a square grid")
    return vit


# ==================================================================== surgery
def average_arp_weights(t: int) -> np.ndarray:
    """Approximate rank pooling weights (Bilen et al., PAMI 2017, eq. 3) divided by t, as ViViT's
    `average_arp_frame_initializer`: alpha_i = 2(t - i + 1) - (t + 1)(H_t - H_{i-1}), H_i the harmonic numbers."""
    i = np.arange(1, t + 1)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / i)])
    return (2 * (t - i + 1) - (t + 1) * (harmonic[-1] - harmonic[:-1])) / t


def inflate_kernel(kernel: torch.Tensor, t: int, method: str) -> torch.Tensor:
    """A 2-D patch kernel (D, C, p, p) -> a tubelet kernel (D, C, t, p, p)."""
    if method == "central_frame":
        out = kernel.new_zeros(kernel.shape[:2] + (t,) + kernel.shape[2:])
        out[:, :, t // 2] = kernel
        return out
    if method == "average":
        return kernel.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
    if method == "arp":
        weights = torch.from_numpy(average_arp_weights(t)).view(1, 1, t, 1, 1)
        return (kernel.unsqueeze(2).double() * weights).float()
    raise ValueError(f"video_kernel_init: must be one of {VIDEO_KERNEL_INITS}, got {method!r}")


def resize_grid(grid: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(h, w, D) -> (rows, cols, D) with `scipy.ndimage.zoom(order=1)` (the official bilinear resize)."""
    if grid.shape[:2] == (rows, cols):
        return grid
    return scipy.ndimage.zoom(grid, (rows / grid.shape[0], cols / grid.shape[1], 1), order=1)


def init_from_vit(model: MBT, path: str | Path, *, video_kernel_init: str = "central_frame",
                  audio_cls: str = "copy") -> dict[str, Any]:
    """Load a 2-D ViT into `model` (in place) and report what was loaded and what was left at initialisation."""
    if video_kernel_init not in VIDEO_KERNEL_INITS:
        raise ValueError(f"video_kernel_init: must be one of {VIDEO_KERNEL_INITS}, got {video_kernel_init!r}")
    if audio_cls not in AUDIO_CLS_OPTIONS:
        raise ValueError(f"audio_cls: must be one of {AUDIO_CLS_OPTIONS}, got {audio_cls!r}")
    vit = load_vit_weights(path)
    cfg = model.config
    source = vit.source

    def fail(why: str) -> None:
        raise CheckpointError(f"{source}: {why}")

    if vit.width != cfg.width:
        fail(f"ViT width {vit.width} does not match model.width {cfg.width}")
    if vit.num_heads is not None and vit.num_heads != cfg.num_heads:
        fail(f"ViT has {vit.num_heads} heads, model.num_heads is {cfg.num_heads}")
    mlp = vit.state["blocks.0.mlp.fc1.weight"].shape[0] if vit.depth else cfg.mlp_dim
    if mlp != cfg.mlp_dim:
        fail(f"ViT MLP width {mlp} does not match model.mlp_dim {cfg.mlp_dim}")
    if cfg.classifier == "token" and not vit.has_cls:
        fail("the ViT has no class token, model.classifier is 'token' (use 'gap')")

    state: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for layer in range(min(vit.depth, cfg.depth)):
        targets = ([f"encoder.shared.{layer}"] if cfg.share_weights
                   else [f"encoder.streams.{m}.{layer}" for m in cfg.modalities])
        for target in targets:
            state.update({f"{target}.{k}": vit.state[f"blocks.{layer}.{k}"] for k in _BLOCK_KEYS})
    if vit.depth < cfg.depth:
        notes.append(f"layers {vit.depth}..{cfg.depth - 1} left at initialisation (the ViT has {vit.depth})")
    elif vit.depth > cfg.depth:
        notes.append(f"ViT blocks {cfg.depth}..{vit.depth - 1} not used (the model has {cfg.depth} layers)")
    state["norm.weight"], state["norm.bias"] = vit.state["norm.weight"], vit.state["norm.bias"]

    kernel, bias = vit.state["patch_embed.proj.weight"], vit.state["patch_embed.proj.bias"]
    cls_pos = vit.state["pos_embed"][:, :1]
    grid = vit.grid

    def with_cls(tokens: np.ndarray) -> torch.Tensor:
        tokens = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32)).reshape(1, -1, cfg.width)
        return torch.cat([cls_pos, tokens], dim=1) if cfg.classifier == "token" else tokens

    if cfg.stem == "conv":
        notes.append("tokenizers left at initialisation (model.stem: conv; the ViT has a linear patch embedding)")
    for m in cfg.modalities:
        kind, channels = MODALITY_KINDS[m]
        token_grid = cfg.token_grid(m)
        if kind == "audio":
            if tuple(cfg.spec_patch) != (vit.patch, vit.patch):
                fail(f"ViT patch {vit.patch}x{vit.patch} does not match model.spec_patch {tuple(cfg.spec_patch)}")
            if cfg.stem == "patch":
                state[f"tokenizers.{m}.proj.weight"] = kernel  # the RGB kernel as it is (official, 3 channels)
                state[f"tokenizers.{m}.proj.bias"] = bias
            state[f"pos_embed.{m}"] = with_cls(resize_grid(grid, *token_grid))
        else:
            if cfg.patch_size != vit.patch:
                fail(f"ViT patch {vit.patch} does not match model.patch_size {cfg.patch_size}")
            if cfg.stem == "conv":
                pass  # the stem has no counterpart in the ViT (noted once, above)
            elif channels == 3:
                state[f"tokenizers.{m}.proj.weight"] = (inflate_kernel(kernel, cfg.tubelet_size, video_kernel_init)
                                                        if cfg.video_tokenizer == "tubelet" else kernel)
                state[f"tokenizers.{m}.proj.bias"] = bias
            else:
                notes.append(f"{m}: tokenizer left at initialisation (the ViT kernel reads RGB, {m} has "
                             f"{channels} channels)")
            frame = resize_grid(grid, *token_grid[1:])
            state[f"pos_embed.{m}"] = with_cls(np.tile(frame[None], (token_grid[0], 1, 1, 1)))
        if cfg.classifier == "token":
            zero = kind == "audio" and audio_cls == "zero"
            state[f"cls_token.{m}"] = torch.zeros_like(vit.state["cls_token"]) if zero else vit.state["cls_token"]
    if model.encoder.bottleneck is not None:
        state["encoder.bottleneck"] = with_cls(resize_grid(grid, *squarest_split(cfg.num_bottlenecks)))

    load_into(model, state, source)
    report = {
        "source": source, "format": vit.format,
        "vit": {"depth": vit.depth, "width": vit.width, "patch": vit.patch, "grid": list(grid.shape[:2]),
                "class_token": vit.has_cls},
        "video_kernel_init": video_kernel_init, "audio_cls": audio_cls,
        "loaded": sorted(state), "left_at_init": sorted(set(model.state_dict()) - set(state)),
        "ignored": vit.ignored, "notes": notes,
    }
    for note in notes:
        log.warning("%s: %s", source, note)
    return report


def summarize(report: dict[str, Any]) -> str:
    """A few lines for people: what came from where, and what was left at initialisation."""
    vit = report["vit"]
    lines = [f"ViT {report['format']} {report['source']}: {vit['depth']} blocks, width {vit['width']}, patch "
             f"{vit['patch']}, {vit['grid'][0]}x{vit['grid'][1]} grid",
             f"loaded {len(report['loaded'])} tensors (video kernel: {report['video_kernel_init']}, audio CLS: "
             f"{report['audio_cls']})",
             f"left at initialisation: {', '.join(report['left_at_init']) or 'nothing'}",
             f"ignored in the file: {', '.join(report['ignored']) or 'nothing'}"]
    return "\n".join(lines + report["notes"])
