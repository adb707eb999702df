"""Decode the video frames and the audio of one clip window from a media file with PyAV.

A clip has two windows, one per modality, of different lengths (paper: 32 frames at stride 2 of 25 fps = 2.56 s
of video, 8 s of audio). Both are placed at the same *relative* offset `position` of the usable span, as the
official pipeline's `sync_random_state` does, so a random position keeps sound and picture of the same moment.

Each call opens the file, decodes on one thread (data-loader workers give the parallelism) and closes it, so the
module holds no state and is safe under fork and spawn workers. Problems raise `MediaError` with a `kind` the data
tools count (`missing`, `unreadable`, `no_video`, `no_audio`, `empty`); nothing is ever silently replaced by zeros.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from mbt.media.transforms import short_side_shape

MEDIA_ERROR_KINDS = ("missing", "unreadable", "no_video", "no_audio", "empty")

# Shortfalls up to this long are codec/container rounding (AAC priming, Opus pre-skip, a last frame's duration),
# not missing content: they are filled by the padding rule but do not set the `*_padded` flags.
PAD_TOLERANCE_S = 0.05
# Seek this far before a window: Opus/AAC need a frame of pre-roll, and nearest-frame selection needs the frame
# just before the first target time.
_SEEK_MARGIN_S = 0.2


class MediaError(Exception):
    """A media file that cannot give what was asked. `kind` is one of MEDIA_ERROR_KINDS; `reason` a sentence."""

    def __init__(self, kind: str, path: str | Path, reason: str):
        if kind not in MEDIA_ERROR_KINDS:
            raise ValueError(f"unknown MediaError kind {kind!r}; expected one of {MEDIA_ERROR_KINDS}")
        super().__init__(f"{path}: {reason}")
        self.kind = kind
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # data-loader workers pickle exceptions back to the main process
        return (MediaError, (self.kind, self.path, self.reason))


@dataclass
class MediaInfo:
    path: str
    duration: float  # seconds, the longest stream
    has_video: bool
    has_audio: bool
    fps: float | None  # average frame rate (variable-rate files: the mean)
    width: int | None
    height: int | None
    num_frames: int | None  # from the container when it says, else duration * fps
    sample_rate: int | None
    channels: int | None
    video_codec: str | None
    audio_codec: str | None


@dataclass
class Clip:
    """One decoded window per modality.

    video: (T, H, W, 3) uint8 RGB; audio: (N,) float32 mono in [-1, 1] at the requested sample rate. Times are
    seconds from the start of the media (its first timestamp). Padding: a video window reaching past the last
    (or before the first) frame repeats that frame; an audio window reaching past the audio is filled with zeros
    (silence). `*_padded` is set when more than PAD_TOLERANCE_S of a window was filled that way.
    """

    video: torch.Tensor | None
    audio: torch.Tensor | None
    video_padded: bool
    audio_padded: bool
    video_start: float
    audio_start: float


@contextmanager
def _open(path: str | Path) -> Iterator[av.container.InputContainer]:
    """Open a media file for decoding, turning every way it can fail into a MediaError with the OS's reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MediaError("missing", path, "no such file") from None
    except OSError as e:
        raise MediaError("unreadable", path, f"cannot stat the file: {e.strerror or e}") from None
    if path.is_dir():
        raise MediaError("unreadable", path, "is a directory, not a media file")
    if size == 0:
        raise MediaError("empty", path, "the file is empty (0 bytes)")
    try:
        # FFmpeg reports a permission problem as a generic I/O error; Python's open() names it.
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as e:
        raise MediaError("unreadable", path, f"cannot read the file: {e.strerror or e}") from None
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise MediaError("unreadable", path, f"not a media file FFmpeg can open ({e})") from None
    try:
        if _video_stream(container) is None and not container.streams.audio:
            raise MediaError("unreadable", path, "the file has no audio or video stream")
        for stream in (*container.streams.video, *container.streams.audio):
            # one decode thread per call: parallelism comes from data-loader workers
            if stream.codec_context is not None:
                stream.codec_context.thread_count = 1
        yield container
    finally:
        container.close()


def _video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    # Cover art in audio files is a one-picture "video" stream; it is not video.
    for stream in container.streams.video:
        if av.stream.Disposition.attached_pic not in stream.disposition:
            return stream
    return None


