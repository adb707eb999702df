"""Tokenizers: video tubelets / sampled-frame patches and spectrogram patches -> (B, N, D) token sequences.

Token order follows the official code (so converted checkpoints see their positional embeddings in order):
video t-slowest then h then w; spectrogram time-major.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TubeletEmbed(nn.Module):
    """3-D convolution over non-overlapping t x p x p tubelets (paper: 32 x 224^2, t = 2 -> 16 x 14 x 14 tokens)."""

    def __init__(self, in_channels: int, width: int, tubelet: int, patch: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, width, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        return self.proj(video).flatten(2).transpose(1, 2)


def sampled_frame_indices(num_frames: int, num_sampled: int) -> list[int]:
    """Evenly spaced frames as scenic's `sample_frames_uniformly`: T/(n+1) apart, the ends excluded."""
    if num_sampled >= num_frames:
        return list(range(num_frames))
    step = num_frames / (num_sampled + 1)
    return [min(round(step * (i + 1)), num_frames - 1) for i in range(num_sampled)]


class FrameSamplingEmbed(nn.Module):
    """The official alternative ("temporal_sampling"): 2-D p x p patches on evenly spaced frames."""

    def __init__(self, in_channels: int, width: int, patch: int, num_frames: int, num_sampled: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        self.register_buffer("frame_index", torch.tensor(sampled_frame_indices(num_frames, num_sampled)),
                             persistent=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        frames = video.index_select(2, self.frame_index)  # (B, C, T', H, W)
        b, c, t, h, w = frames.shape
        tokens = self.proj(frames.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T', D, h', w')
        return tokens.flatten(2).transpose(1, 2).reshape(b, -1, tokens.shape[1])


class SpectrogramEmbed(nn.Module):
    """Patches of a (time x mel) log-mel spectrogram (paper: 800 x 128 -> 50 x 8 tokens), time-major.

    The kernel has the official 3 input channels, which the official pipeline feeds the mono spectrogram tiled 3x.
    The forward pass convolves the mono input once with the channels' sum: the same result for a third of the
    cost. Keeping 3 channels keeps the official dynamics: every channel receives the same gradient, so under SGD the
    summed kernel moves 3x as far per step as one 1-channel parameter would (and counts sqrt(3)x in a clipped
    gradient norm). A 1-channel kernel saved by earlier versions loads as 3 channels with exactly its sum.
    """

    CHANNELS = 3

    def __init__(self, width: int, patch: tuple[int, int]):
        super().__init__()
        self.proj = nn.Conv2d(self.CHANNELS, width, kernel_size=patch, stride=patch)

    def summed_kernel(self) -> torch.Tensor:
        w = self.proj.weight
        return w[:, 0:1] + w[:, 1:2] + w[:, 2:3]  # a fixed order of the sum, which `split_kernel` relies on

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:  # (B, T_spec, n_mels)
        tokens = F.conv2d(spectrogram.unsqueeze(1), self.summed_kernel(), self.proj.bias, stride=self.proj.stride)
        return tokens.flatten(2).transpose(1, 2)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "proj.weight"
        weight = state_dict.get(key)
        if weight is not None and weight.ndim == 4 and weight.shape[1] == 1:
            state_dict[key] = split_kernel(weight)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def split_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """A 1-channel kernel k (D, 1, ...) -> 3 channels (a, a, c) whose sum (a + a) + c is exactly k in float32:
    a = k / 3 rounded, c = k - 2a, which is exact (Sterbenz: 2a lies within [k / 2, 2k]), so a + a + c rounds to k
    and converted runs keep their logits bit for bit."""
    a = kernel / 3
    return torch.cat([a, a, kernel - 2 * a], dim=1)


# ==================================================================== the convolutional stem (`model.stem: conv`)
class ConvStem(nn.Module):
    """A convolutional stem in place of the patch projection (Xiao et al., "Early convolutions help transformers
    see better", 2021): 3x3 convolutions + BatchNorm + ReLU, each halving the image along the axes that still have
    to shrink, then a 1x1 convolution to the width. Its output grid is the patch projection's (one token per
    p x p patch), so positional embeddings, token order and every shape downstream are unchanged.

    Why it exists: a linear patch embedding carries no locality or shift prior; trained from scratch on a few
    hundred clips, the transformer does not learn one in the steps it has (docs/small-data.md section 7). Not in
    the paper and in no official checkpoint.
    """

    def __init__(self, in_channels: int, width: int, patch: tuple[int, int]):
        super().__init__()
        halvings = [p.bit_length() - 1 for p in patch]  # patch sides are powers of two (checked by MBTConfig)
        layers, channels, n = [], in_channels, max(halvings)
        for i in range(n):
            out = max(width >> (n - 1 - i), 8)  # Xiao et al.: width / 8, / 4, / 2, width for 4 layers
            stride = tuple(2 if i < h else 1 for h in halvings)
            layers += [nn.Conv2d(channels, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        layers.append(nn.Conv2d(channels, width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, D, H / p, W / p)
        return self.layers(images)


class ConvVideoEmbed(nn.Module):
    """The stem on every frame; a tubelet's token is the mean of its frames' (`frame_index`: the frames kept by
    the frame_sampling tokenizer, one frame a token). Token order as TubeletEmbed: t slowest, then h, then w."""

    def __init__(self, in_channels: int, width: int, patch: int, tubelet: int, frame_index: list[int] | None = None):
        super().__init__()
        self.stem = ConvStem(in_channels, width, (patch, patch))
        self.tubelet = tubelet
        if frame_index is None:
            self.frame_index = None
        else:
            self.register_buffer("frame_index", torch.tensor(frame_index), persistent=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        if self.frame_index is not None:
            video = video.index_select(2, self.frame_index)
        b, c, t, h, w = video.shape
        maps = self.stem(video.transpose(1, 2).reshape(b * t, c, h, w))  # (B*T, D, h', w')
        maps = maps.reshape(b, t // self.tubelet, self.tubelet, *maps.shape[1:]).mean(dim=2)  # (B, T', D, h', w')
        return maps.permute(0, 1, 3, 4, 2).reshape(b, -1, maps.shape[2])


class ConvSpectrogramEmbed(nn.Module):
    """The stem on the (time x mel) log-mel as a 1-channel image; tokens time-major as SpectrogramEmbed."""

    def __init__(self, width: int, patch: tuple[int, int]):
        super().__init__()
        self.stem = ConvStem(1, width, patch)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:  # (B, T_spec, n_mels)
        return self.stem(spectrogram.unsqueeze(1)).flatten(2).transpose(1, 2)
