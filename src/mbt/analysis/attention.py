"""Attention inside the fusion: what the CLS and bottleneck tokens look at, layer by layer, and attention rollout.

Capture. `attention_probes(model, layers)` switches the chosen layers' attention modules to the explicit
softmax(QK^T / sqrt(d)) path and hooks the probe their probabilities pass through, switching both back afterwards;
`capture_attention` runs one forward pass under it and returns every captured block's head-averaged probabilities
with the layout of its queries and keys. The layout is what each fusion kind says of itself
(`mbt.model.fusion.LAYER_KINDS`):

    separate    stream m's block: queries = keys = [m]
    cross       stream m's block: queries [m], keys [m; the other streams, in modality order]
    joint       one shared block: queries = keys = [all streams, in modality order]
    bottleneck  stream m's block: queries = keys = [m; bottleneck]

A stream's segment starts with its CLS token (token classifier), then its patches in tokenizer order (video:
time, then rows, then columns; spectrogram: time, then mel). In a bottleneck layer the rows of the bottleneck tokens
(the last `num_bottleneck_tokens` rows of each stream's block) are what the bottleneck reads from that stream.

Rollout (Abnar & Zuidema 2020). Each layer's head-averaged attention Ā is placed in the joint sequence
[every stream's tokens, in modality order; bottleneck tokens] and Â = (Ā + I) with rows renormalised (the identity
stands for the residual connection). Separate layers are block diagonal; cross and joint layers give each stream's
rows over the keys it attends to; in a bottleneck layer each stream's rows cover [its tokens; bottleneck], and the
bottleneck rows are the *mean* of the streams' bottleneck rows, because the model averages the streams' bottleneck
outputs. Rows no block updates (the bottleneck before the fusion layer) are identity. The rollout of a query is its
row of Â_L ... Â_1: how much of that token's final state flows from each input token along attention paths. A
stream's CLS row thus also puts mass on the *other* stream's patches when (and only when) fusion routes
information between them; that share is reported. The bottleneck's own learned initial tokens keep the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mbt.model import MBT, MBTOutput
from mbt.model.blocks import Attention
from mbt.model.fusion import BOTTLENECK, LAYER_KINDS
from mbt.model.tokenizers import sampled_frame_indices

SPECTROGRAM_FRAMES_PER_S = 100.0  # both audio front ends use a 10 ms frame shift (mbt.media.preprocess)


@dataclass(frozen=True)
class Segment:
    """Positions [start, stop) of one stream's tokens (or the bottleneck's) in a sequence."""

    name: str
    start: int
    stop: int


def _segments(parts: Iterable[tuple[str, int]]) -> list[Segment]:
    segments, start = [], 0
    for name, length in parts:
        segments.append(Segment(name, start, start + length))
        start += length
    return segments


@dataclass
class BlockAttention:
    """One block's attention at one layer: head-averaged probabilities (batch, queries, keys)."""

    layer: int
    kind: str  # the schedule entry: separate / cross / joint / bottleneck
    block: str  # the stream whose block ran, or "joint" (mbt.model.fusion.JOINT)
    probs: torch.Tensor
    queries: list[Segment]
    keys: list[Segment]


@dataclass
class AttentionCapture:
    output: MBTOutput
    blocks: list[BlockAttention]
    modalities: tuple[str, ...]  # the streams that were run, in model order
    num_tokens: dict[str, int]  # per stream, CLS included
    token_grids: dict[str, tuple[int, ...]]
    has_cls: bool  # token classifier: each stream's first token is its CLS
    num_bottleneck_tokens: int  # 0 without bottleneck fusion
    depth: int
    schedule: list[str] = field(default_factory=list)

    def at(self, layer: int) -> list[BlockAttention]:
        return [b for b in self.blocks if b.layer == layer]

    def patches(self, segment: Segment) -> slice:
        """The patch positions of a stream's segment (its CLS token left out)."""
        return slice(segment.start + (1 if self.has_cls else 0), segment.stop)

    def query_attention(self, block: BlockAttention, query: str, target: str) -> torch.Tensor | None:
        """Attention of `query` to the patches of stream `target` in `block`: (batch, patches), or None when the
        block has no such query or key.

        `query` is a stream name (its CLS token; with the gap classifier, the mean over the stream's tokens, which is
        what that classifier pools) or "bottleneck" (the mean over the bottleneck tokens).
        """
        rows = next((s for s in block.queries if s.name == query), None)
        columns = next((s for s in block.keys if s.name == target), None)
        if rows is None or columns is None:
            return None
        if query == BOTTLENECK or not self.has_cls:
            weights = block.probs[:, rows.start:rows.stop].mean(dim=1)
        else:
            weights = block.probs[:, rows.start]
        return weights[:, self.patches(columns)]


