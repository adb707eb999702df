"""Video / spectrogram transforms and the Preprocessor that chains decoding, transforms and the audio front end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mbt.config import build_config
from mbt.media import MediaError, Preprocessor, PreprocessorConfig, kaldi_fbank
from mbt.media import transforms as T
from media_factory import write_av


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def x_ramp(t: int = 4, height: int = 60, width: int = 100) -> torch.Tensor:
    """(T, H, W, 3) float frames whose value is the pixel's column index (its x coordinate)."""
    return torch.arange(width, dtype=torch.float32).view(1, 1, width, 1).expand(t, height, width, 3).contiguous()


def y_ramp(t: int = 4, height: int = 100, width: int = 60) -> torch.Tensor:
    return torch.arange(height, dtype=torch.float32).view(1, height, 1, 1).expand(t, height, width, 3).contiguous()


# ==================================================================== geometry
def test_resize_short_side_keeps_the_aspect_ratio_for_uint8_and_float():
    frames = torch.randint(0, 256, (3, 240, 320, 3), dtype=torch.uint8)
    out = T.resize_short_side(frames, 256)
    assert out.shape == (3, 256, 341, 3) and out.dtype == torch.uint8  # 320 * 256 // 240 = 341, as DMVR
    portrait = T.resize_short_side(frames.transpose(1, 2).float(), 128)
    assert portrait.shape == (3, 170, 128, 3) and portrait.dtype == torch.float32


def test_resizing_a_constant_picture_keeps_its_value():
    frames = torch.full((2, 90, 160, 3), 77, dtype=torch.uint8)
    assert torch.all(T.resize_short_side(frames, 45) == 77) and torch.all(T.resize_short_side(frames, 200) == 77)


@pytest.mark.parametrize("index,expected_left", [(0, 0), (1, 18), (2, 36)])
def test_crops_along_the_long_side_are_left_centre_right(index, expected_left):
    out = T.crop(x_ramp(width=100, height=70), 64, index)
    assert out.shape == (4, 64, 64, 3)
    assert out[0, 0, 0, 0] == expected_left  # (100 - 64) // 2 = 18 for the centre
    assert torch.all(out[0, :, :, 0] == torch.arange(expected_left, expected_left + 64))


def test_crops_of_portrait_frames_go_top_centre_bottom_and_centre_the_short_side():
    for index, top in ((0, 0), (1, 25), (2, 50)):  # long side 100 - 50 = 50 to share out
        out = T.crop(y_ramp(height=100, width=60), 50, index)
        assert out.shape == (4, 50, 50, 3)
        assert torch.all(out[0, :, 0, 0] == torch.arange(top, top + 50))
    assert torch.equal(T.centre_crop(x_ramp(), 60), T.crop(x_ramp(), 60, 1))
    centred = T.centre_crop(x_ramp(height=80, width=80), 40)  # square: both sides centred
    assert centred[0, 0, 0, 0] == 20


def test_crop_refuses_frames_smaller_than_the_crop():
    with pytest.raises(ValueError, match="resize first"):
        T.crop(x_ramp(height=60, width=100), 64)


def test_random_resized_crop_scales_within_the_jitter_and_crops_inside_the_frame():
    frames = x_ramp(t=2, height=100, width=200)
    lefts = set()
    for seed in range(40):
        out = T.random_resized_crop(frames, 64, (1.2, 1.2), gen(seed), short_side=100)
        assert out.shape == (2, 64, 64, 3)
        # width 200 -> int(1.2 * 200) = 240 px: one output pixel spans 200 / 240 source columns
        step = (out[0, 32, 1:, 0] - out[0, 32, :-1, 0]).mean()
        assert step == pytest.approx(200 / 240, abs=0.01)
        assert 0 <= out.min() and out.max() <= 199 + 1e-3  # inside the frame (up to float rounding)
        lefts.add(round(float(out[0, 0, 0, 0]), 1))
    assert len(lefts) > 10  # the crop really moves
    steps = []
    for seed in range(40):
        out = T.random_resized_crop(frames, 64, (0.9, 1.33), gen(seed), short_side=100)
        steps.append(float((out[0, 32, 1:, 0] - out[0, 32, :-1, 0]).mean()))
    # horizontal scale factors in [0.9, 1.33]: steps in [1 / 1.33, 1 / 0.9]
    assert min(steps) >= 1 / 1.33 - 0.01 and max(steps) <= 1 / 0.9 + 0.01 and max(steps) - min(steps) > 0.1


