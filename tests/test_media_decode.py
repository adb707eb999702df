"""Decoding clip windows: which source frames come back, audio timing/level/rate, padding, and every error kind."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

import numpy as np
import pytest
import torch

from mbt.media import MediaError, decode_clip, probe
from mbt.media import decode as decode_module
from media_factory import marker_frame, read_marker, write_av

SIZE = (128, 96)
SECONDS = 3.0
FORMATS = {
    # name: (file name, write_av options)
    "mp4-h264-aac": ("a.mp4", dict(vcodec="libx264", acodec="aac", fps=25, sample_rate=16000, channels=1)),
    "webm-vp9-opus": ("b.webm", dict(vcodec="libvpx-vp9", acodec="libopus", fps=30, sample_rate=48000, channels=2)),
    "mkv-h264-pcm-6ch": ("c.mkv", dict(vcodec="libx264", acodec="pcm_s16le", fps=Fraction(30000, 1001),
                                       sample_rate=44100, channels=6, gop=40)),
    "mkv-vfr-pcm": ("d.mkv", dict(vcodec="libx264", acodec="pcm_s16le", fps=25, vfr=True, sample_rate=16000)),
    "mp4-vfr-aac-stereo": ("e.mp4", dict(vcodec="libx264", acodec="aac", fps=25, vfr=True, sample_rate=44100,
                                         channels=2)),
}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return {name: write_av(folder / file, seconds=SECONDS, size=SIZE, **opts)
            for name, (file, opts) in FORMATS.items()}


def acceptable_frames(frame_times: list[float], target: float) -> set[int]:
    """Source frames nearest to `target`; two when they tie within the containers' 1 ms timestamp rounding."""
    distance = np.abs(np.asarray(frame_times) - target)
    return set(np.flatnonzero(distance <= distance.min() + 2e-3).tolist())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("window", [(8, 25.0, 2), (12, 30.0, 1), (6, 12.5, 1)], ids=["25fps-s2", "30fps", "12.5fps"])
@pytest.mark.parametrize("position", [0.0, 0.37, 1.0])
def test_decode_returns_the_source_frames_nearest_each_target_time(media, fmt, window, position):
    written = media[fmt]
    num_frames, fps, stride = window
    clip = decode_clip(written.path, num_frames=num_frames, fps=fps, frame_stride=stride, audio_seconds=1.0,
                       position=position, audio=False)
    duration = probe(written.path).duration
    # the documented placement: span [0, duration], the window at relative `position`
    assert clip.video_start == pytest.approx(position * (duration - num_frames * stride / fps), abs=1e-6)
    assert clip.video.shape == (num_frames, SIZE[1], SIZE[0], 3) and clip.video.dtype == torch.uint8
    assert not clip.video_padded and clip.audio is None
    for i, frame in enumerate(clip.video.numpy()):
        target = clip.video_start + i * stride / fps
        assert read_marker(frame) in acceptable_frames(written.frame_times, target), (i, target)


@pytest.mark.parametrize("fmt", FORMATS)
def test_audio_is_mono_float_at_the_requested_rate(media, fmt):
    written = media[fmt]
    for rate in (16000, 22050):
        clip = decode_clip(written.path, num_frames=4, fps=25, frame_stride=1, audio_seconds=2.0, sample_rate=rate,
                           position=0.5, video=False)
        wave = clip.audio.numpy()
        assert clip.video is None and wave.dtype == np.float32 and wave.shape == (2 * rate,)
        assert np.abs(wave).max() <= 1.0 and not clip.audio_padded
        # the 440 Hz tone is still 440 Hz: resampling used the source's real rate
        spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
        assert abs(np.argmax(spectrum) * rate / len(wave) - 440.0) < 2.0


def test_channels_are_averaged_so_surround_stays_in_range(media):
    # the same 0.3-amplitude tone on all 6 PCM channels: their mean is that tone (FFmpeg's own mono downmix of
    # 5.1 would add the channels with centre-mix gains and exceed full scale)
    clip = decode_clip(media["mkv-h264-pcm-6ch"].path, num_frames=4, fps=25, frame_stride=1, audio_seconds=2.0,
                       video=False)
    rms = float(clip.audio.pow(2).mean().sqrt())
    assert rms == pytest.approx(0.3 / np.sqrt(2), rel=0.03)


FLASH_FRAME, FPS = 50, 25  # the picture turns white and a 1 kHz beep starts at 2.0 s