def _origin(container: av.container.InputContainer) -> float:
    """Timestamp of the media's beginning: 0 for most files, the first timestamp for e.g. MPEG-TS captures.

    A negative start (encoder priming, B-frame delay) is content not meant to be shown, so it is not an origin.
    """
    return max(container.start_time / av.time_base, 0.0) if container.start_time is not None else 0.0


def _duration(container: av.container.InputContainer, origin: float) -> float:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    ends = [float((s.start_time or 0) + s.duration) * float(s.time_base) - origin
            for s in container.streams if s.duration and s.time_base]
    if ends:
        return max(ends)
    # No header says: read every packet's timestamp (demuxing only, no decoding).
    end = 0.0
    try:
        for packet in container.demux():
            if packet.pts is not None and packet.time_base:
                end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin)
    except av.FFmpegError:
        pass  # a truncated tail: what was read still counts
    container.seek(0)
    return end


def probe(path: str | Path) -> MediaInfo:
    """Stream facts of a media file, from headers (no decoding). Raises MediaError missing/unreadable/empty."""
    with _open(path) as container:
        duration = _duration(container, _origin(container))
        if duration <= 0:
            raise MediaError("empty", path, "the streams hold no media (duration 0)")
        video = _video_stream(container)
        audio = container.streams.audio[0] if container.streams.audio else None
        fps = num_frames = width = height = None
        if video is not None:
            rate = video.average_rate or video.guessed_rate
            fps = float(rate) if rate else None
            num_frames = video.frames or (round(duration * fps) if fps else None)
            width, height = video.codec_context.width or None, video.codec_context.height or None
        return MediaInfo(
            path=str(path), duration=duration, has_video=video is not None, has_audio=audio is not None,
            fps=fps, width=width, height=height, num_frames=num_frames,
            sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            channels=audio.codec_context.channels if audio is not None else None,
            video_codec=video.codec_context.name if video is not None else None,
            audio_codec=audio.codec_context.name if audio is not None else None,
        )


def window_start(span_start: float, span_end: float, length: float, position: float, duration: float) -> float:
    """Start of a `length`-second window at relative `position` of the span [span_start, span_end].

    position 0 puts the window's start on the span's start, 1 its end on the span's end. A window longer than the
    span contains it (position 0.5 centres it) and is then shifted to lie inside the media where the media is
    long enough, so real content is preferred over padding.
    """
    start = span_start + position * (span_end - span_start - length)
    return min(max(start, 0.0), max(duration - length, 0.0))


def _decoded(container: av.container.InputContainer, stream: av.stream.Stream) -> Iterator[av.frame.Frame]:
    """Frames of one stream from the current position; a corrupt packet is skipped, a truncated tail ends it."""
    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.error.InvalidDataError:
                continue
    except av.FFmpegError:
        return


def _frames_from(container: av.container.InputContainer, stream: av.stream.Stream,
                 target: float) -> Iterator[av.frame.Frame]:
    """Decoded frames starting at the keyframe before `target` (absolute seconds).

    One seek, then sequential decoding: the caller stops iterating once past its window. If the demuxer's index
    lands after the target (or finds nothing), decoding restarts from the beginning of the stream.
    """
    seek_to = target - _SEEK_MARGIN_S
    stream_start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if seek_to > stream_start:
        try:
            container.seek(int(seek_to / stream.time_base), stream=stream, backward=True, any_frame=False)
            frames = _decoded(container, stream)
            first = next(frames, None)
        except av.FFmpegError:
            first = None
        if first is not None and (first.time is None or first.time <= target):
            yield first
            yield from frames
            return
    container.seek(0)
    yield from _decoded(container, stream)