def test_random_resized_crop_never_goes_below_the_crop_size():
    out = T.random_resized_crop(torch.zeros(1, 64, 64, 3), 64, (0.5, 0.6), gen(0))
    assert out.shape == (1, 64, 64, 3)


def test_flip_mirrors_left_right_and_prob_zero_leaves_frames_alone():
    frames = x_ramp()
    assert torch.equal(T.random_flip(frames, gen(0), prob=1.0), frames.flip(2))
    assert T.random_flip(frames, gen(0), prob=1.0)[0, 0, 0, 0] == 99
    assert torch.equal(T.random_flip(frames, gen(0), prob=0.0), frames)
    flipped = sum(not torch.equal(T.random_flip(frames, gen(s)), frames) for s in range(100))
    assert 30 < flipped < 70


def test_to_float_and_model_range():
    frames = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    video = T.to_float(frames)
    assert video.shape == (3, 1, 1, 1) and video.dtype == torch.float32
    assert torch.allclose(video.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    assert torch.allclose(T.to_model_range(video).flatten(), torch.tensor([-1.0, -0.6, 1.0]))
    assert torch.allclose(T.to_model_range(video, (0.0, 1.0)), video)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        T.to_float(torch.zeros(3, 4, 4, 4, dtype=torch.uint8))


# ==================================================================== colour
def test_hsv_conversion_round_trips_and_knows_the_primaries():
    rgb = torch.rand(3, 2, 16, 16, generator=gen(0))
    assert torch.allclose(T.hsv_to_rgb(T.rgb_to_hsv(rgb)), rgb, atol=1e-5)
    primaries = torch.eye(3).view(3, 3, 1, 1)  # red, green, blue pixels
    hsv = T.rgb_to_hsv(primaries).flatten(1)
    assert torch.allclose(hsv[0], torch.tensor([0.0, 1 / 3, 2 / 3]))
    assert torch.all(hsv[1:] == 1.0)


def test_closed_form_saturation_equals_the_hsv_round_trip():
    rgb = torch.rand(3, 2, 16, 16, generator=gen(1))
    for factor in (0.6, 1.4, 5.0):
        hsv = T.rgb_to_hsv(rgb)
        hsv[1] = (hsv[1] * factor).clamp(0, 1)
        assert torch.allclose(T.adjust_saturation(rgb, factor), T.hsv_to_rgb(hsv), atol=1e-5)


def test_color_augment_is_seeded_bounded_and_keeps_greys_grey():
    video = torch.rand(3, 4, 32, 32, generator=gen(2))
    out = T.color_augment(video, gen(7), prob=1.0)
    assert torch.equal(out, T.color_augment(video, gen(7), prob=1.0))
    assert not torch.allclose(out, T.color_augment(video, gen(8), prob=1.0))
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, video)
    assert torch.equal(T.color_augment(video, gen(7), prob=0.0), video)
    grey = torch.rand(1, 4, 32, 32, generator=gen(3)).expand(3, -1, -1, -1)
    grey_out = T.color_augment(grey, gen(7), prob=1.0)  # hue and saturation cannot colour a grey
    assert torch.allclose(grey_out[0], grey_out[1], atol=1e-5) and torch.allclose(grey_out[1], grey_out[2], atol=1e-5)


def test_color_drop_gives_the_luma_grey():
    video = torch.rand(3, 2, 8, 8, generator=gen(4))
    out = T.color_drop(video, gen(0), prob=1.0)
    luma = 0.2989 * video[0] + 0.5870 * video[1] + 0.1140 * video[2]
    assert all(torch.allclose(out[c], luma) for c in range(3))
    assert torch.equal(T.color_drop(video, gen(0), prob=0.0), video)