def flash(i: int, t: float) -> np.ndarray:
    return np.full((SIZE[1], SIZE[0], 3), 255 if i >= FLASH_FRAME else 0, np.uint8)


def beep(t: np.ndarray) -> np.ndarray:
    return np.where(t >= FLASH_FRAME / FPS, 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0)


@pytest.mark.parametrize("opts", [dict(acodec="aac", sample_rate=16000),
                                  dict(vcodec="libvpx-vp9", acodec="libopus", sample_rate=48000, channels=2),
                                  dict(acodec="pcm_s16le", sample_rate=44100, channels=6)],
                         ids=["mp4-aac", "webm-opus", "mkv-pcm"])
def test_audio_onset_and_flash_frame_agree_within_a_frame(tmp_path, opts):
    suffix = {"aac": ".mp4", "libopus": ".webm", "pcm_s16le": ".mkv"}[opts["acodec"]]
    path = write_av(tmp_path / f"flash{suffix}", seconds=4.0, size=SIZE, fps=FPS, frame_fn=flash, audio_fn=beep,
                    **opts).path
    for position in (0.45, 0.5, 0.62):
        clip = decode_clip(path, num_frames=25, fps=FPS, frame_stride=1, audio_seconds=2.0, position=position)
        white = clip.video.float().mean(dim=(1, 2, 3)) > 127
        assert white.any() and not white[0], "the window should contain the flash"
        video_onset = clip.video_start + int(white.nonzero()[0]) / FPS
        loud = clip.audio.abs() > 0.1
        assert loud.any() and not loud[0]
        audio_onset = clip.audio_start + int(loud.nonzero()[0]) / 16000
        assert abs(video_onset - audio_onset) <= 1 / FPS, position
        assert abs(audio_onset - FLASH_FRAME / FPS) <= 1 / FPS, position


def test_short_file_repeats_the_last_frame_and_pads_audio_with_silence(tmp_path):
    written = write_av(tmp_path / "short.mp4", seconds=1.0, size=SIZE, fps=25)
    clip = decode_clip(written.path, num_frames=16, fps=25, frame_stride=2, audio_seconds=3.0)
    assert clip.video_padded and clip.audio_padded
    assert clip.video_start == 0.0 and clip.audio_start == 0.0  # a window longer than the media starts with it
    markers = [read_marker(f) for f in clip.video.numpy()]
    assert markers[:13] == list(range(0, 25, 2))  # frames exist up to 0.96 s
    assert markers[13:] == [24] * 3  # the last frame, repeated
    assert clip.audio.shape == (48000,)
    assert clip.audio[:16000 - 800].abs().max() > 0.2  # the tone, then...
    assert torch.all(clip.audio[16000 + 800:] == 0)  # ...silence after the end


def test_a_window_longer_than_a_segment_contains_it_when_the_media_allows(tmp_path):
    written = write_av(tmp_path / "long.mp4", seconds=6.0, size=SIZE, fps=25)
    clip = decode_clip(written.path, num_frames=25, fps=25, frame_stride=1, audio_seconds=2.0, start=3.0, end=3.5)
    # a 1 s video window centred on the 0.5 s segment [3.0, 3.5]
    assert clip.video_start == pytest.approx(2.75) and clip.audio_start == pytest.approx(2.25)
    assert not clip.video_padded and not clip.audio_padded
    assert read_marker(clip.video[0].numpy()) == 69  # 2.76 s is the frame nearest 2.75 s


def test_segment_bounds_place_both_windows_inside_the_segment(tmp_path):
    written = write_av(tmp_path / "seg.mp4", seconds=6.0, size=SIZE, fps=25)
    for position in (0.0, 1.0):
        clip = decode_clip(written.path, num_frames=10, fps=25, frame_stride=1, audio_seconds=1.0, start=1.0,
                           end=4.0, position=position)
        assert clip.video_start == pytest.approx(1.0 + position * 2.6)
        assert clip.audio_start == pytest.approx(1.0 + position * 2.0)
        assert read_marker(clip.video[0].numpy()) == round(clip.video_start * 25)


