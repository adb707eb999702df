"""The official audio window (`data.audio_window: proportional`): in training it starts at the video window's
proportion of the clip, in evaluation each stream's window sits on its own, and past the clip's end the audio loops
round to its start (DMVR `sample_sequence`, repeat_sequence=True) instead of being padded with silence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbt.media import decode_clip
from mbt.media import preprocess as preprocess_module
from mbt.media.preprocess import Preprocessor
from mbt.media.settings import PreprocessorConfig
from media_factory import write_av

RATE = 16000
SIZE = (64, 48)


def ramp(t: np.ndarray) -> np.ndarray:
    """Every sample says when it was recorded: 0.1 at 0 s rising 0.25 a second."""
    return 0.1 + 0.25 * t


@pytest.fixture(scope="module")
def clip3s(tmp_path_factory):
    # lossless audio so that the samples can be compared with the ramp
    path = tmp_path_factory.mktemp("window") / "ramp.mkv"
    return write_av(path, acodec="pcm_s16le", seconds=3.0, size=SIZE, fps=25, sample_rate=RATE, audio_fn=ramp).path


def expected_wave(start: float, seconds: float, span: tuple[float, float]) -> np.ndarray:
    times = span[0] + (start - span[0] + np.arange(round(seconds * RATE)) / RATE) % (span[1] - span[0])
    return ramp(times)


def assert_wave(wave: torch.Tensor, expected: np.ndarray) -> None:
    assert wave.shape == expected.shape
    error = np.abs(wave.numpy() - expected)
    jumps = np.flatnonzero(np.abs(np.diff(expected)) > 0.1)  # a wrap: a sample either side may belong to either
    for j in jumps:
        error[max(j - 2, 0):j + 3] = 0
    assert error.max() < 2e-3


@pytest.mark.parametrize("position", [0.0, 0.4, 1.0])
def test_training_audio_starts_with_the_video_window_and_loops_past_the_end(clip3s, position):
    clip = decode_clip(clip3s, num_frames=8, fps=25, frame_stride=1, audio_seconds=2.0, position=position,
                       audio_window="synced")
    assert clip.video_start == pytest.approx(position * (3.0 - 0.32))
    assert clip.audio_start == pytest.approx(clip.video_start)  # the same proportion of the clip
    assert not clip.audio_padded
    assert_wave(clip.audio, expected_wave(clip.audio_start, 2.0, (0.0, 3.0)))
    if position >= 0.4:  # 2 s from >= 1.07 s runs past 3 s: the start of the clip follows, not silence
        assert clip.audio[-100:].min() > 0.09 and clip.audio[-100:].max() < 0.85


def test_evaluation_windows_sit_evenly_in_the_audio_alone(clip3s):
    for position in (0.0, 0.5, 1.0):
        clip = decode_clip(clip3s, num_frames=8, fps=25, frame_stride=1, audio_seconds=2.0, position=position,
                           audio_window="looped")
        assert clip.audio_start == pytest.approx(position * 1.0)  # DMVR linspace offsets over [0, L - window]
        assert_wave(clip.audio, expected_wave(clip.audio_start, 2.0, (0.0, 3.0)))


def test_a_clip_shorter_than_the_window_loops_instead_of_silence(tmp_path):
    path = write_av(tmp_path / "short.mkv", acodec="pcm_s16le", seconds=1.0, size=SIZE, fps=25, sample_rate=RATE,
                    audio_fn=ramp).path
    looped = decode_clip(path, num_frames=8, fps=25, frame_stride=1, audio_seconds=2.5, audio_window="looped")
    assert looped.audio_start == 0.0 and not looped.audio_padded
    assert_wave(looped.audio, expected_wave(0.0, 2.5, (0.0, 1.0)))
    contained = decode_clip(path, num_frames=8, fps=25, frame_stride=1, audio_seconds=2.5)
    assert contained.audio_padded and torch.all(contained.audio[RATE + 800:] == 0)  # the other setting: silence


def test_a_segment_loops_within_its_own_bounds(clip3s):
    clip = decode_clip(clip3s, num_frames=4, fps=25, frame_stride=1, audio_seconds=1.5, start=1.0, end=2.0,
                       position=0.5, audio_window="looped")
    assert clip.audio_start == pytest.approx(1.0)
    assert_wave(clip.audio, expected_wave(1.0, 1.5, (1.0, 2.0)))


def test_the_preprocessor_asks_for_the_official_windows(monkeypatch):
    asked = []

    def fake_decode(path, **kwargs):
        asked.append(kwargs["audio_window"])
        raise RuntimeError("stop")

    monkeypatch.setattr(preprocess_module, "decode_clip", fake_decode)
    for setting, train, modalities, expected in [("proportional", True, ("video", "audio"), "synced"),
                                                 ("proportional", False, ("video", "audio"), "looped"),
                                                 ("proportional", True, ("audio",), "looped"),
                                                 ("contained", True, ("video", "audio"), "contained")]:
        cfg = PreprocessorConfig(spec_mean=0.0, spec_std=1.0, audio_window=setting)
        with pytest.raises(RuntimeError, match="stop"):
            Preprocessor(cfg)("x.mp4", train=train, generator=torch.Generator().manual_seed(0), modalities=modalities)
        assert asked[-1] == expected, (setting, train, modalities)
