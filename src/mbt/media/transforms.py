"""Video and spectrogram transforms in pure torch, following the official DMVR/scenic training pipeline.

Geometric transforms (resize, crops, flip) work on decoded frames, (T, H, W, C) uint8 or float: on uint8 they use
torch's fast uint8 resampling and round to integers, as DMVR resizes its uint8 frames. `to_float` then gives
(3, T, H, W) float32 in [0, 1], the layout of the colour transforms, and `to_model_range` maps it to the model's
range. Spectrograms are (T_spec, n_mels). Every random choice draws from an explicit `torch.Generator`, so a run
resumed with the same generator state sees the same augmentations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R 601 luma weights, as tf.image.rgb_to_grayscale (DMVR's colour drop)
_GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator).item())


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) frames, uint8 in [0, 255] or float in [0, 1] -> contiguous (3, T, H, W) float32 in [0, 1]."""
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got {tuple(frames.shape)}")
    # one pass converts and reorders; the scaling then runs in place
    video = torch.empty(frames.permute(3, 0, 1, 2).shape, dtype=torch.float32).copy_(frames.permute(3, 0, 1, 2))
    return video.div_(255.0) if frames.dtype == torch.uint8 else video


def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of (T, H, W, C) frames; antialiased when shrinking."""
    if frames.shape[1:3] == (height, width):
        return frames
    # (T, C, H, W) as a channels-last view: the layout of torch's fast uint8 kernels, and no copy.
    out = F.interpolate(frames.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", align_corners=False,
                        antialias=height < frames.shape[1] or width < frames.shape[2])
    return out.permute(0, 2, 3, 1)


def short_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) with the short side `size` and the aspect kept, rounded down as DMVR's `resize_smallest`."""
    return max(size, height * size // width), max(size, width * size // height)


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (T, H, W, C) frames so min(H, W) == size, keeping the aspect ratio."""
    return _resize(frames, *short_side_shape(frames.shape[1], frames.shape[2], size))


def random_resized_crop(frames: torch.Tensor, size: int, scale_jitter: tuple[float, float] = (0.9, 1.33),
                        generator: torch.Generator | None = None, *, short_side: int | None = None) -> torch.Tensor:
    """Scale jitter then a random `size` x `size` crop, as the official pipeline.

    DMVR's `resize_smallest(short_side)` + `scale_jitter_augm`: the short side is brought to `short_side` (default:
    the input's), then height and width are scaled by independent factors drawn from U(scale_jitter) (so the
    aspect ratio jitters too), in one resize; then a uniformly placed crop. (T, H, W, C) in and out.
    """
    height, width = frames.shape[1:3]
    if short_side is not None:
        height, width = short_side_shape(height, width, short_side)
    h_scale = _uniform(*scale_jitter, generator)
    w_scale = _uniform(*scale_jitter, generator)
    # int() truncates as DMVR's tf.cast; never smaller than the crop
    height, width = max(size, int(h_scale * height)), max(size, int(w_scale * width))
    frames = _resize(frames, height, width)
    top = _randint(height - size + 1, generator)
    left = _randint(width - size + 1, generator)
    return frames[:, top:top + size, left:left + size]


def crop(frames: torch.Tensor, size: int, index: int = 1) -> torch.Tensor:
    """A `size` x `size` crop of (T, H, W, C) frames along the long side: 0 = left/top, 1 = centre,
    2 = right/bottom (SlowFast's 3-crop test). The short side is cropped centrally."""
    height, width = frames.shape[1:3]
    if min(height, width) < size:
        raise ValueError(f"cannot crop {size}x{size} from {height}x{width} frames; resize first")
    if index not in (0, 1, 2):
        raise ValueError(f"crop index must be 0, 1 or 2, got {index}")
    offsets = [(height - size) // 2, (width - size) // 2]
    long_axis = 0 if height > width else 1
    extent = (height, width)[long_axis] - size
    offsets[long_axis] = (0, extent // 2, extent)[index]
    top, left = offsets
    return frames[:, top:top + size, left:left + size]


def centre_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """The central `size` x `size` crop of (T, H, W, C) frames."""
    return crop(frames, size, 1)


def random_flip(frames: torch.Tensor, generator: torch.Generator | None = None, prob: float = 0.5) -> torch.Tensor:
    """Flip all (T, H, W, C) frames left-right together with probability `prob`."""
    if torch.rand((), generator=generator).item() < prob:
        return frames.flip(2)
    return frames


def _channel_max_min(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # elementwise maximum/minimum of the three planes: much faster than a reduction over the leading dimension
    r, g, b = rgb.unbind(0)
    return torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(3, ...) RGB -> (3, ...) HSV, all in [0, 1] (hue as a fraction of the circle), as tf.image.rgb_to_hsv."""
    r, g, b = rgb.unbind(0)
    value, low = _channel_max_min(rgb)
    delta = value - low
    safe = delta.clamp_min(1e-12)
    # Hue sector by the largest channel: (g - b) / d for red, (b - r) / d + 2 for green, (r - g) / d + 4 for blue.
    hue = torch.where(value == r, (g - b) / safe, torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = torch.where(delta > 0, hue.div_(6.0).remainder_(1.0), torch.zeros_like(hue))
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-12), torch.zeros_like(value))
    return torch.stack((hue, saturation, value))


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`."""
    hue, saturation, value = hsv.unbind(0)
    # The standard piecewise-linear hue ramps of R, G, B, all three channels at once.
    offsets = hsv.new_tensor((5.0, 3.0, 1.0)).view(3, *([1] * hue.dim()))
    k = (offsets + hue * 6.0).remainder_(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return value - ramp.mul_(value * saturation)


def adjust_saturation(video: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale the HSV saturation of (3, ...) RGB by `factor` (clipped to 1), keeping hue and value.

    tf.image.adjust_saturation's HSV round trip in closed form: every channel's distance below the pixel's max
    scales by min(S * factor, 1) / S. Three times cheaper than converting to HSV and back.
    """
    value, low = _channel_max_min(video)
    value, low = value.unsqueeze(0), low.unsqueeze(0)
    saturation = (value - low) / value.clamp_min(1e-12)
    scale = (saturation * factor).clamp_(max=1.0) / saturation.clamp_min(1e-12)
    scale = torch.where((value > 0) & (saturation > 0), scale, torch.ones_like(scale))
    return value - (value - video) * scale


def color_augment(video: torch.Tensor, generator: torch.Generator | None = None, prob: float = 0.8,
                  brightness: float = 32 / 255, contrast: tuple[float, float] = (0.6, 1.4),
                  saturation: tuple[float, float] = (0.6, 1.4), hue: float = 0.2) -> torch.Tensor:
    """DMVR's `color_default_augm`: with probability `prob`, in this order, brightness + U(-b, b), saturation x
    U(saturation) (in HSV), contrast x U(contrast) around each frame's per-channel mean, hue + U(-hue, hue) of the
    circle; then clip to [0, 1]. One draw of each for the whole clip."""
    if torch.rand((), generator=generator).item() >= prob:
        return video
    video = video + _uniform(-brightness, brightness, generator)
    video = adjust_saturation(video, _uniform(*saturation, generator))
    mean = video.mean(dim=(-2, -1), keepdim=True)
    video = (video - mean) * _uniform(*contrast, generator) + mean
    hsv = rgb_to_hsv(video)
    hsv[0] = (hsv[0] + _uniform(-hue, hue, generator)) % 1.0
    return hsv_to_rgb(hsv).clamp_(0.0, 1.0)


def color_drop(video: torch.Tensor, generator: torch.Generator | None = None, prob: float = 0.1) -> torch.Tensor:
    """With probability `prob`, replace the colours by their grey level (tf.image.rgb_to_grayscale weights)."""
    if torch.rand((), generator=generator).item() >= prob:
        return video
    weights = video.new_tensor(_GREY_WEIGHTS).view(3, *([1] * (video.dim() - 1)))
    return (video * weights).sum(0, keepdim=True).expand_as(video).contiguous()


# ------------------------------------------------------------------ colour per batch, on the training device
# The colour jitter is most of a training clip's CPU time (HSV round trips over 4.8 M floats) and pointwise, so the
# loader only draws its parameters (same generator, same draws in the same order as color_augment + color_drop)
# and `finish_video` applies them to the collated uint8 batch where the model runs. One row per clip:
COLOUR_FIELDS = ("apply", "brightness", "saturation", "contrast", "hue", "drop")
IDENTITY_COLOUR = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)


def draw_colour(generator: torch.Generator | None = None, prob: float = 0.8, drop_prob: float = 0.1,
                brightness: float = 32 / 255, contrast: tuple[float, float] = (0.6, 1.4),
                saturation: tuple[float, float] = (0.6, 1.4), hue: float = 0.2) -> torch.Tensor:
    """The random draws of `color_augment` then `color_drop`, as a (6,) float32 row of COLOUR_FIELDS. The
    generator ends in the state those two functions would leave it in, so later draws (SpecAugment) are unchanged."""
    params = list(IDENTITY_COLOUR)
    if torch.rand((), generator=generator).item() < prob:
        params[:5] = [1.0, _uniform(-brightness, brightness, generator), _uniform(*saturation, generator),
                      _uniform(*contrast, generator), _uniform(-hue, hue, generator)]
    params[5] = float(torch.rand((), generator=generator).item() < drop_prob)
    return torch.tensor(params, dtype=torch.float32)


def apply_colour(video: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """`color_augment` then `color_drop` of (3, B, ...) float video in [0, 1] (clip b in [:, b]) with the (B, 6)
    drawn `params`: the same operations in the same order, each clip's numbers its own row."""
    shape = (1, params.shape[0], *([1] * (video.dim() - 2)))  # one value per clip, broadcast over its pixels
    apply, bright, sat, contrast, hue, drop = (params[:, i].to(video).view(shape) for i in range(6))
    out = video + bright
    out = adjust_saturation(out, sat)
    mean = out.mean(dim=(-2, -1), keepdim=True)
    out = (out - mean) * contrast + mean
    hsv = rgb_to_hsv(out)
    hsv[0] = (hsv[0] + hue[0]) % 1.0
    out = torch.where(apply > 0.5, hsv_to_rgb(hsv).clamp_(0.0, 1.0), video)
    weights = video.new_tensor(_GREY_WEIGHTS).view(3, *([1] * (video.dim() - 1)))
    return torch.where(drop > 0.5, (out * weights).sum(0, keepdim=True), out)


def finish_video(frames: torch.Tensor, colour: torch.Tensor | None, value_range: tuple[float, float] = (-1.0, 1.0),
                 ) -> torch.Tensor:
    """A collated batch of uint8 crops (B, T, H, W, 3) -> (B, 3, T, H, W) float32 model inputs: `to_float`, the
    clips' drawn colour jitter / drop (`colour` (B, 6) from `draw_colour`, or None for none) and `to_model_range`.
    Runs wherever `frames` is (the training device): per clip the same numbers as the loader-side path."""
    if frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"expected (B, T, H, W, 3) frames, got {tuple(frames.shape)}")
    if frames.device.type != "cpu":
        return finish_batch(frames, colour, value_range)
    # On the CPU one clip at a time: a whole batch's temporaries are hundreds of MB of fresh pages, whose faults
    # cost more system time than the arithmetic (3x per clip at paper sizes); a GPU's caching allocator reuses.
    out = torch.empty((frames.shape[0], 3, *frames.shape[1:4]), dtype=torch.float32)
    for i in range(frames.shape[0]):
        out[i] = finish_batch(frames[i:i + 1], None if colour is None else colour[i:i + 1], value_range)[0]
    return out


def finish_batch(frames: torch.Tensor, colour: torch.Tensor | None, value_range: tuple[float, float] = (-1.0, 1.0),
                 ) -> torch.Tensor:
    """`finish_video` of the whole batch at once (what runs on a GPU)."""
    # (3, B, T, H, W): the colour functions' channel-first layout; one pass converts and reorders
    video = torch.empty(frames.permute(4, 0, 1, 2, 3).shape, dtype=torch.float32, device=frames.device)
    video.copy_(frames.permute(4, 0, 1, 2, 3))
    video = video.div_(255.0) if frames.dtype == torch.uint8 else video
    if colour is not None:
        video = apply_colour(video, colour)
    low, high = value_range
    return video.transpose(0, 1).contiguous().mul_(high - low).add_(low)  # to_model_range, in place


def to_model_range(video: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Map [0, 1] to `value_range` (official: [-1, 1])."""
    low, high = value_range
    return video.mul(high - low).add_(low)


def roll_time(spec: torch.Tensor, generator: torch.Generator | None, max_shift: int) -> torch.Tensor:
    """A (T_spec, n_mels) spectrogram rolled along time by a shift drawn uniformly from {-max_shift, ..., max_shift}:
    frames pushed off one end come back at the other, so nothing is lost and no padding is added (AST's roll)."""
    shift = _randint(2 * max_shift + 1, generator) - max_shift
    return torch.roll(spec, shifts=shift, dims=0) if shift else spec


def spec_augment(spec: torch.Tensor, generator: torch.Generator | None = None, freq_mask_count: int = 1,
                 freq_mask_width: int = 48, time_mask_count: int = 0, time_mask_width: int = 48) -> torch.Tensor:
    """SpecAugment masks on a (T_spec, n_mels) spectrogram (lingvo's, as the official pipeline applies them).

    Each mask has a width drawn from {0, ..., max width} and a uniformly placed start; masked values become 0,
    which after normalisation is the dataset mean. The official config leaves one frequency mask of up to 48 bins
    (its time masks are disabled by lingvo's max_ratio = 0). Returns a new tensor.
    """
    spec = spec.clone()
    for axis, count, max_width in ((1, freq_mask_count, freq_mask_width), (0, time_mask_count, time_mask_width)):
        length = spec.shape[axis]
        for _ in range(count):
            width = min(_randint(max_width + 1, generator), length)
            first = _randint(length - width + 1, generator)
            spec.narrow(axis, first, width).zero_()
    return spec
