"""Audio front ends in pure torch: Kaldi's log-mel filterbank (as AST / CAV-MAE compute it) and a plain log-mel.

`kaldi_fbank` reproduces `torchaudio.compliance.kaldi.fbank` step by step (torchaudio does not exist for the
torch this project pins), including its float32 mel-bank construction. That construction has a quirk the
pretrained AST / CAV-MAE statistics depend on: with 128 bins on a 512-point FFT at 16 kHz the lowest triangles are
narrower than an FFT bin and contain no bin centre, so their filters are all zero and their log is log(eps)
(`kaldi_mel_banks(...).sum(1) == 0` tells which). Kaldi itself refuses such settings; torchaudio does not.

Inputs are waveforms in [-1, 1] exactly as torchaudio's loader gives them: AST calls fbank on that waveform (after
subtracting its mean) with no 32768 scaling, so neither do we.
"""

from __future__ import annotations

import math

import torch

# numeric_limits<float>::epsilon(): the floor of every log, as in Kaldi and torchaudio
EPSILON = torch.finfo(torch.float32).eps
WINDOW_TYPES = ("hamming", "hanning", "povey", "rectangular", "blackman")


def _mel(freq: float | torch.Tensor) -> float | torch.Tensor:
    """HTK mel scale, in the operation order torchaudio uses (the float32 rounding decides empty filters)."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


def _window(window_type: str, size: int, dtype: torch.dtype, blackman_coeff: float = 0.42) -> torch.Tensor:
    if window_type == "hanning":
        return torch.hann_window(size, periodic=False, dtype=dtype)
    if window_type == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, dtype=dtype)
    if window_type == "povey":  # like hanning but goes to zero at the edges
        return torch.hann_window(size, periodic=False, dtype=dtype).pow(0.85)
    if window_type == "rectangular":
        return torch.ones(size, dtype=dtype)
    if window_type == "blackman":
        a = 2 * math.pi / (size - 1)
        n = torch.arange(size, dtype=dtype)
        return blackman_coeff - 0.5 * torch.cos(a * n) + (0.5 - blackman_coeff) * torch.cos(2 * a * n)
    raise ValueError(f"window_type must be one of {WINDOW_TYPES}, got {window_type!r}")


def _frames(wave: torch.Tensor, size: int, shift: int, snip_edges: bool) -> torch.Tensor:
    """(num_frames, size) view of the waveform. snip_edges=False reflects the ends (Kaldi's [2,1,0,0,1,2])."""
    if snip_edges:
        if wave.numel() < size:
            return wave.new_empty((0, size))
        count = 1 + (wave.numel() - size) // shift
    else:
        count = (wave.numel() + shift // 2) // shift
        pad = size // 2 - shift // 2
        reversed_wave = torch.flip(wave, [0])
        if pad > 0:
            wave = torch.cat((reversed_wave[-pad:], wave, reversed_wave))
        else:
            wave = torch.cat((wave[-pad:], reversed_wave))
    return wave.as_strided((count, size), (shift * wave.stride(0), wave.stride(0)))


def _as_mono(wave: torch.Tensor) -> torch.Tensor:
    if wave.dim() == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.dim() != 1:
        raise ValueError(f"expected a mono waveform of shape (N,) or (1, N), got {tuple(wave.shape)}")
    return wave if wave.is_floating_point() else wave.float()


def kaldi_mel_banks(num_bins: int, padded_window_size: int, sample_rate: float, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> torch.Tensor:
    """Kaldi's triangular HTK-mel filters, (num_bins, padded_window_size // 2 + 1), float32, as torchaudio builds
    them (`get_mel_banks` + the zero Nyquist column). Rows of zeros are filters that fall between FFT bins."""
    if num_bins <= 3:
        raise ValueError(f"need more than 3 mel bins, got {num_bins}")
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not (0.0 <= low_freq < nyquist and 0.0 < high_freq <= nyquist and low_freq < high_freq):
        raise ValueError(f"bad mel range: low_freq {low_freq}, high_freq {high_freq}, Nyquist {nyquist}")
    fft_bin_width = sample_rate / padded_window_size
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    # num_bins + 1 intervals: the outer triangles spread to the range's edges
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + index * delta
    centre = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    mel = _mel(fft_bin_width * torch.arange(float(padded_window_size // 2))).unsqueeze(0)
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    return torch.nn.functional.pad(banks, (0, 1))


def kaldi_fbank(
    wave: torch.Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
    window_type: str = "hanning",
    htk_compat: bool = True,
    use_energy: bool = False,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    preemphasis: float = 0.97,
    remove_dc_offset: bool = True,
    round_to_power_of_two: bool = True,
    snip_edges: bool = True,
    use_log_fbank: bool = True,
    energy_floor: float = 1.0,
) -> torch.Tensor:
    """Kaldi log-mel filterbank of a mono waveform in [-1, 1]: (frames, num_mel_bins [+1 energy]).

    Same result as `torchaudio.compliance.kaldi.fbank(wave[None], sample_frequency=sample_rate, ...)` with the
    same options; the defaults are the AST / CAV-MAE call (htk_compat, hanning, no energy, no dither, 25 / 10 ms).
    With snip_edges, frames = 1 + (N - window) // shift. Dither draws from torch's global generator, as torchaudio.
    """
    wave = _as_mono(wave)
    dtype = wave.dtype
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    padded_size = 2 ** (window_size - 1).bit_length() if round_to_power_of_two else window_size
    if not 2 <= window_size <= wave.numel():
        raise ValueError(f"a {frame_length_ms} ms frame is {window_size} samples; the waveform has {wave.numel()}")
    if window_shift <= 0 or padded_size % 2 or not 0.0 <= preemphasis <= 1.0:
        raise ValueError(f"bad framing: shift {window_shift} samples, FFT size {padded_size}, "
                         f"preemphasis {preemphasis}")

    frames = _frames(wave, window_size, window_shift, snip_edges)
    if dither != 0.0:
        frames = frames + torch.randn(frames.shape, dtype=dtype) * dither
    if remove_dc_offset:
        frames = frames - frames.mean(dim=1, keepdim=True)
    eps = torch.tensor(EPSILON, dtype=dtype)
    if use_energy:
        # Kaldi's raw energy: before pre-emphasis and windowing
        log_energy = torch.max(frames.pow(2).sum(1), eps).log()
        if energy_floor != 0.0:
            log_energy = torch.max(log_energy, torch.tensor(math.log(energy_floor), dtype=dtype))
    if preemphasis != 0.0:
        # x[i] -= k * x[i - 1], with x[-1] := x[0]
        previous = torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)[:, :-1]
        frames = frames - preemphasis * previous
    frames = frames * _window(window_type, window_size, dtype).unsqueeze(0)
    if padded_size != window_size:
        frames = torch.nn.functional.pad(frames, (0, padded_size - window_size))

    power = torch.fft.rfft(frames).abs().pow(2.0)
    banks = kaldi_mel_banks(num_mel_bins, padded_size, sample_rate, low_freq, high_freq).to(dtype)
    feats = torch.mm(power, banks.T)
    if use_log_fbank:
        feats = torch.max(feats, eps).log()
    if use_energy:
        energy = log_energy.unsqueeze(1)
        feats = torch.cat((feats, energy) if htk_compat else (energy, feats), dim=1)
    return feats


def log_mel(
    wave: torch.Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    low_freq: float = 0.0,
    high_freq: float = 0.0,
    floor: float = 1e-6,
) -> torch.Tensor:
    """A plain power log-mel: log(mel(|STFT|^2) + floor), (frames, num_mel_bins).

    Periodic Hann window, FFT size the next power of two, HTK-mel triangles sampled at the FFT bin frequencies
    (as `tf.signal.linear_to_mel_weight_matrix`, which the DMVR/scenic log-mel uses), no pre-emphasis and no DC
    removal. Frames are placed as Kaldi's (snip edges), so both front ends give 100 frames a second. Unlike Kaldi's,
    a filter too narrow to contain an FFT bin takes the nearest bin instead of being all zero.
    """
    wave = _as_mono(wave)
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    if not 2 <= window_size <= wave.numel():
        raise ValueError(f"a {frame_length_ms} ms frame is {window_size} samples; the waveform has {wave.numel()}")
    fft_size = 2 ** (window_size - 1).bit_length()
    frames = _frames(wave, window_size, window_shift, snip_edges=True)
    frames = frames * torch.hann_window(window_size, periodic=True, dtype=wave.dtype)
    power = torch.fft.rfft(frames, n=fft_size).abs().pow(2.0)

    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    edges = torch.linspace(_mel(low_freq), _mel(high), num_mel_bins + 2, dtype=torch.float64)
    bin_mels = _mel(torch.arange(fft_size // 2 + 1, dtype=torch.float64) * (sample_rate / fft_size))
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    banks = torch.clamp(torch.min((bin_mels - left) / (centre - left), (right - bin_mels) / (right - centre)), min=0)
    empty = banks.sum(1) == 0
    banks[empty, (bin_mels[None] - centre[empty]).abs().argmin(1)] = 1.0
    return torch.log(power @ banks.T.to(power.dtype) + floor)
