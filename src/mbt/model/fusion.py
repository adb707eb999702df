"""Fusion as data: a per-layer schedule of how the streams exchange information, executed by one encoder loop.

    separate    each stream runs its own block on its own tokens                          (layers < fusion_layer)
    cross       vanilla fusion, separate weights: each stream's tokens query the tokens of *all* streams,
                keys/values of the other streams computed with this stream's block (LayerNorm + K/V only)
    joint       vanilla fusion, shared weights: one block over the concatenated sequence
    bottleneck  each stream's block runs on [its tokens; bottleneck]; the streams' bottleneck outputs are averaged

`cross` gives exactly the official outputs (scenic runs every block over all tokens and keeps its own part),
at roughly half the cost. Adding a fusion kind is one schedule entry and one layer function below.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mbt.model.blocks import Block
from mbt.model.config import MBTConfig

Tokens = dict[str, torch.Tensor]
LayerFn = Callable[[dict[str, Block], Tokens, "torch.Tensor | None"], tuple[Tokens, "torch.Tensor | None"]]


def fusion_schedule(cfg: MBTConfig) -> list[str]:
    """The kind of every layer, e.g. 12 layers, bottleneck at 8 -> 8 x 'separate' + 4 x 'bottleneck'."""
    if cfg.fusion == "bottleneck":
        fused = "bottleneck"
    else:
        fused = "joint" if cfg.share_weights else "cross"
    return ["separate" if layer < cfg.fusion_layer else fused for layer in range(cfg.depth)]


def _separate(blocks: dict[str, Block], tokens: Tokens, bottleneck: torch.Tensor | None):
    return {m: blocks[m](x) for m, x in tokens.items()}, bottleneck


def _cross(blocks: dict[str, Block], tokens: Tokens, bottleneck: torch.Tensor | None):
    # Every stream reads the pre-layer tokens of the others (a parallel update, as the official code).
    out = {}
    for m, x in tokens.items():
        others = [y for n, y in tokens.items() if n != m]
        out[m] = blocks[m](x, context=torch.cat(others, dim=1) if others else None)
    return out, bottleneck


def _joint(blocks: dict[str, Block], tokens: Tokens, bottleneck: torch.Tensor | None):
    names = list(tokens)
    block = blocks[names[0]]  # shared weights: every stream maps to the same block
    joint = block(torch.cat([tokens[m] for m in names], dim=1))
    return dict(zip(names, joint.split([tokens[m].shape[1] for m in names], dim=1))), bottleneck


def _bottleneck(blocks: dict[str, Block], tokens: Tokens, bottleneck: torch.Tensor | None):
    assert bottleneck is not None
    n_bottleneck = bottleneck.shape[1]
    out, updates = {}, []
    for m, x in tokens.items():  # every stream reads the same bottleneck (parallel, not sequential)
        y = blocks[m](torch.cat([x, bottleneck], dim=1))
        out[m], update = y[:, :-n_bottleneck], y[:, -n_bottleneck:]
        updates.append(update)
    # The streams' copies are averaged after every layer: the only path between the streams.
    return out, torch.stack(updates, dim=0).mean(dim=0)


LAYER_FUNCTIONS: dict[str, LayerFn] = {
    "separate": _separate,
    "cross": _cross,
    "joint": _joint,
    "bottleneck": _bottleneck,
}


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
        if cfg.fusion == "bottleneck" and cfg.fusion_layer < cfg.depth:
            # No positional embedding on bottleneck tokens; normal(0.02) init as the official code.
            self.bottleneck = nn.Parameter(torch.randn(1, cfg.num_bottleneck_tokens, cfg.width) * 0.02)

    def blocks_at(self, layer: int) -> dict[str, Block]:
        if self.share_weights:
            return {m: self.shared[layer] for m in self.modalities}
        return {m: self.streams[m][layer] for m in self.modalities}

    def forward(self, tokens: Tokens, *, fuse: bool = True,
                capture: Callable[[int, str, Tokens, torch.Tensor | None], None] | None = None) -> Tokens:
        """Runs the schedule over the streams present in `tokens` (in `modalities` order).

        `fuse=False` runs every layer as `separate` (the official `test_with_bottlenecks=False`).
        `capture(layer, kind, tokens, bottleneck)` is called after every layer (analysis, parity tests).
        """
        tokens = {m: tokens[m] for m in self.modalities if m in tokens}
        batch = next(iter(tokens.values())).shape[0]
        bottleneck = None
        for layer, kind in enumerate(self.schedule):
            if not fuse:
                kind = "separate"
            if kind == "bottleneck" and bottleneck is None:
                bottleneck = self.bottleneck.expand(batch, -1, -1)
            tokens, bottleneck = LAYER_FUNCTIONS[kind](self.blocks_at(layer), tokens, bottleneck)
            if capture is not None:
                capture(layer, kind, tokens, bottleneck)
        return tokens  # the bottleneck is dropped at the end, as in the official code