def test_decoding_seeks_to_the_keyframe_before_the_window_and_stops_after_it(tmp_path, monkeypatch):
    written = write_av(tmp_path / "gop.mp4", seconds=10.0, size=SIZE, fps=25, gop=50, audio=False)
    decoded_times = []
    decoded = decode_module._decoded

    def counting(container, stream):
        for frame in decoded(container, stream):
            decoded_times.append(frame.time)
            yield frame

    monkeypatch.setattr(decode_module, "_decoded", counting)
    clip = decode_clip(written.path, num_frames=8, fps=25, frame_stride=2, audio_seconds=1.0, position=0.5,
                       audio=False)
    assert clip.video_start == pytest.approx(4.68)  # the window is [4.68, 5.24]; keyframes every 2 s
    assert min(decoded_times) == pytest.approx(4.0)  # from the keyframe before it, not from the start
    assert max(decoded_times) <= 5.24 + 0.04 + 1e-6  # and no further than the frame after the last target
    assert [read_marker(f) for f in clip.video.numpy()] == list(range(117, 133, 2))


def test_decoder_can_shrink_frames_to_a_short_side(media):
    clip = decode_clip(media["mp4-h264-aac"].path, num_frames=4, fps=25, frame_stride=1, audio_seconds=1.0,
                       audio=False, max_short_side=48)
    assert clip.video.shape == (4, 48, 64, 3)
    big = decode_clip(media["mp4-h264-aac"].path, num_frames=4, fps=25, frame_stride=1, audio_seconds=1.0,
                      audio=False, max_short_side=500)
    assert big.video.shape == (4, 96, 128, 3)  # never enlarged


def test_probe_reports_the_streams(media, tmp_path):
    info = probe(media["mkv-h264-pcm-6ch"].path)
    assert info.duration == pytest.approx(SECONDS, abs=0.05)
    assert info.has_video and info.has_audio
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-3)
    assert (info.width, info.height) == SIZE
    assert info.num_frames == pytest.approx(SECONDS * 30000 / 1001, abs=1)
    assert (info.sample_rate, info.channels) == (44100, 6)
    assert (info.video_codec, info.audio_codec) == ("h264", "pcm_s16le")
    audio_only = probe(write_av(tmp_path / "a.m4a", video=False, seconds=1.0).path)
    assert not audio_only.has_video and audio_only.fps is None and audio_only.sample_rate == 16000


def error_kind(path, **kwargs) -> MediaError:
    with pytest.raises(MediaError) as info:
        decode_clip(path, num_frames=4, fps=25, frame_stride=1, audio_seconds=1.0, **kwargs)
    return info.value


def test_missing_empty_and_non_media_files_raise_their_kind(tmp_path):
    assert error_kind(tmp_path / "nope.mp4").kind == "missing"
    (tmp_path / "zero.mp4").write_bytes(b"")
    assert error_kind(tmp_path / "zero.mp4").kind == "empty"
    (tmp_path / "text.mp4").write_bytes(b"not a video at all\n" * 100)
    err = error_kind(tmp_path / "text.mp4")
    assert err.kind == "unreadable" and "text.mp4" in str(err)
    (tmp_path / "dir.mp4").mkdir()
    assert error_kind(tmp_path / "dir.mp4").kind == "not_a_file"
    for kind, path in (("missing", tmp_path / "nope.mp4"), ("empty", tmp_path / "zero.mp4")):
        with pytest.raises(MediaError) as info:
            probe(path)
        assert info.value.kind == kind


def test_an_mp4_cut_before_its_index_is_corrupt_not_unknown(tmp_path):
    whole = write_av(tmp_path / "whole.mp4", seconds=2.0, size=SIZE).path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # the index (moov) is written last
    err = error_kind(tmp_path / "cut.mp4")
    assert err.kind == "corrupt" and "MP4" in err.reason


def test_permission_denied_is_unreadable_with_the_os_reason(tmp_path, monkeypatch):
    path = write_av(tmp_path / "locked.mp4", seconds=1.0, size=SIZE).path

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    # root ignores file modes, so the OS's answer is simulated at the open() the decoder checks with
    monkeypatch.setattr(decode_module, "open", denied, raising=False)
    err = error_kind(path)
    assert err.kind == "unreadable" and "Permission denied" in err.reason


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_mode_is_unreadable(tmp_path):
    path = write_av(tmp_path / "locked.mp4", seconds=1.0, size=SIZE).path
    path.chmod(0)
    assert error_kind(path).kind == "unreadable"


