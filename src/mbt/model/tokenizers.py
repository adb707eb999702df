"""Tokenizers: video tubelets / sampled-frame patches and spectrogram patches -> (B, N, D) token sequences.

Token order follows the official code (so converted checkpoints see their positional embeddings in order):
video t-slowest then h then w; spectrogram time-major.
"""

from __future__ import annotations

import torch
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

    The official code tiles the mono spectrogram to 3 channels before a 3-channel convolution; a 1-channel
    convolution whose kernel is the sum over those channels gives the same result for a third of the cost (weight
    import sums the channels).
    """

    def __init__(self, width: int, patch: tuple[int, int]):
        super().__init__()
        self.proj = nn.Conv2d(1, width, kernel_size=patch, stride=patch)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:  # (B, T_spec, n_mels)
        return self.proj(spectrogram.unsqueeze(1)).flatten(2).transpose(1, 2)
