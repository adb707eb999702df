"""Audio front ends: `kaldi_fbank` agrees with Kaldi (kaldi-native-fbank) and keeps torchaudio's 128-bin quirk."""

from __future__ import annotations

import math

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch

from mbt.media import kaldi_fbank, log_mel
from mbt.media.fbank import EPSILON, kaldi_mel_banks

SR = 16000


def knf_fbank(wave: np.ndarray, num_bins: int, window_type: str = "hanning", use_energy: bool = False,
              htk_compat: bool = False, energy_floor: float = 0.0) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0  # its default dithers
    opts.frame_opts.samp_freq = SR
    opts.frame_opts.window_type = window_type
    opts.mel_opts.num_bins = num_bins
    opts.use_energy = use_energy
    opts.htk_compat = htk_compat
    opts.energy_floor = energy_floor
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SR, wave.tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def signals(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Real-looking test signals of n samples in [-1, 1], each over a -60 dB noise floor like a recording."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    floor = 1e-3 * rng.standard_normal(n)
    return {
        "noise": 0.3 * rng.standard_normal(n),
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t) + floor,
        "chirp": 0.4 * np.sin(2 * np.pi * (100 * t + 1500 * t**2)) + floor,
        "speech_like": 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) * np.sign(np.sin(2 * np.pi * 150 * t)) + floor,
    }


def resolvable(feats: np.ndarray) -> np.ndarray:
    """Entries within 12 nats (52 dB) of their frame's loudest bin. Far below that, float32 FFT rounding of the
    loud bins dominates and two float32 implementations (or one and a float64 one) differ by more than 1e-3."""
    return feats > feats.max(axis=1, keepdims=True) - 12.0