def attention_modules(model: MBT, layers: Iterable[int]) -> dict[int, tuple[int, Attention]]:
    """id(module) -> (layer, module) for the attention modules of `layers` (a shared block appears once)."""
    modules = {}
    for layer in layers:
        for block in model.encoder.blocks_at(layer).values():
            modules[id(block.attn)] = (layer, block.attn)
    return modules


def check_layers(model: MBT, layers: Iterable[int]) -> list[int]:
    layers = sorted(set(layers))
    bad = [layer for layer in layers if not 0 <= layer < model.config.depth]
    if bad:
        raise ValueError(f"layer {bad[0]} does not exist: the model has layers 0..{model.config.depth - 1}")
    return layers


@contextmanager
def attention_probes(model: MBT, layers: Iterable[int] | None = None
                     ) -> Iterator[list[tuple[int, Attention, torch.Tensor]]]:
    """Inside the `with` statement, every call of an attention module of `layers` (default: all) appends
    (layer, module, probabilities (batch, heads, queries, keys)) to the yielded list, in call order. The modules
    compute attention the explicit way meanwhile, which gives the same outputs as the fused kernel up to rounding;
    afterwards they are switched back and unhooked."""
    layers = check_layers(model, range(model.config.depth) if layers is None else layers)
    modules = attention_modules(model, layers)
    records: list[tuple[int, Attention, torch.Tensor]] = []
    handles = []
    for layer, module in modules.values():
        def record(probe, args, output, layer=layer, module=module) -> None:
            records.append((layer, module, output.detach()))

        handles.append(module.probe.register_forward_hook(record))
        module.fused = False
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
        for _, module in modules.values():
            module.fused = True


@torch.no_grad()
def capture_attention(model: MBT, inputs: dict[str, torch.Tensor], layers: Iterable[int] | None = None
                      ) -> AttentionCapture:
    """One forward pass of `model` on `inputs` (as `model(**inputs)` takes them) that records the head-averaged
    attention of every block of `layers` (default: all; the rollout needs all)."""
    cfg = model.config
    layers = check_layers(model, range(cfg.depth) if layers is None else layers)
    present = tuple(m for m in cfg.modalities if inputs.get(m) is not None)
    calls: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    with attention_probes(model, layers) as records:
        output = model(**inputs)
        for layer, _, probs in records:
            calls[layer].append(probs.mean(dim=1))  # all heads of every layer of mbt-base would not fit in memory
        records.clear()

    num_bottleneck = cfg.num_bottleneck_tokens if model.encoder.bottleneck is not None else 0
    num_tokens = {m: cfg.num_tokens(m) for m in present}
    capture = AttentionCapture(output, [], present, num_tokens, {m: cfg.token_grid(m) for m in present},
                               cfg.classifier == "token", num_bottleneck, cfg.depth, list(model.encoder.schedule))
    for layer in layers:
        kind = model.encoder.schedule[layer]
        streams = LAYER_KINDS[kind].calls(present)
        if len(calls[layer]) != len(streams):
            raise RuntimeError(f"layer {layer} ({kind}): expected {len(streams)} attention calls, got "
                               f"{len(calls[layer])}; has the fusion encoder changed?")
        for stream, probs in zip(streams, calls[layer]):
            queries, keys = (_segments(parts) for parts in
                             LAYER_KINDS[kind].layout(stream, present, num_tokens, num_bottleneck))
            expected = (queries[-1].stop, keys[-1].stop)
            if tuple(probs.shape[1:]) != expected:
                raise RuntimeError(f"layer {layer} ({kind}, {stream}): attention of shape {tuple(probs.shape)}, "
                                   f"expected (batch, {expected[0]}, {expected[1]})")
            capture.blocks.append(BlockAttention(layer, kind, stream, probs, queries, keys))
    return capture


