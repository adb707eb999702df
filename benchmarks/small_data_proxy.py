"""An independent compact MBT on the small-data set, with nothing of `mbt`'s pipeline or model in the loop.

docs/small-data.md section 6: a yardstick to bisect `mbt train` against. It decodes every clip once with PyAV
(all frames at the native size; the whole clip's 128-bin Kaldi log-mel, the one `mbt` function it uses), standardises
each stream with the training set's mean and std, and trains a compact MBT written here (pre-LN blocks on
`scaled_dot_product_attention`, trunc-normal(0.02) weights, a non-zero head; bottleneck or vanilla fusion) with
±8 px shifts and frequency masks, AdamW, warm-up + cosine, clipping. The loss is the cross-entropy of the mean of
the streams' logits (`loss=per_stream`: the mean of the streams' own losses, as `mbt`'s token classifier).

    PYTHONPATH=src python benchmarks/small_data_proxy.py SET_DIR [key=value ...]

e.g. `readout=max mixup=0.8 epochs=30` (A+V 0.45 on the seed-0 set), `readout=cls` (0.13 at epoch 8). The keys
and their defaults are OPTIONS below. Prints one line per epoch; writes nothing but the decoded cache
(SET_DIR/proxy_cache.pt, reused).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mbt.media.fbank import kaldi_fbank

OPTIONS = dict(
    lr=5e-4, weight_decay=0.05, batch=32, epochs=10, warmup_epochs=2.5, clip=1.0, seed=0, mixup=0.0,
    depth=6, width=192, heads=3, fusion="bottleneck", fusion_layer=3, bottlenecks=4,
    frames=8, patch=16, tubelet=2, spec_patch=16, readout="cls", loss="mean", shift=8, freq_mask=16,
    modalities="av",  # "av" | "v" (video alone: the audio stream is not run)
    stem="patch",  # "patch" (a linear patch embedding) | "conv" (3x3 stride-2 convolutions, Xiao et al. 2021)
    model="proxy",  # "proxy" (CompactMBT below) | "mbt" (mbt's own MBT, official initialisers, in this loop)
    init="official",  # with model=mbt: model.weight_init "official" | "trunc_normal", or one part of the latter
    # alone over the official initialisers (the bisection of docs/small-data.md section 7): "linear", "head", "conv"
)
FRAMES, SPEC_FRAMES, MELS, SAMPLE_RATE = 20, 192, 128, 16000


# ==================================================================== decoding (once)
def decode(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(FRAMES, H, W, 3) uint8 frames (the last repeated if the clip has fewer) and (SPEC_FRAMES, MELS) log-mel."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][:FRAMES]
    frames += [frames[-1]] * (FRAMES - len(frames))
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = [g.to_ndarray().reshape(-1) for f in container.decode(audio=0) for g in resampler.resample(f)]
        chunks += [g.to_ndarray().reshape(-1) for g in resampler.resample(None)]
    wave = torch.from_numpy(np.concatenate(chunks))
    spec = kaldi_fbank(wave - wave.mean(), sample_rate=SAMPLE_RATE, num_mel_bins=MELS)[:SPEC_FRAMES]
    spec = F.pad(spec, (0, 0, 0, SPEC_FRAMES - spec.shape[0]))
    return torch.from_numpy(np.stack(frames)), spec


def load_set(root: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    cache = root / "proxy_cache.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    classes = [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    splits = {}
    for split in ("train", "test"):
        rows = list(csv.DictReader((root / f"{split}.csv").open()))
        decoded = [decode(root / row["path"]) for row in rows]
        splits[split] = (torch.stack([v for v, _ in decoded]), torch.stack([a for _, a in decoded]),
                         torch.tensor([classes.index(row["labels"]) for row in rows]))
        print(f"decoded {len(rows)} {split} clips", flush=True)
    torch.save(splits, cache)
    return splits


# ==================================================================== the model
class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def conv_stem(in_channels: int, width: int, patch: int) -> nn.Sequential:
    """log2(patch) 3x3 stride-2 conv + BN + ReLU layers, then a 1x1 conv to the width (Xiao et al. 2021)."""
    layers, channels = [], in_channels
    for i in range(int(math.log2(patch))):
        out = width // 2 ** (int(math.log2(patch)) - i)
        layers += [nn.Conv2d(channels, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers, nn.Conv2d(channels, width, 1))


class CompactMBT(nn.Module):
    def __init__(self, o: dict, image: int, classes: int):
        super().__init__()
        w, self.opts = o["width"], o
        self.video_embed = nn.Conv3d(3, w, (o["tubelet"], o["patch"], o["patch"]), (o["tubelet"], o["patch"], o["patch"]))
        self.audio_embed = nn.Conv2d(1, w, o["spec_patch"], o["spec_patch"])
        if o["stem"] == "conv":
            self.video_stem, self.audio_embed = conv_stem(3, w, o["patch"]), conv_stem(1, w, o["spec_patch"])
        video_tokens = o["frames"] // o["tubelet"] * (image // o["patch"]) ** 2
        audio_tokens = (SPEC_FRAMES // o["spec_patch"]) * (MELS // o["spec_patch"])
        self.pos = nn.ParameterDict({"video": nn.Parameter(torch.randn(1, video_tokens, w) * 0.02),
                                     "audio": nn.Parameter(torch.randn(1, audio_tokens, w) * 0.02)})
        self.cls = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, w)) for m in ("video", "audio")})
        self.bottleneck = nn.Parameter(torch.randn(1, o["bottlenecks"], w) * 0.02)
        self.blocks = nn.ModuleDict({m: nn.ModuleList([Block(w, o["heads"]) for _ in range(o["depth"])])
                                     for m in ("video", "audio")})
        self.norm, self.head = nn.LayerNorm(w, eps=1e-6), nn.Linear(w, classes)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, video: torch.Tensor, audio: torch.Tensor | None) -> dict[str, torch.Tensor]:
        o = self.opts
        if o["stem"] == "conv":  # per frame, then the tubelet's frames averaged
            b, c, t, h, w = video.shape
            frames = self.video_stem(video.transpose(1, 2).reshape(b * t, c, h, w))
            tokens = frames.reshape(b, t // o["tubelet"], o["tubelet"], *frames.shape[1:]).mean(2)
            tokens = tokens.permute(0, 2, 1, 3, 4)
        else:
            tokens = self.video_embed(video)
        x = {"video": tokens.flatten(2).transpose(1, 2) + self.pos["video"]}
        if audio is not None:
            x["audio"] = self.audio_embed(audio[:, None]).flatten(2).transpose(1, 2) + self.pos["audio"]
        x = {m: torch.cat([self.cls[m].expand(len(t), -1, -1), t], 1) for m, t in x.items()}
        shared = self.bottleneck.expand(len(video), -1, -1)
        for layer in range(o["depth"]):
            if layer < o["fusion_layer"] or len(x) == 1:
                x = {m: self.blocks[m][layer](t) for m, t in x.items()}
            elif o["fusion"] == "bottleneck":
                outs = {m: self.blocks[m][layer](torch.cat([t, shared], 1)) for m, t in x.items()}
                shared = torch.stack([out[:, -o["bottlenecks"]:] for out in outs.values()]).mean(0)
                x = {m: out[:, :-o["bottlenecks"]] for m, out in outs.items()}
            else:  # vanilla: each stream's tokens attend to all tokens of both
                joint, sizes = torch.cat(list(x.values()), 1), [t.shape[1] for t in x.values()]
                starts = np.cumsum([0, *sizes])
                x = {m: self.blocks[m][layer](joint)[:, starts[i]:starts[i + 1]] for i, m in enumerate(x)}
        if o["readout"] == "cls":
            return {m: self.head(self.norm(t[:, 0])) for m, t in x.items()}
        reduce = {"max": lambda t: t.amax(1), "mean": lambda t: t.mean(1)}[o["readout"]]
        return {m: self.head(reduce(self.norm(t[:, 1:]))) for m, t in x.items()}


class MBTInLoop(nn.Module):
    """`mbt`'s MBT with the proxy's settings, returning the per-stream logits as CompactMBT does."""

    def __init__(self, o: dict, image: int, classes: int, with_audio: bool):
        super().__init__()
        from mbt.model.config import MBTConfig
        from mbt.model.mbt import MBT

        readout = {"cls": {"classifier": "token"}, "max": {"classifier": "gmp", "pool_per_stream": True},
                   "mean": {"classifier": "gap", "pool_per_stream": True}}[o["readout"]]
        self.mbt = MBT(MBTConfig.preset(
            "mbt-tiny", modalities=("video", "audio") if with_audio else ("video",), depth=o["depth"],
            width=o["width"], num_heads=o["heads"], mlp_dim=4 * o["width"], fusion=o["fusion"],
            fusion_layer=o["fusion_layer"], num_bottlenecks=o["bottlenecks"], num_frames=o["frames"],
            image_size=image, patch_size=o["patch"], tubelet_size=o["tubelet"], spec_frames=SPEC_FRAMES,
            spec_patch=(o["spec_patch"], o["spec_patch"]), stem=o["stem"], drop_path_rate=0.0,
            num_classes=classes, weight_init="trunc_normal" if o["init"] == "trunc_normal" else "official",
            **readout))
        for name, module in self.mbt.named_modules():  # one part of trunc_normal over the official init
            is_head = name == "head"
            if isinstance(module, nn.Linear) and ((o["init"] == "head" and is_head) or
                                                  (o["init"] == "linear" and not is_head)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv2d, nn.Conv3d)) and o["init"] == "conv":
                module.reset_parameters()  # PyTorch's default (kaiming uniform), as CompactMBT's convolutions

    def forward(self, video: torch.Tensor, audio: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return self.mbt(video, audio).modality_logits


# ==================================================================== training
def main() -> None:
    root = Path(sys.argv[1])
    o = dict(OPTIONS)
    for arg in sys.argv[2:]:
        key, value = arg.split("=", 1)
        if key not in o:
            raise SystemExit(f"unknown option {key!r}; options: {', '.join(o)}")
        o[key] = type(o[key])(value)
    print(o, flush=True)
    torch.manual_seed(o["seed"])
    splits = load_set(root)
    keep = torch.linspace(0, FRAMES - 1, o["frames"]).round().long()  # frames spread over the whole clip
    video = {s: splits[s][0][:, keep].permute(0, 4, 1, 2, 3).float() / 255 for s in splits}
    audio = {s: splits[s][1].float() for s in splits}
    labels = {s: splits[s][2] for s in splits}
    for stream in (video, audio):
        mean, std = stream["train"].mean(), stream["train"].std()
        for s in stream:
            stream[s] = (stream[s] - mean) / std
    classes = int(labels["train"].max()) + 1
    with_audio = o["modalities"] == "av"
    model = (MBTInLoop(o, video["train"].shape[-1], classes, with_audio) if o["model"] == "mbt" else
             CompactMBT(o, video["train"].shape[-1], classes))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                                   {"params": rest, "weight_decay": 0.0}], lr=o["lr"])
    n = len(labels["train"])
    steps = n // o["batch"]
    total, warm = steps * o["epochs"], o["warmup_epochs"] * steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: (t + 1) / warm if t < warm else
                                                 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, total - warm))))
    g = torch.Generator().manual_seed(o["seed"])

    def augment(v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, size = o["shift"], v.shape[-1]
        if s:
            padded = F.pad(v.flatten(1, 2), (s, s, s, s), mode="replicate").unflatten(1, (3, -1))
            dy, dx = torch.randint(0, 2 * s + 1, (2, len(v)), generator=g)
            v = torch.stack([padded[i, :, :, dy[i]:dy[i] + size, dx[i]:dx[i] + size] for i in range(len(v))])
        a = a.clone()
        for i in range(len(a)):
            width = int(torch.randint(0, o["freq_mask"] + 1, (), generator=g))
            start = int(torch.randint(0, MELS - width + 1, (), generator=g))
            a[i, :, start:start + width] = 0
        return v, a

    def evaluate() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            out = model(video["test"], audio["test"] if with_audio else None)
        model.train()
        accuracy = {m: (lg.argmax(1) == labels["test"]).float().mean().item() for m, lg in out.items()}
        fused = torch.stack([lg.softmax(1) for lg in out.values()]).mean(0)
        return {"A+V": (fused.argmax(1) == labels["test"]).float().mean().item(), **accuracy}

    started = time.time()
    for epoch in range(1, o["epochs"] + 1):
        order, running = torch.randperm(n, generator=g), 0.0
        for step in range(steps):
            batch = order[step * o["batch"]:(step + 1) * o["batch"]]
            v, a = augment(video["train"][batch], audio["train"][batch])
            target = F.one_hot(labels["train"][batch], classes).float()
            if o["mixup"]:
                lam = float(torch.distributions.Beta(o["mixup"], o["mixup"]).sample())
                perm = torch.randperm(len(batch), generator=g)
                v, a, target = (lam * t + (1 - lam) * t[perm] for t in (v, a, target))
            out = model(v, a if with_audio else None)
            if o["loss"] == "mean":
                loss = F.cross_entropy(torch.stack(list(out.values())).mean(0), target)
            else:
                loss = torch.stack([F.cross_entropy(lg, target) for lg in out.values()]).mean()
            optimizer.zero_grad()
            loss.backward()
            if o["clip"]:
                nn.utils.clip_grad_norm_(model.parameters(), o["clip"])
            optimizer.step()
            schedule.step()
            running += loss.item()
        test = " ".join(f"{k} {v:.3f}" for k, v in evaluate().items())
        print(f"epoch {epoch} loss {running / steps:.3f} test {test} ({time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