def _decode_video(container: av.container.InputContainer, path: str | Path, targets: np.ndarray,
                  max_short_side: int | None) -> tuple[torch.Tensor, bool]:
    """The frame whose timestamp is nearest to each target time (absolute seconds), as (T, H, W, 3) uint8."""
    stream = _video_stream(container)
    if stream is None:
        raise MediaError("no_video", path, "the file has no video stream")
    rate = stream.average_rate or stream.guessed_rate
    period = 1.0 / float(rate) if rate else 0.04
    width = height = None
    if max_short_side is not None:
        w, h = stream.codec_context.width, stream.codec_context.height
        if w and h and min(w, h) > max_short_side:
            height, width = short_side_shape(h, w, max_short_side)
    # id -> (frame, pixels): a frame is converted once however many targets pick it, and only picked frames are
    # converted. Holding the frame keeps its id from being reused.
    converted: dict[int, tuple[av.VideoFrame, np.ndarray]] = {}

    def pixels(frame: av.VideoFrame) -> np.ndarray:
        if id(frame) not in converted:
            converted[id(frame)] = (frame, frame.to_ndarray(format="rgb24", width=width, height=height))
        return converted[id(frame)][1]

    picked: list[np.ndarray] = []
    prev: tuple[float, av.VideoFrame] | None = None
    first_time = last_time = None
    for frame in _frames_from(container, stream, float(targets[0])):
        t = frame.time if frame.time is not None else (last_time + period if last_time is not None else 0.0)
        first_time = t if first_time is None else first_time
        while len(picked) < len(targets) and targets[len(picked)] <= t:
            target = targets[len(picked)]
            nearer_prev = prev is not None and target - prev[0] <= t - target
            picked.append(pixels(prev[1] if nearer_prev else frame))
        if len(picked) == len(targets):
            break
        prev, last_time = (t, frame), t
    if prev is None and not picked:
        raise MediaError("no_video", path, "no decodable video frame")
    padded = first_time is not None and float(targets[0]) < first_time - PAD_TOLERANCE_S
    if len(picked) < len(targets):
        # The stream ended before the window did: repeat the last frame.
        padded = padded or float(targets[-1]) > last_time + period + PAD_TOLERANCE_S
        last = pixels(prev[1])
        picked += [last] * (len(targets) - len(picked))
    return torch.from_numpy(np.stack(picked)), padded


def _decode_audio(container: av.container.InputContainer, path: str | Path, start: float, seconds: float,
                  sample_rate: int) -> tuple[torch.Tensor, bool]:
    """`seconds` of mono audio from `start` (absolute seconds), channels averaged, resampled to `sample_rate`."""
    if not container.streams.audio:
        raise MediaError("no_audio", path, "the file has no audio stream")
    stream = container.streams.audio[0]
    wanted = round(seconds * sample_rate)
    end = start + seconds
    # Keep the source channel layout and average the channels ourselves: FFmpeg's mono downmix adds channels with
    # centre-mix gains (5.1 -> mono can reach 1.7x full scale), the mean stays in [-1, 1] with equal weights.
    resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)
    pieces: list[np.ndarray] = []
    first_time = None
    count = 0
    for frame in _frames_from(container, stream, start):
        if first_time is None:
            first_time = frame.time if frame.time is not None else 0.0
        for out in resampler.resample(frame):
            pieces.append(out.to_ndarray().mean(axis=0))
            count += out.samples
        if first_time + count / sample_rate >= end:
            break
    if first_time is None:
        raise MediaError("no_audio", path, "no decodable audio samples")
    for out in resampler.resample(None):
        pieces.append(out.to_ndarray().mean(axis=0))
    decoded = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    # Sample k of the decoded run is at first_time + k / sample_rate.
    offset = round((start - first_time) * sample_rate)
    wave = np.zeros(wanted, np.float32)
    lead = max(-offset, 0)
    segment = decoded[max(offset, 0):max(offset, 0) + wanted - lead]
    wave[lead:lead + len(segment)] = segment
    missing = wanted - len(segment)
    np.clip(wave, -1.0, 1.0, out=wave)  # lossy codecs overshoot full scale slightly
    return torch.from_numpy(wave), missing > PAD_TOLERANCE_S * sample_rate


AUDIO_WINDOWS = ("contained", "looped", "synced")