def attention_rollout(capture: AttentionCapture) -> tuple[torch.Tensor, list[Segment]]:
    """Rollout rows of every stream's query token (its CLS; the mean token with the gap classifier) over the joint
    input sequence (see the module docstring): ((batch, streams, joint tokens), the joint sequence's segments).
    Each row sums to 1."""
    if sorted({b.layer for b in capture.blocks}) != list(range(capture.depth)):
        raise ValueError("attention rollout needs every layer: capture with layers=None")
    joint = _segments([(m, capture.num_tokens[m]) for m in capture.modalities]
                      + ([(BOTTLENECK, capture.num_bottleneck_tokens)] if capture.num_bottleneck_tokens else []))
    where = {s.name: s for s in joint}
    size = joint[-1].stop
    batch = capture.blocks[0].probs.shape[0]
    rows = torch.zeros(batch, len(capture.modalities), size, dtype=torch.float64)
    for i, m in enumerate(capture.modalities):
        segment = where[m]
        if capture.has_cls:
            rows[:, i, segment.start] = 1.0
        else:
            rows[:, i, segment.start:segment.stop] = 1.0 / (segment.stop - segment.start)

    def positions(segments: list[Segment]) -> torch.Tensor:
        return torch.cat([torch.arange(where[s.name].start, where[s.name].stop) for s in segments])

    for layer in reversed(range(capture.depth)):
        blocks = capture.at(layer)
        mixing = torch.zeros(batch, size, size, dtype=torch.float64)
        updated = torch.zeros(size, dtype=torch.bool)
        for block in blocks:
            q, k = positions(block.queries), positions(block.keys)
            probs = block.probs.double()
            if LAYER_KINDS[block.kind].averages_bottleneck:  # the streams' bottleneck outputs are averaged
                share = torch.ones(len(q), 1, dtype=torch.float64)
                b = next(s for s in block.queries if s.name == BOTTLENECK)
                share[b.start:b.stop] = 1.0 / len(blocks)
                probs = probs * share
            mixing[:, q[:, None], k[None, :]] += probs
            updated[q] = True
        idle = (~updated).nonzero()[:, 0]
        mixing[:, idle, idle] = 1.0  # tokens no block updates pass through
        mixing += torch.eye(size, dtype=torch.float64)
        mixing /= mixing.sum(dim=-1, keepdim=True)
        rows = rows @ mixing
    return rows.float(), joint


# ------------------------------------------------------------------------------------------------ drawing
@dataclass
class _Panel:
    """One row of the figure: a map over each stream's patches (None = no such attention in this layer)."""

    label: str
    maps: dict[str, torch.Tensor | None]  # stream -> (patches,) for the first clip of the batch
    captions: dict[str, str]


def default_layers(model: MBT) -> list[int]:
    """The fusion layer (when the streams fuse at all) and the last layer."""
    cfg = model.config
    return sorted({layer for layer in (cfg.fusion_layer, cfg.depth - 1) if layer < cfg.depth})


def cls_share(block: BlockAttention, stream: str, target: str) -> float:
    """Attention mass that the first clip's CLS token of `stream` puts on the `target` segment of `block`."""
    row = next(s for s in block.queries if s.name == stream).start
    columns = next(s for s in block.keys if s.name == target)
    return float(block.probs[0, row, columns.start:columns.stop].sum())


