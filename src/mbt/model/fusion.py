"""Fusion as data: a per-layer schedule of how the streams exchange information, executed by one encoder loop.

    separate    each stream runs its own block on its own tokens                          (layers < fusion_layer)
    cross       vanilla fusion, separate weights: each stream's tokens query the tokens of *all* streams,
                keys/values of the other streams computed with this stream's block (LayerNorm + K/V only)
    joint       vanilla fusion, shared weights: one block over the concatenated sequence
    bottleneck  each stream's block runs on [its tokens; bottleneck]; the streams' bottleneck outputs are averaged

`cross` gives exactly the official outputs (scenic runs every block over all tokens and keeps its own part),
at roughly half the cost. Each kind is a `LayerKind`: its layer function, and a description of which tokens each
block's queries and keys are, which analysis (attention maps, rollout, FLOP attribution) reads instead of switching
on the names. Adding a fusion kind is one `LayerKind` entry and its layer function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mbt.model.blocks import Block
from mbt.model.config import MBTConfig

Tokens = dict[str, torch.Tensor]
# Per-sample presence of the streams, {stream: (B,) bool}; None (or a stream left out): present in every sample.
Mask = "dict[str, torch.Tensor] | None"
LayerFn = Callable[[dict[str, Block], Tokens, "torch.Tensor | None", Mask], tuple[Tokens, "torch.Tensor | None"]]


def fusion_schedule(cfg: MBTConfig) -> list[str]:
    """The kind of every layer, e.g. 12 layers, bottleneck at 8 -> 8 x 'separate' + 4 x 'bottleneck'.

    One stream is a plain ViT whatever the fusion setting (official: `len(modality_fusion) == 1`)."""
    if len(cfg.modalities) == 1:
        return ["separate"] * cfg.depth
    if cfg.fusion == "bottleneck":
        fused = "bottleneck"
    else:
        fused = "joint" if cfg.share_weights else "cross"
    return ["separate" if layer < cfg.fusion_layer else fused for layer in range(cfg.depth)]


def _token_mask(tokens: Tokens, names: list[str], mask: Mask) -> torch.Tensor | None:
    """(B, keys) bool over the concatenated tokens of `names`: a masked stream's tokens are no keys."""
    if mask is None or not any(m in mask for m in names):
        return None
    parts = []
    for m in names:
        x = tokens[m]
        present = mask[m] if m in mask else torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        parts.append(present[:, None].expand(-1, x.shape[1]))
    return torch.cat(parts, dim=1)


def _separate(blocks: dict[str, Block], tokens: Tokens, bottleneck: torch.Tensor | None, mask: Mask = None):
    return {m: blocks[m](x) for m, x in tokens.items()}, bottleneck


def _cross(blocks: dict[str, Block], tokens: Tokens, bottleneck: torch.Tensor | None, mask: Mask = None):
    # Every stream reads the pre-layer tokens of the others (a parallel update, as the official code).
    out = {}
    for m, x in tokens.items():
        others = [n for n in tokens if n != m]
        context = torch.cat([tokens[n] for n in others], dim=1) if others else None
        key_mask = _token_mask(tokens, [m] + others, mask)  # a stream missing from a sample is not read
        out[m] = blocks[m](x, context=context, key_mask=key_mask)
    return out, bottleneck


def _joint(blocks: dict[str, Block], tokens: Tokens, bottleneck: torch.Tensor | None, mask: Mask = None):
    names = list(tokens)
    block = blocks[names[0]]  # shared weights: every stream maps to the same block
    joint = block(torch.cat([tokens[m] for m in names], dim=1), key_mask=_token_mask(tokens, names, mask))
    return dict(zip(names, joint.split([tokens[m].shape[1] for m in names], dim=1))), bottleneck


def _bottleneck(blocks: dict[str, Block], tokens: Tokens, bottleneck: torch.Tensor | None, mask: Mask = None):
    assert bottleneck is not None
    n_bottleneck = bottleneck.shape[1]
    out, updates = {}, {}
    for m, x in tokens.items():  # every stream reads the same bottleneck (parallel, not sequential)
        y = blocks[m](torch.cat([x, bottleneck], dim=1))
        # One split, not two slices: its backward writes the block's gradient once (a cat of both parts), where two
        # slices each zero-fill a full-size gradient, copy their part in, and autograd then adds the two.
        out[m], updates[m] = y.split([x.shape[1], n_bottleneck], dim=1)
    # The streams' copies are averaged after every layer: the only path between the streams.
    if mask is None or not any(m in mask for m in updates):
        return out, torch.stack(list(updates.values()), dim=0).mean(dim=0)
    # ... over the streams each sample has: a missing stream's update is no part of the average
    total = count = 0
    for m, update in updates.items():
        if m in mask:
            total = total + torch.where(mask[m][:, None, None], update, torch.zeros_like(update))
            count = count + mask[m].to(update.dtype)
        else:
            total, count = total + update, count + 1
    return out, total / count[:, None, None]


BOTTLENECK = "bottleneck"  # the name of the bottleneck tokens' segment in a layout
JOINT = "joint"  # the name of the one block call of a shared-weights layer
Segments = list[tuple[str, int]]  # (stream name or BOTTLENECK, number of tokens), in sequence order