def test_a_missing_modality_raises_and_the_other_still_decodes(tmp_path):
    video_only = write_av(tmp_path / "v.mp4", audio=False, seconds=1.0, size=SIZE).path
    audio_only = write_av(tmp_path / "a.m4a", video=False, seconds=1.0).path
    assert error_kind(video_only).kind == "no_audio"
    assert error_kind(audio_only).kind == "no_video"
    assert decode_clip(video_only, num_frames=4, fps=25, frame_stride=1, audio_seconds=1.0, audio=False).audio is None
    assert decode_clip(audio_only, num_frames=4, fps=25, frame_stride=1, audio_seconds=1.0, video=False).video is None


def test_a_span_outside_the_media_is_empty(media):
    err = error_kind(media["mp4-h264-aac"].path, start=10.0, end=12.0)
    assert err.kind == "empty" and "3.0" in err.reason


def test_media_error_survives_pickling_to_the_main_process():
    err = pickle.loads(pickle.dumps(MediaError("no_audio", "/x.mp4", "the file has no audio stream")))
    assert (err.kind, err.path, err.reason) == ("no_audio", "/x.mp4", "the file has no audio stream")
    with pytest.raises(ValueError, match="kind"):
        MediaError("broken", "/x.mp4", "?")


def test_decoding_in_fork_and_spawn_workers_matches_the_main_process(media):
    path = media["mp4-h264-aac"].path
    kwargs = dict(num_frames=4, fps=25, frame_stride=2, audio_seconds=1.0, position=0.3)
    here = decode_clip(path, **kwargs)
    for method in ("fork", "spawn"):
        # one intra-op thread per worker, as DataLoader workers set (a forked child must not reuse the parent's
        # OpenMP pool)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context(method), initializer=torch.set_num_threads,
                                 initargs=(1,)) as pool:
            there = pool.submit(decode_clip, path, **kwargs).result(timeout=120)
        assert torch.equal(there.video, here.video) and torch.equal(there.audio, here.audio), method


def test_marker_round_trip_survives_encoding(tmp_path):
    # the test instrument itself: every written index reads back from the decoded file
    written = write_av(tmp_path / "m.webm", vcodec="libvpx-vp9", acodec="libopus", sample_rate=48000,
                       seconds=1.0, size=SIZE, fps=30)
    assert read_marker(marker_frame(2748, SIZE)) == 2748
    clip = decode_clip(written.path, num_frames=30, fps=30, frame_stride=1, audio_seconds=1.0, audio=False,
                       position=0.0)
    assert [read_marker(f) for f in clip.video.numpy()] == list(range(30))


# ==================================================================== the media boundary (issue: reliability)
def _float_pcm(path, value, seconds=(0.4, 0.5)):
    def audio_fn(t):
        wave = 0.3 * np.sin(2 * np.pi * 440 * t)
        wave[(t >= seconds[0]) & (t < seconds[1])] = value
        return wave
    return write_av(path, seconds=1.0, size=SIZE, acodec="pcm_f32le", sample_rate=8000, audio_fn=audio_fn).path


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_float_pcm_is_non_finite_never_passed_on(tmp_path, value):
    err = error_kind(_float_pcm(tmp_path / "f.mov", value))
    assert err.kind == "non_finite" and "NaN or infinite" in err.reason


def test_a_raw_h264_stream_is_an_unsupported_container_not_a_permission_error(tmp_path):
    path = write_av(tmp_path / "raw.mp4", container="h264", audio=False, seconds=1.0, size=SIZE).path
    for call in (lambda: probe(path), lambda: decode_clip(path, num_frames=4, fps=25, frame_stride=1,
                                                          audio_seconds=1.0, audio=False)):
        with pytest.raises(MediaError) as info:
            call()
        assert info.value.kind == "unsupported_container" and "H.264" in info.value.reason


def test_a_fifo_a_device_and_a_link_loop_are_named_for_what_they_are(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")
    os.symlink("/dev/null", tmp_path / "null.mp4")
    os.symlink("loop.mp4", tmp_path / "loop.mp4")
    fifo = error_kind(tmp_path / "pipe.mp4")  # returns at once: a FIFO is never opened
    assert fifo.kind == "not_a_file" and "FIFO" in fifo.reason and "0 bytes" not in fifo.reason
    assert error_kind(tmp_path / "null.mp4").kind == "not_a_file"
    loop = error_kind(tmp_path / "loop.mp4")
    assert loop.kind == "unreadable" and "symbolic links" in loop.reason


def _faststart_cut(tmp_path, fraction, audio_fn=None):
    from fault_corpus import _remux

    plain = write_av(tmp_path / "plain.mp4", seconds=2.0, size=SIZE, audio_fn=audio_fn).path
    _remux(plain, tmp_path / "fast.mp4", options={"movflags": "+faststart"})
    data = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:int(len(data) * fraction)])
    return tmp_path / "cut.mp4"