def _layer_panels(capture: AttentionCapture, layer: int) -> list[_Panel]:
    blocks = capture.at(layer)
    kind = capture.schedule[layer]
    query_name = "CLS" if capture.has_cls else "mean token"

    def block_of(stream: str) -> BlockAttention | None:
        """The block whose queries hold `stream`'s tokens (its own block, or the joint one)."""
        return next((b for b in blocks if any(s.name == stream for s in b.queries)), None)

    def own(stream: str, query: str) -> torch.Tensor | None:
        block = block_of(stream)
        found = capture.query_attention(block, query, stream) if block is not None else None
        return None if found is None else found[0]

    # What the layer's layout allows, read from its blocks rather than from the kind's name
    reads_bottleneck = any(s.name == BOTTLENECK for b in blocks for s in b.keys)
    sees_other_stream = any(len({s.name for s in b.keys} & set(capture.modalities)) > 1 for b in blocks)
    captions = {m: f"{m} {query_name} → {m} patches" for m in capture.modalities}
    if reads_bottleneck and capture.has_cls:  # how much the CLS reads from the bottleneck instead
        for m in capture.modalities:
            captions[m] += f"\n(bottleneck tokens get {cls_share(block_of(m), m, BOTTLENECK):.0%})"
    panels = [_Panel(f"layer {layer} ({kind})\n{query_name} → own patches",
                     {m: own(m, m) for m in capture.modalities}, captions)]
    if reads_bottleneck:
        panels.append(_Panel(f"layer {layer} ({kind})\nbottleneck tokens\n(mean of {capture.num_bottleneck_tokens})",
                             {m: own(m, BOTTLENECK) for m in capture.modalities},
                             {m: f"bottleneck → {m} patches ({m} block)" for m in capture.modalities}))
    if sees_other_stream and len(capture.modalities) == 2:
        a, b = capture.modalities
        other = {a: b, b: a}

        def cross(target: str) -> torch.Tensor | None:
            block = block_of(other[target])
            found = capture.query_attention(block, other[target], target) if block is not None else None
            return None if found is None else found[0]

        panels.append(_Panel(f"layer {layer} ({kind})\n{query_name} → other stream",
                             {m: cross(m) for m in capture.modalities},
                             {m: f"{other[m]} {query_name} → {m} patches" for m in capture.modalities}))
    return panels


def _rollout_panel(capture: AttentionCapture) -> _Panel:
    rows, joint = attention_rollout(capture)
    where = {s.name: s for s in joint}
    maps, captions = {}, {}
    for i, m in enumerate(capture.modalities):
        maps[m] = rows[0, i, capture.patches(where[m])]
        others = [n for n in capture.modalities if n != m]
        cross = sum(float(rows[0, i, capture.patches(where[n])].sum()) for n in others)
        captions[m] = f"rollout of {m} CLS" if capture.has_cls else f"rollout of {m} mean token"
        if others:
            captions[m] += f"\n({cross:.1%} of it from {', '.join(others)} patches)"
    return _Panel("attention rollout\n(all layers)", maps, captions)