# ==================================================================== SpecAugment
def zero_runs(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool mask."""
    runs, length = [], 0
    for value in mask.tolist() + [False]:
        if value:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def test_spec_augment_masks_respect_count_and_width():
    spec = torch.ones(100, 64)
    widths_seen = set()
    for seed in range(50):
        out = T.spec_augment(spec, gen(seed), freq_mask_count=2, freq_mask_width=10, time_mask_count=3,
                             time_mask_width=5)
        zero_cols = (out == 0).all(0)
        zero_rows = (out == 0).all(1)
        col_runs, row_runs = zero_runs(zero_cols), zero_runs(zero_rows)
        assert len(col_runs) <= 2 and sum(col_runs) <= 20 and all(r <= 20 for r in col_runs)
        assert len(row_runs) <= 3 and sum(row_runs) <= 15
        # everything zero lies in a masked row or column
        assert torch.all(out[~zero_rows][:, ~zero_cols] == 1)
        widths_seen.update(col_runs)
    assert torch.all(spec == 1)  # the input is not modified
    assert max(widths_seen) > 5  # wide masks do happen


def test_spec_augment_is_seeded_and_off_with_zero_masks():
    spec = torch.randn(50, 32, generator=gen(0))
    args = dict(freq_mask_count=1, freq_mask_width=16, time_mask_count=1, time_mask_width=8)
    assert torch.equal(T.spec_augment(spec, gen(5), **args), T.spec_augment(spec, gen(5), **args))
    assert torch.equal(T.spec_augment(spec, gen(5), 0, 16, 0, 8), spec)


def test_roll_time_shifts_within_the_bound_and_loses_no_frame():
    spec = torch.arange(40 * 3, dtype=torch.float32).reshape(40, 3)
    shifts = set()
    for seed in range(60):
        out = T.roll_time(spec, gen(seed), 5)
        shift = int(torch.nonzero(spec[:, 0] == out[0, 0])[0]) if out[0, 0] in spec[:, 0] else None
        shift = (-shift) % 40  # out[t] = spec[t - shift]
        assert torch.equal(out, torch.roll(spec, shift, 0))  # a pure roll: every frame kept, none added
        shifts.add(shift if shift <= 20 else shift - 40)
    assert shifts <= set(range(-5, 6)) and len(shifts) >= 8  # both ways, up to the bound
    assert torch.equal(T.roll_time(spec, gen(3), 5), T.roll_time(spec, gen(3), 5))


def test_time_shift_is_applied_only_in_training(clip_file):
    base = Preprocessor(small_config(freq_mask_count=0))
    rolled = Preprocessor(small_config(freq_mask_count=0, time_shift=30))
    assert torch.equal(base(clip_file).inputs["audio"], rolled(clip_file).inputs["audio"])
    train = [rolled(clip_file, train=True, generator=gen(s), position=0.5).inputs["audio"] for s in range(4)]
    plain = base(clip_file, train=True, generator=gen(0), position=0.5).inputs["audio"]
    assert any(not torch.equal(t, plain) for t in train)
    assert all(torch.equal(torch.sort(t.flatten())[0], torch.sort(plain.flatten())[0]) for t in train)


# ==================================================================== Preprocessor
def small_config(**overrides) -> PreprocessorConfig:
    values = dict(num_frames=8, fps=25.0, frame_stride=2, image_size=64, short_side=72, num_mel_bins=64,
                  spec_frames=200, spec_mean=-4.0, spec_std=4.0)
    return PreprocessorConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre")
    return write_av(folder / "clip.mp4", seconds=3.0, size=(160, 120), fps=25, sample_rate=44100, channels=2).path


def test_preprocessor_eval_gives_model_inputs_and_is_deterministic(clip_file):
    pre = Preprocessor(small_config())
    sample = pre(clip_file, train=False)
    video, audio = sample.inputs["video"], sample.inputs["audio"]
    assert video.shape == (3, 8, 64, 64) and video.dtype == torch.float32
    assert audio.shape == (200, 64) and audio.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1 and video.min() < -0.9 and video.max() > 0.9
    assert not sample.video_padded and not sample.audio_padded and sample.warnings == []
    again = pre(clip_file, train=False)
    assert all(torch.equal(sample.inputs[k], again.inputs[k]) for k in ("video", "audio"))
    left = pre(clip_file, train=False, crop=0).inputs["video"]
    assert not torch.equal(left, video)


def test_preprocessor_train_is_reproducible_from_the_generator(clip_file):
    pre = Preprocessor(small_config())
    a = pre(clip_file, train=True, generator=gen(11))
    b = pre(clip_file, train=True, generator=gen(11))
    c = pre(clip_file, train=True, generator=gen(12))
    assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in ("video", "audio"))
    assert not torch.equal(a.inputs["video"], c.inputs["video"])
    assert a.inputs["video"].shape == (3, 8, 64, 64) and a.inputs["audio"].shape == (200, 64)


def test_preprocessor_audio_is_the_normalised_fbank_of_the_window(clip_file):
    cfg = small_config()
    pre = Preprocessor(cfg)
    # the window holds exactly spec_frames Kaldi frames: 199 shifts of 10 ms + one 25 ms frame
    assert cfg.audio_seconds == pytest.approx(2.015)
    wave = torch.sin(torch.arange(32240) / 16000 * 2 * torch.pi * 300) * 0.2 + 0.05
    spec = pre.spectrogram(wave)
    expected = (kaldi_fbank(wave - wave.mean(), num_mel_bins=64) - cfg.spec_mean) / cfg.spec_std
    assert expected.shape == (200, 64) and torch.allclose(spec, expected)
    # a shorter waveform: the missing frames are 0 before normalisation (AST's fbank padding)
    short = pre.spectrogram(wave[:16000])
    short_fbank = kaldi_fbank(wave[:16000] - wave[:16000].mean(), num_mel_bins=64)
    assert torch.allclose(short[:98], (short_fbank - cfg.spec_mean) / cfg.spec_std)
    assert torch.all(short[98:] == (0 - cfg.spec_mean) / cfg.spec_std)
    logmel = Preprocessor(small_config(audio_frontend="logmel")).spectrogram(wave)
    assert logmel.shape == (200, 64) and not torch.allclose(logmel, spec)


def test_preprocessor_reports_padding_and_a_missing_modality(tmp_path):
    pre = Preprocessor(small_config())
    short = write_av(tmp_path / "short.mp4", seconds=0.4, size=(160, 120)).path
    sample = pre(short, train=False)
    assert sample.video_padded and sample.audio_padded and len(sample.warnings) == 2
    assert sample.inputs["video"].shape == (3, 8, 64, 64)
    video_only = write_av(tmp_path / "v.mp4", audio=False, seconds=1.0, size=(160, 120)).path
    with pytest.raises(MediaError) as info:
        pre(video_only, train=False)
    assert info.value.kind == "no_audio"
    assert set(pre(video_only, train=False, modalities=("video",)).inputs) == {"video"}
    silent = write_av(tmp_path / "silent.mp4", seconds=3.0, size=(160, 120), audio_fn=np.zeros_like).path
    assert any("silent" in w for w in pre(silent, train=False).warnings)


def test_preprocessor_config_from_run_config_and_json_round_trip(tmp_path):
    cfg = build_config({"model": {"preset": "mbt-base"}, "data": {"normalisation": "scenic", "fps": 30.0}})
    pre = cfg.preprocessor(class_names=["dog", "cat"])
    assert (pre.num_frames, pre.image_size, pre.short_side, pre.num_mel_bins, pre.spec_frames) == (32, 224, 256,
                                                                                                   128, 800)
    assert (pre.spec_mean, pre.spec_std, pre.fps) == (1.102, 2.762, 30.0)
    assert pre.audio_seconds == pytest.approx(8.015)
    path = pre.save(tmp_path / "model")
    assert path.name == "preprocessor.json" and json.loads(path.read_text())["class_names"] == ["dog", "cat"]
    loaded = PreprocessorConfig.load(tmp_path / "model")
    assert loaded == pre and isinstance(loaded.scale_jitter, tuple) and isinstance(loaded.modalities, tuple)
    tiny = build_config({"model": {"preset": "mbt-tiny"}}).preprocessor()
    assert tiny.short_side == 128  # 112 * 8 / 7


def test_preprocessor_config_errors_name_the_problem(tmp_path):
    d = small_config().to_dict()
    with pytest.raises(ValueError, match="colour"):
        PreprocessorConfig.from_dict({**d, "colour": 1})
    with pytest.raises(ValueError, match="spec_std"):
        PreprocessorConfig.from_dict({k: v for k, v in d.items() if k != "spec_std"})
    with pytest.raises(ValueError, match="flow"):
        small_config(modalities=("video", "flow"))
    with pytest.raises(FileNotFoundError, match="preprocessor"):
        PreprocessorConfig.load(tmp_path)
    (tmp_path / "preprocessor.json").write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor.json"):
        PreprocessorConfig.load(tmp_path)