@dataclass(frozen=True)
class LayerKind:
    """One kind of layer: how it runs, and the layout of its blocks' attention.

    `calls(present)` names the block calls of a layer in the order the encoder makes them (a stream name, or JOINT
    for one call over all streams); `layout(call, present, num_tokens, num_bottleneck)` gives that call's
    (query segments, key segments). `averages_bottleneck`: the streams' bottleneck rows are averaged afterwards.
    """

    name: str
    run: LayerFn
    calls: Callable[[tuple[str, ...]], list[str]]
    layout: Callable[[str, tuple[str, ...], dict[str, int], int], tuple[Segments, Segments]]
    averages_bottleneck: bool = False


def _per_stream(present: tuple[str, ...]) -> list[str]:
    return list(present)


def _own_layout(call, present, num_tokens, num_bottleneck):
    own = [(call, num_tokens[call])]
    return own, own


def _cross_layout(call, present, num_tokens, num_bottleneck):
    own = [(call, num_tokens[call])]
    return own, own + [(m, num_tokens[m]) for m in present if m != call]


def _joint_layout(call, present, num_tokens, num_bottleneck):
    every = [(m, num_tokens[m]) for m in present]
    return every, every


def _bottleneck_layout(call, present, num_tokens, num_bottleneck):
    both = [(call, num_tokens[call]), (BOTTLENECK, num_bottleneck)]
    return both, both


LAYER_KINDS: dict[str, LayerKind] = {kind.name: kind for kind in (
    LayerKind("separate", _separate, _per_stream, _own_layout),
    LayerKind("cross", _cross, _per_stream, _cross_layout),
    LayerKind(JOINT, _joint, lambda present: [JOINT], _joint_layout),
    LayerKind(BOTTLENECK, _bottleneck, _per_stream, _bottleneck_layout, averages_bottleneck=True),
)}


def describe_fusion(cfg: MBTConfig) -> str:
    """One human description of a fusion setting, for every command that prints one."""
    if len(cfg.modalities) == 1:
        return f"one stream ({cfg.modalities[0]}), no fusion"
    if cfg.fusion_layer == cfg.depth:
        return f"late fusion (streams apart in all {cfg.depth} layers, logits averaged)"
    where = "early" if cfg.fusion_layer == 0 else "mid"
    text = f"{where} {cfg.fusion} fusion from layer {cfg.fusion_layer} of {cfg.depth}"
    if cfg.fusion == "bottleneck":
        cls_slot = cfg.num_bottleneck_tokens - cfg.num_bottlenecks
        text += f", {cfg.num_bottlenecks} bottleneck tokens" + (" (+1 CLS slot, as the official code)"
                                                               if cls_slot else "")
    if cfg.share_weights:
        text += ", shared weights"
    return text


class FusionEncoder(nn.Module):
    """The streams' transformer blocks plus the schedule that wires them."""

    def __init__(self, cfg: MBTConfig):
        super().__init__()
        self.schedule = fusion_schedule(cfg)
        self.modalities = tuple(cfg.modalities)
        self.share_weights = cfg.share_weights

        def make_blocks() -> nn.ModuleList:
            # stochastic depth rising linearly: layer l drops with l / (L - 1) * rate (official)
            rates = [cfg.drop_path_rate * layer / max(cfg.depth - 1, 1) for layer in range(cfg.depth)]
            return nn.ModuleList(
                Block(cfg.width, cfg.num_heads, cfg.mlp_dim, drop_path=rate, drop_path_rescale=cfg.drop_path_rescale,
                      dropout=cfg.dropout, attention_dropout=cfg.attention_dropout)
                for rate in rates)

        if cfg.share_weights:
            self.shared = make_blocks()
        else:
            self.streams = nn.ModuleDict({m: make_blocks() for m in cfg.modalities})
        self.bottleneck = None
        if "bottleneck" in self.schedule:
            # No positional embedding on bottleneck tokens; normal(0.02) init as the official code.
            self.bottleneck = nn.Parameter(torch.randn(1, cfg.num_bottleneck_tokens, cfg.width) * 0.02)

    def block_owners(self, prefix: str = "") -> dict[str, str]:
        """Qualified module name of every block -> the stream it belongs to (JOINT for shared blocks)."""
        if self.share_weights:
            return {f"{prefix}shared.{layer}": JOINT for layer in range(len(self.schedule))}
        return {f"{prefix}streams.{m}.{layer}": m for m in self.modalities for layer in range(len(self.schedule))}

    def blocks_at(self, layer: int) -> dict[str, Block]:
        if self.share_weights:
            return {m: self.shared[layer] for m in self.modalities}
        return {m: self.streams[m][layer] for m in self.modalities}

    def forward(self, tokens: Tokens, *, fuse: bool = True,
                capture: Callable[[int, str, Tokens, torch.Tensor | None], None] | None = None,
                mask: Mask = None) -> Tokens:
        """Runs the schedule over the streams present in `tokens` (in `modalities` order).

        `fuse=False` runs every layer as `separate` (the official `test_with_bottlenecks=False`).
        `capture(layer, kind, tokens, bottleneck)` is called after every layer (analysis, parity tests).
        `mask` {stream: (B,) bool}: a stream's tokens in the samples where it is False reach no other stream.
        """
        tokens = {m: tokens[m] for m in self.modalities if m in tokens}
        batch = next(iter(tokens.values())).shape[0]
        bottleneck = None
        for layer, kind in enumerate(self.schedule):
            if not fuse:
                kind = "separate"
            if kind == "bottleneck" and bottleneck is None:
                bottleneck = self.bottleneck.expand(batch, -1, -1)
            tokens, bottleneck = LAYER_KINDS[kind].run(self.blocks_at(layer), tokens, bottleneck, mask)
            if capture is not None:
                capture(layer, kind, tokens, bottleneck)
        return tokens  # the bottleneck is dropped at the end, as in the official code