def _looped_audio(container: av.container.InputContainer, path: str | Path, origin: float, span: tuple[float, float],
                  start: float, seconds: float, sample_rate: int) -> tuple[torch.Tensor, bool]:
    """`seconds` of audio from `start` that wrap round to the span's start at its end, as the official DMVR
    `sample_sequence` (repeat_sequence=True) does with the spectrogram frames of a stored clip."""
    wanted = round(seconds * sample_rate)
    span_samples = max(round((span[1] - span[0]) * sample_rate), 1)
    pieces, count, padded, t = [], 0, False, start
    while count < wanted:
        # the rest of the span from t, in whole samples, at most what is still wanted
        samples = min(max(round((span[1] - t) * sample_rate), 1), wanted - count, span_samples)
        piece, short = _decode_audio(container, path, origin + t, samples / sample_rate, sample_rate)
        pieces.append(piece[:samples])
        count += len(pieces[-1])
        padded = padded or short  # an audio stream that ends before the span does: silence before the loop
        t = span[0]
    return torch.cat(pieces)[:wanted], padded


def decode_clip(
    path: str | Path,
    *,
    num_frames: int,
    fps: float,
    frame_stride: int,
    audio_seconds: float,
    sample_rate: int = 16000,
    position: float = 0.5,
    start: float | None = None,
    end: float | None = None,
    video: bool = True,
    audio: bool = True,
    max_short_side: int | None = None,
    audio_window: str = "contained",
) -> Clip:
    """Decode the video and audio windows of one clip.

    Video: `num_frames` frames at times `video_start + i * frame_stride / fps`, each the source frame whose
    timestamp is nearest (so variable frame rates and source rates other than `fps` repeat or drop frames as
    needed); the window lasts `num_frames * frame_stride / fps` s. Audio: `audio_seconds` s resampled to
    `sample_rate` mono. Both windows sit at the same relative `position` (0..1) of the span [start or 0,
    end or duration] (see `window_start`). `max_short_side` lets the decoder's scaler shrink large frames so their
    short side is at most that (never enlarges), which is much cheaper than resizing full-size frames later.

    `audio_window` places the audio window: "contained" as above (silence past the media's end); "looped" at
    relative `position` of the span's room left after the window (official evaluation windows, and training
    without video), "synced" starting where the video window starts, i.e. at the same proportion of the span
    (official training: DMVR's `sample_offset_proportion`); both wrap round to the span's start past its end
    instead of padding with silence.

    Raises MediaError: missing / empty / unreadable file, `no_video` / `no_audio` when a requested modality has no
    stream or no decodable frame, `empty` when the span [start, end] lies outside the media.
    """
    if audio_window not in AUDIO_WINDOWS:
        raise ValueError(f"audio_window must be one of {AUDIO_WINDOWS}, got {audio_window!r}")
    if num_frames < 1 or frame_stride < 1 or fps <= 0 or audio_seconds <= 0:
        raise ValueError(f"bad window: num_frames={num_frames}, frame_stride={frame_stride}, fps={fps}, "
                         f"audio_seconds={audio_seconds}")
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"position must be in [0, 1], got {position}")
    if not (video or audio):
        raise ValueError("nothing to decode: video and audio are both False")
    with _open(path) as container:
        origin = _origin(container)
        duration = _duration(container, origin)
        span_start = 0.0 if start is None else float(start)
        span_end = duration if end is None else min(float(end), duration)
        if span_start >= span_end or span_start >= duration:
            raise MediaError("empty", path, f"the span [{span_start:g}, {span_end if end is None else end:g}] s "
                                            f"holds no media (the file lasts {duration:.3f} s)")
        video_seconds = num_frames * frame_stride / fps
        video_start = window_start(span_start, span_end, video_seconds, position, duration)
        if audio_window == "contained":
            audio_start = window_start(span_start, span_end, audio_seconds, position, duration)
        elif audio_window == "synced":
            audio_start = max(video_start, span_start)  # the same proportion of the span
        else:
            audio_start = span_start + position * max(span_end - span_start - audio_seconds, 0.0)
        frames = wave = None
        video_padded = audio_padded = False
        if video:
            targets = origin + video_start + np.arange(num_frames) * (frame_stride / fps)
            frames, video_padded = _decode_video(container, path, targets, max_short_side)
        if audio and audio_window == "contained":
            wave, audio_padded = _decode_audio(container, path, origin + audio_start, audio_seconds, sample_rate)
        elif audio:
            wave, audio_padded = _looped_audio(container, path, origin, (span_start, span_end), audio_start,
                                               audio_seconds, sample_rate)
    return Clip(video=frames, audio=wave, video_padded=video_padded, audio_padded=audio_padded,
                video_start=video_start, audio_start=audio_start)