def _frame_times(capture: AttentionCapture, model: MBT, num_frames: int) -> list[tuple[int, int]]:
    """(token time index, input frame index) of the frames to show, evenly spaced over the token grid."""
    cfg = model.config
    steps = capture.token_grids["video"][0]
    chosen = sorted({int(round(x)) for x in np.linspace(0, steps - 1, min(num_frames, steps))})
    if cfg.video_tokenizer == "tubelet":
        # the middle frame of each tubelet: what the central-frame initialisation looks at
        return [(t, t * cfg.tubelet_size + cfg.tubelet_size // 2) for t in chosen]
    frames = sampled_frame_indices(cfg.num_frames, cfg.sampled_frames)
    return [(t, frames[t]) for t in chosen]


def plot_attention_maps(model: MBT, capture: AttentionCapture, inputs: dict[str, torch.Tensor], out: str | Path, *,
                        layers: Iterable[int] | None = None, rollout: bool = False, num_frames: int = 4,
                        value_range: tuple[float, float] = (-1.0, 1.0), title: str = "") -> Path:
    """Draws attention over the video frames and the spectrogram of the first clip in `inputs` (what `capture`
    saw): per chosen layer the CLS (and bottleneck, and for vanilla fusion cross-stream) attention to the patches,
    plus the rollout. Values are attention weights on the drawn patches; each row has its own colour scale."""
    from mbt.analysis.plots import plt  # the module that sets the file-only backend

    layers = check_layers(model, default_layers(model) if layers is None else layers)
    captured = {b.layer for b in capture.blocks}
    missing = [layer for layer in layers if layer not in captured]
    if missing:
        raise ValueError(f"layer {missing[0]} was not captured (captured: {sorted(captured)})")
    panels = [p for layer in layers for p in _layer_panels(capture, layer)]
    if rollout:
        panels.append(_rollout_panel(capture))
    # Only the RGB video and the spectrogram can be shown on their input (other streams, e.g. flow, are not drawn).
    show_video = "video" in capture.modalities
    show_audio = "audio" in capture.modalities
    if not (show_video or show_audio):
        raise ValueError(f"nothing to draw: the clip has none of video / audio (streams: {capture.modalities})")
    frames = _frame_times(capture, model, num_frames) if show_video else []
    columns = len(frames) + (1 if show_audio else 0)
    ratios = [1.0] * len(frames) + ([2.4] if show_audio else [])
    fig, axes = plt.subplots(len(panels), columns, figsize=(2.3 * len(frames) + (5.2 if show_audio else 0) + 1.5,
                                                            2.5 * len(panels) + 0.8),
                             gridspec_kw={"width_ratios": ratios}, squeeze=False, layout="constrained")
    lo, hi = value_range
    for row, panel in enumerate(panels):
        row_axes = axes[row]
        if show_video:
            _draw_video_row(fig, row_axes[:len(frames)], panel, inputs["video"][0], frames, capture, lo, hi,
                            last_row=row == len(panels) - 1)
        if show_audio:
            _draw_audio_row(fig, row_axes[-1], panel, inputs["audio"][0], capture, last_row=row == len(panels) - 1,
                            label=None if show_video else panel.label)
    fig.suptitle(title, fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _upsample(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    return F.interpolate(grid[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _draw_video_row(fig, axes, panel: _Panel, video: torch.Tensor, frames: list[tuple[int, int]],
                    capture: AttentionCapture, lo: float, hi: float, last_row: bool) -> None:
    _, h, w = capture.token_grids["video"]
    height, width = video.shape[-2:]
    weights = panel.maps.get("video")
    vmax = float(weights.max()) if weights is not None else 1.0
    image = None
    for col, (ax, (t, frame)) in enumerate(zip(axes, frames)):
        rgb = ((video[:, frame].permute(1, 2, 0) - lo) / (hi - lo)).clamp(0, 1).numpy()
        ax.imshow(rgb, extent=(0, width, height, 0))
        if weights is not None:
            grid = weights[t * h * w:(t + 1) * h * w].reshape(h, w)
            image = ax.imshow(_upsample(grid, (height, width)), cmap="inferno", alpha=0.6, vmin=0.0, vmax=vmax,
                              extent=(0, width, height, 0))
        ax.set_title(f"frame {frame}" + ("" if weights is not None else "\n(no such attention)"), fontsize=8)
        ax.tick_params(labelsize=7)
        if col == 0:
            ax.set_ylabel(f"{panel.label}\n\ny (pixels)", fontsize=8)
        if last_row:
            ax.set_xlabel("x (pixels)", fontsize=8)
    if weights is not None:
        bar = fig.colorbar(image, ax=list(axes), shrink=0.85, pad=0.01)
        bar.set_label(f"{panel.captions['video']}\nweight (sum {float(weights.sum()):.2f})", fontsize=7)
        bar.ax.tick_params(labelsize=7)


def _draw_audio_row(fig, ax, panel: _Panel, spectrogram: torch.Tensor, capture: AttentionCapture, last_row: bool,
                    label: str | None) -> None:
    frames, bins = spectrogram.shape
    extent = (0, frames / SPECTROGRAM_FRAMES_PER_S, 0, bins)
    ax.imshow(spectrogram.T.numpy(), origin="lower", aspect="auto", cmap="gray", extent=extent)
    weights = panel.maps.get("audio")
    if weights is not None:
        gt, gm = capture.token_grids["audio"]
        grid = _upsample(weights.reshape(gt, gm), (frames, bins)).T
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="inferno", alpha=0.6, vmin=0.0,
                          vmax=float(weights.max()), extent=extent)
        bar = fig.colorbar(image, ax=ax, shrink=0.85, pad=0.01)
        bar.set_label(f"weight (sum {float(weights.sum()):.2f})", fontsize=7)
        bar.ax.tick_params(labelsize=7)
        ax.set_title(panel.captions["audio"], fontsize=8)
    else:
        ax.set_title("(no such attention)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_ylabel(("" if label is None else f"{label}\n\n") + "mel bin", fontsize=8)
    if last_row:
        ax.set_xlabel("time (s)", fontsize=8)