def test_a_cut_off_file_reports_how_much_of_each_window_is_padding(tmp_path):
    path = _faststart_cut(tmp_path, 0.5)
    full = dict(num_frames=8, fps=4, frame_stride=1, audio_seconds=2.0, position=0.0)  # both windows: the file
    clip = decode_clip(path, **full)
    assert clip.audio_padded and clip.video_padded
    silent_tail = float((clip.audio.abs() < 1e-6).float().mean())
    assert 0.3 < clip.audio_pad_fraction < 0.7 and abs(clip.audio_pad_fraction - silent_tail) < 0.05
    assert 0.25 <= clip.video_pad_fraction <= 0.75
    whole = decode_clip(tmp_path / "fast.mp4", **full)
    assert (whole.audio_pad_fraction, whole.video_pad_fraction) == (0.0, 0.0)


def test_audio_after_damaged_packets_stays_at_its_own_time(tmp_path):
    """Lost packets leave a hole of silence (counted as padding); the later audio is not pulled earlier."""
    from fault_corpus import _remux

    def burst(t):
        return np.where((t >= 1.2) & (t < 1.3), 0.5 * np.sin(2 * np.pi * 1000 * t), 0.0)

    plain = write_av(tmp_path / "plain.mp4", seconds=1.5, size=SIZE, audio_fn=burst).path
    _remux(plain, tmp_path / "fast.mp4", options={"movflags": "+faststart"})
    data = bytearray((tmp_path / "fast.mp4").read_bytes())
    media = data.find(b"mdat")
    size, at = (len(data) - media) // 10, media + (len(data) - media) // 2
    data[at:at + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))
    clip = decode_clip(tmp_path / "damaged.mp4", num_frames=4, fps=25, frame_stride=1, audio_seconds=1.5,
                       position=0.0, video=False)
    envelope = np.convolve(clip.audio.abs().numpy(), np.ones(1600) / 1600, "same")
    assert abs(envelope.argmax() / 16000 - 1.25) < 0.03
    assert clip.audio_padded and clip.audio_pad_fraction > 0.05


def test_a_rotated_video_is_turned_upright(tmp_path):
    from fault_corpus import _rotated

    _rotated(tmp_path / "r.mp4")
    clip = decode_clip(tmp_path / "r.mp4", num_frames=2, fps=25, frame_stride=1, audio_seconds=1.0, audio=False)
    frame = clip.video[0].numpy()
    assert frame.shape[:2] == (64, 48)  # landscape 64x48 stored, portrait shown
    assert frame[:28].mean() > 240 and frame[36:].mean() < 150  # the white left half turned to the top


def test_media_error_is_rebuilt_from_a_data_loader_workers_message():
    """DataLoader re-raises a worker's exception as type(formatted traceback): kind, path and reason survive."""
    from torch.utils.data._utils import ExceptionWrapper

    try:
        raise MediaError("non_finite", "/data/x: y.mov", "the audio holds 3 NaN samples")
    except MediaError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(MediaError) as info:
        wrapped.reraise()
    assert (info.value.kind, info.value.path, info.value.reason) == ("non_finite", "/data/x: y.mov",
                                                                     "the audio holds 3 NaN samples")
    assert str(info.value) == "/data/x: y.mov: non_finite: the audio holds 3 NaN samples"


def test_frames_decoded_out_of_order_in_avi_are_placed_by_their_decoding_times(tmp_path):
    """AVI keeps no presentation times: H.264 with B-frames decodes to pts that go backwards. Like FFmpeg's
    best-effort timestamp, the decoder then uses the frames' dts, so the picked frames still count up."""
    path = write_av(tmp_path / "b.avi", seconds=1.0, size=SIZE, acodec="libmp3lame", sample_rate=44100).path
    clip = decode_clip(path, num_frames=12, fps=25, frame_stride=1, audio_seconds=1.0, position=0.0, audio=False)
    markers = [read_marker(frame) for frame in clip.video.numpy()]
    assert markers == sorted(markers) and markers[-1] - markers[0] >= 9