@pytest.mark.parametrize("n", [400, 1234, 16000, 48000])
@pytest.mark.parametrize("num_bins", [23, 40, 80])
def test_kaldi_fbank_matches_kaldi_native_fbank(n, num_bins):
    for name, wave in signals(n).items():
        wave = wave.astype(np.float32)
        ours = kaldi_fbank(torch.from_numpy(wave), num_mel_bins=num_bins).numpy()
        theirs = knf_fbank(wave, num_bins)
        assert ours.shape == theirs.shape == (1 + (n - 400) // 160, num_bins), name
        # broadband noise: every entry is compared; narrowband signals: the float32-resolvable ones
        mask = np.ones_like(theirs, bool) if name == "noise" else resolvable(theirs)
        diff = np.abs(ours - theirs)[mask].max()
        assert diff <= 1e-3, f"{name}, {n} samples, {num_bins} bins: max abs diff {diff}"


@pytest.mark.parametrize("window_type", ["povey", "hamming", "rectangular"])
def test_kaldi_fbank_other_windows_match_kaldi(window_type):
    wave = signals(8000)["noise"].astype(np.float32)
    ours = kaldi_fbank(torch.from_numpy(wave), num_mel_bins=40, window_type=window_type).numpy()
    assert np.abs(ours - knf_fbank(wave, 40, window_type=window_type)).max() <= 1e-3


@pytest.mark.parametrize("htk_compat", [True, False])
def test_energy_column_goes_last_with_htk_compat_as_in_kaldi(htk_compat):
    wave = signals(8000)["speech_like"].astype(np.float32)
    ours = kaldi_fbank(torch.from_numpy(wave), num_mel_bins=40, use_energy=True, htk_compat=htk_compat,
                       energy_floor=0.0).numpy()
    theirs = knf_fbank(wave, 40, use_energy=True, htk_compat=htk_compat)
    assert ours.shape == (48, 41)
    assert np.abs(ours - theirs).max() <= 1e-3


def test_waveform_is_not_rescaled_so_doubling_it_adds_log_4():
    # AST feeds [-1, 1] waveforms straight in; a hidden x32768 would shift every log energy by log(32768^2).
    wave = torch.from_numpy(signals(16000)["noise"].astype(np.float32))
    base = kaldi_fbank(wave, num_mel_bins=64)
    assert torch.allclose(kaldi_fbank(2 * wave, num_mel_bins=64) - base, torch.full_like(base, math.log(4.0)),
                          atol=1e-3)


def expected_empty_filters(num_bins: int, fft_size: int = 512, low: float = 20.0, high: float = SR / 2) -> set[int]:
    """Filters whose mel triangle (left, right) contains no FFT bin centre, worked out in float64 from Kaldi's
    definition: num_bins + 2 equally spaced HTK-mel edges, bin k at k * SR / fft_size (Nyquist excluded)."""
    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)
    edges = np.linspace(mel(low), mel(high), num_bins + 2)
    bin_mels = mel(np.arange(fft_size // 2) * SR / fft_size)
    empty = set()
    for i in range(num_bins):
        inside = (bin_mels > edges[i]) & (bin_mels < edges[i + 2])
        # a bin centre within 1e-4 mel of an edge would make float32 and float64 disagree; none is that close
        assert np.abs(bin_mels[:, None] - edges[[i, i + 2]][None]).min() > 1e-4
        if not inside.any():
            empty.add(i)
    return empty


@pytest.mark.parametrize("num_bins", [40, 80, 128, 160])
def test_mel_filters_between_fft_bins_are_all_zero(num_bins):
    banks = kaldi_mel_banks(num_bins, 512, SR)
    assert banks.shape == (num_bins, 257)
    assert torch.all(banks[:, -1] == 0)  # the Nyquist column is padding
    zero_rows = {int(i) for i in torch.nonzero(banks.sum(1) == 0).flatten()}
    assert zero_rows == expected_empty_filters(num_bins)


def test_kaldi_native_fbank_refuses_exactly_the_bin_counts_with_empty_filters():
    wave = signals(4000)["noise"].astype(np.float32)
    for num_bins in (80, 128):
        has_empty = bool(expected_empty_filters(num_bins))
        try:
            knf_fbank(wave, num_bins)
            refused = False
        except ValueError:
            refused = True
        assert refused == has_empty, num_bins
    assert expected_empty_filters(128), "the 128-bin quirk AST/CAV-MAE rely on should exist"


def test_empty_filters_give_log_eps_at_128_bins_like_torchaudio():
    wave = torch.from_numpy(signals(16000)["noise"].astype(np.float32))
    feats = kaldi_fbank(wave, num_mel_bins=128)
    assert feats.shape == (98, 128)
    empty = sorted(expected_empty_filters(128))
    assert torch.all(feats[:, empty] == math.log(EPSILON))
    others = [i for i in range(128) if i not in empty]
    assert torch.all(feats[:, others] > math.log(EPSILON) + 1)  # loud noise reaches every other filter


def test_kaldi_fbank_rejects_multichannel_and_too_short_input():
    with pytest.raises(ValueError, match="mono"):
        kaldi_fbank(torch.zeros(2, 16000))
    with pytest.raises(ValueError, match="399"):
        kaldi_fbank(torch.zeros(399))
    assert kaldi_fbank(torch.zeros(1, 400)).shape == (1, 128)  # torchaudio's (1, N) shape is accepted


def test_log_mel_frames_match_kaldi_and_no_filter_is_empty():
    wave = torch.from_numpy(signals(16000)["noise"].astype(np.float32))
    feats = log_mel(wave, num_mel_bins=128)
    assert feats.shape == kaldi_fbank(wave, num_mel_bins=128).shape
    assert torch.isfinite(feats).all()
    assert feats.min() > math.log(1e-6) + 1  # every filter sees some of the noise


def test_log_mel_puts_a_tone_in_the_mel_bin_of_its_frequency():
    t = torch.arange(SR) / SR
    for freq in (300.0, 1000.0, 4000.0):
        feats = log_mel(0.5 * torch.sin(2 * math.pi * freq * t), num_mel_bins=64)
        peak = int(feats.mean(0).argmax())
        mel = 1127.0 * np.log1p(np.array([0.0, SR / 2]) / 700.0)
        centre_mel = mel[0] + (peak + 1) * (mel[1] - mel[0]) / 65
        centre = 700.0 * (math.exp(centre_mel / 1127.0) - 1.0)
        assert abs(centre - freq) / freq < 0.1, (freq, centre)
