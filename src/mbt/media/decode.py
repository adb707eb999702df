"""Decode the video frames and the audio of one clip window from a media file with PyAV.

A clip has two windows, one per modality, of different lengths (paper: 32 frames at stride 2 of 25 fps = 2.56 s
of video, 8 s of audio). Both are placed at the same *relative* offset `position` of the usable span, as the
official pipeline's `sync_random_state` does, so a random position keeps sound and picture of the same moment.

Each call opens the file, decodes on one thread (data-loader workers give the parallelism) and closes it, so the
module holds no state and is safe under fork and spawn workers.

This module is the media boundary: whatever the OS, FFmpeg or PyAV raise about a file (`av.error.*`, OSError,
RuntimeError, ValueError, a UnicodeDecodeError in metadata) leaves it as a `MediaError` whose `kind` is one of
MEDIA_ERROR_KINDS, and decoded samples that are NaN or infinite never leave it. Nothing is silently replaced by
zeros: what a window lacks is padded and measured (`Clip.*_pad_fraction`), and the caller decides.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from mbt.media.transforms import short_side_shape

# Every way a file can be unusable, with what it means; `mbt data check` reports these as problems and the
# datasets count them as skips (`too_much_padding` is the datasets' own, see ClipDataset).
MEDIA_ERROR_KINDS: dict[str, str] = {
    "missing": "no file at the path (or a symbolic link to nothing)",
    "not_a_file": "the path is a directory, FIFO, device or socket, not a regular file",
    "unreadable": "the OS refuses to read it (permission, I/O error, symbolic-link loop), or it is not media",
    "empty": "0 bytes, streams without media, or a span [start, end] outside the media",
    "corrupt": "a known container FFmpeg cannot open or decode (cut off, damaged)",
    "unsupported_container": "a raw elementary stream (no container: no timestamps, no audio)",
    "too_large": "frames too large to decode safely",
    "no_video": "no video stream, or no decodable video frame",
    "no_audio": "no audio stream, or no decodable audio sample",
    "non_finite": "decoded audio samples that are NaN or infinite",
    "too_much_padding": "a training window that would be mostly padding",
}

# Shortfalls up to this long are codec/container rounding (AAC priming, Opus pre-skip, a last frame's duration),
# not missing content: they are filled by the padding rule but do not set the `*_padded` flags.
PAD_TOLERANCE_S = 0.05
# Audio frames further apart than this from where the previous one ended mark lost (undecodable) packets; the hole
# is filled with silence and counted as padding instead of pulling the later audio earlier.
AUDIO_GAP_S = 0.005
# Seek this far before a window: Opus/AAC need a frame of pre-roll, and nearest-frame selection needs the frame
# just before the first target time.
_SEEK_MARGIN_S = 0.2
# Refuse to decode frames above this many pixels (8192 x 8192): a header declaring 30000 x 30000 would otherwise
# make the decoder allocate gigabytes per frame. 8K video (7680 x 4320) is below it.
MAX_FRAME_PIXELS = 8192 * 8192
# FFmpeg demuxers of bare video elementary streams: no container, hence no timestamps to place a window by (FFmpeg
# invents 25 fps), no audio, and no seeking.
RAW_VIDEO_FORMATS = {"h264": "H.264", "hevc": "H.265/HEVC", "m4v": "MPEG-4 part 2", "mpegvideo": "MPEG-1/2",
                     "vvc": "H.266/VVC", "obu": "AV1", "ivf": "IVF", "cavsvideo": "AVS", "vc1": "VC-1",
                     "dirac": "Dirac", "rawvideo": "raw video"}
# File signatures of containers, to tell a damaged media file from something that is not media at all.
_SIGNATURES = ((4, b"ftyp", "MP4/QuickTime"), (4, b"moov", "MP4/QuickTime"), (4, b"mdat", "MP4/QuickTime"),
               (4, b"free", "MP4/QuickTime"), (4, b"wide", "MP4/QuickTime"), (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
               (0, b"RIFF", "RIFF (AVI/WAV)"), (0, b"OggS", "Ogg"), (0, b"fLaC", "FLAC"), (0, b"FLV", "FLV"),
               (0, b"ID3", "MP3"), (0, b"\x00\x00\x01\xba", "MPEG-PS"), (0, b"YUV4MPEG2", "Y4M"))
# What PyAV and FFmpeg raise for a bad file (av.FFmpegError subclasses OSError in PyAV >= 9, but older ones not).
DECODER_ERRORS = (av.FFmpegError, OSError, RuntimeError, ValueError, UnicodeDecodeError, EOFError, MemoryError)


class MediaError(Exception):
    """A media file that cannot give what was asked. `kind` is a key of MEDIA_ERROR_KINDS; `reason` a sentence.

    str() is "path: kind: reason", one line naming all three.
    """

    def __init__(self, kind: str, path: str | Path | None = None, reason: str | None = None):
        if path is None and reason is None:
            # A DataLoader worker re-raises an exception in the main process as `type(message)`, the message being
            # the worker's formatted traceback; its last line holds this error's own text.
            kind, path, reason = _parse_worker_message(kind)
        if kind not in MEDIA_ERROR_KINDS:
            raise ValueError(f"unknown MediaError kind {kind!r}; expected one of {tuple(MEDIA_ERROR_KINDS)}")
        super().__init__(f"{path}: {kind}: {reason}")
        self.kind = kind
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # process pools pickle exceptions back to the main process
        return (MediaError, (self.kind, self.path, self.reason))


def _parse_worker_message(message: str) -> tuple[str, str, str]:
    line = next((line for line in reversed(str(message).splitlines()) if "MediaError: " in line), "")
    text = line.split("MediaError: ", 1)[-1]
    for kind in MEDIA_ERROR_KINDS:
        path, found, reason = text.partition(f": {kind}: ")
        if found:
            return kind, path, reason
    raise ValueError(f"not a MediaError message: {message[-200:]!r}")


def _describe(error: BaseException) -> str:
    """An exception as a short phrase: FFmpeg's own words where it gave them, without the repeated file name."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if not isinstance(error, av.FFmpegError) else text


def _container_name(head: bytes) -> str | None:
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def check_file(path: str | Path) -> int:
    """The size of the regular, readable, non-empty file at `path`, or MediaError missing / not_a_file / unreadable /
    empty. Never opens a FIFO or a device (that would block or read forever)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise MediaError("missing", path, f"a symbolic link to {os.readlink(path)}, which does not exist") from None
        raise MediaError("missing", path, "no such file") from None
    except (OSError, RuntimeError) as e:  # a symbolic-link loop, a name too long, an I/O error
        raise MediaError("unreadable", path, f"cannot stat the file: {_describe(e)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise MediaError("not_a_file", path, "is a directory, not a media file")
    if not stat.S_ISREG(info.st_mode):
        what = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                else "a device")
        raise MediaError("not_a_file", path, f"is {what}, not a regular media file")
    if info.st_size == 0:
        raise MediaError("empty", path, "the file is empty (0 bytes)")
    return info.st_size


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
    seconds from the start of the media (its first timestamp). Padding: a video target time that no decoded frame
    covers (past the last frame, before the first, in a hole left by damaged packets) takes the nearest frame; audio
    the stream does not cover is silence. `*_pad_fraction` is the share of the window filled that way (of the
    targets / samples); `*_padded` is set when it is more than PAD_TOLERANCE_S of the window.
    """

    video: torch.Tensor | None
    audio: torch.Tensor | None
    video_padded: bool
    audio_padded: bool
    video_start: float
    audio_start: float
    video_pad_fraction: float = 0.0
    audio_pad_fraction: float = 0.0


@dataclass(frozen=True)
class MediaBytes:
    """A media file held in memory (a WebDataset shard's sample), accepted wherever `decode_clip` takes a path:
    FFmpeg reads it from a BytesIO (PyAV's av.open takes file-like objects). `name` stands for the path in
    messages, e.g. "train-000003.tar:000000042"."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


@contextmanager
def open_media(path: str | Path | MediaBytes) -> Iterator[av.container.InputContainer]:
    """Open a media file (or `MediaBytes`) for decoding. Every way opening or decoding it can fail becomes a MediaError: the OS's
    reason, FFmpeg's, or a description of what the file is instead (a directory, a raw stream, text)."""
    if isinstance(path, MediaBytes):  # a shard's sample: decoded from memory, no temporary file
        if not path.data:
            raise MediaError("empty", path, "the sample's media bytes are empty (0 bytes)")
        head, source = path.data[:16], io.BytesIO(path.data)
    else:
        path = Path(path)
        check_file(path)
        try:
            # FFmpeg reports a permission problem as a generic I/O error; Python's open() names it.
            with open(path, "rb") as fh:
                head = fh.read(16)
        except OSError as e:
            raise MediaError("unreadable", path, f"cannot read the file: {e.strerror or e}") from None
        source = str(path)
    try:
        container = av.open(source, metadata_errors="ignore")
    except DECODER_ERRORS as e:
        name = _container_name(head)
        if name is not None:
            raise MediaError("corrupt", path, f"a damaged or cut-off {name} file: FFmpeg cannot open it "
                                              f"({_describe(e)})") from None
        raise MediaError("unreadable", path, f"not a media file FFmpeg can open ({_describe(e)})") from None
    try:
        if container.format.name in RAW_VIDEO_FORMATS:
            raise MediaError("unsupported_container", path,
                             f"a raw {RAW_VIDEO_FORMATS[container.format.name]} stream with no container (no "
                             "timestamps, no audio); wrap it, e.g. `ffmpeg -framerate 25 -i FILE -c copy out.mp4`")
        if video_stream(container) is None and not container.streams.audio:
            raise MediaError("unreadable", path, "the file has no audio or video stream")
        for stream in (*container.streams.video, *container.streams.audio):
            # one decode thread per call: parallelism comes from data-loader workers
            if stream.codec_context is not None:
                stream.codec_context.thread_count = 1
        yield container
    except DECODER_ERRORS as e:  # raised while demuxing / decoding in the caller's `with` block
        raise MediaError("corrupt", path, f"decoding failed: {_describe(e)}") from None
    finally:
        container.close()


def video_stream(container: av.container.InputContainer) -> av.VideoStream | None:
    # Cover art in audio files is a one-picture "video" stream; it is not video.
    for stream in container.streams.video:
        if av.stream.Disposition.attached_pic not in stream.disposition:
            return stream
    return None


def media_origin(container: av.container.InputContainer) -> float:
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


def _frame_size_check(path: str | Path, width: int | None, height: int | None) -> None:
    if width and height and width * height > MAX_FRAME_PIXELS:
        raise MediaError("too_large", path, f"frames of {width}x{height} pixels are more than this decoder accepts "
                                            f"({MAX_FRAME_PIXELS / 1e6:.0f} Mpixels); scale the file down first")


def probe(path: str | Path) -> MediaInfo:
    """Stream facts of a media file, from headers (no decoding). Raises MediaError (see MEDIA_ERROR_KINDS)."""
    with open_media(path) as container:
        duration = _duration(container, media_origin(container))
        if not duration > 0:  # also NaN
            raise MediaError("empty", path, "the streams hold no media (duration 0)")
        video = video_stream(container)
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


@dataclass
class Tracks:
    """Which of a model's streams a media file can give: `present` and `missing`, both in the model's order."""

    info: MediaInfo
    present: tuple[str, ...]
    missing: tuple[str, ...]


def probe_tracks(path: str | Path, modalities: Sequence[str]) -> Tracks:
    """Split `modalities` (stream names such as "video", "audio") into those the file has and those it lacks.

    A name other than video / audio (e.g. "flow") is never in a media file, so it is always missing. Raises
    MediaError when the file cannot be probed (missing, unreadable, empty).
    """
    info = probe(path)
    available = {"video": info.has_video, "audio": info.has_audio}
    present = tuple(m for m in modalities if available.get(m, False))
    return Tracks(info, present, tuple(m for m in modalities if m not in present))


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
            except av.FFmpegError:
                continue  # a damaged packet: the padding rule measures the hole it leaves
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


class _FrameClock:
    """Frame times as FFmpeg's best-effort timestamp (guess_correct_pts) has them: a frame's pts, unless pts values
    have gone backwards more often than dts values. AVI stores no presentation times, so H.264 with B-frames in AVI
    decodes to pts out of order while the dts still count up."""

    def __init__(self) -> None:
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts = self.last_dts = None

    def time(self, frame: av.frame.Frame) -> float | None:
        pts, dts = frame.pts, frame.dts
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        chosen = pts if pts is not None and (dts is None or self.faulty_pts <= self.faulty_dts) else dts
        return float(chosen * frame.time_base) if chosen is not None and frame.time_base else None


def _frame_seconds(frame: av.frame.Frame) -> float | None:
    """How long a frame lasts, from its packet's duration; None when the container does not say."""
    if frame.duration and frame.time_base:
        return float(frame.duration * frame.time_base)
    return None


def _decode_video(container: av.container.InputContainer, path: str | Path, targets: np.ndarray,
                  max_short_side: int | None) -> tuple[torch.Tensor, float]:
    """The frame whose timestamp is nearest to each target time (absolute seconds), as (T, H, W, 3) uint8, and the
    fraction of targets no decoded frame covers (padding)."""
    stream = video_stream(container)
    if stream is None:
        raise MediaError("no_video", path, "the file has no video stream")
    w, h = stream.codec_context.width, stream.codec_context.height
    _frame_size_check(path, w, h)
    rate = stream.average_rate or stream.guessed_rate
    period = 1.0 / float(rate) if rate else 0.04
    width = height = None
    if max_short_side is not None and w and h and min(w, h) > max_short_side:
        height, width = short_side_shape(h, w, max_short_side)
    # id -> (frame, pixels): a frame is converted once however many targets pick it, and only picked frames are
    # converted. Holding the frame keeps its id from being reused.
    converted: dict[int, tuple[av.VideoFrame, np.ndarray]] = {}
    # One scaler for the clip: `frame.to_ndarray(format=...)` builds a new swscale context for every frame, which
    # costs more than the conversion itself (3-6x the time at 320x240). Same conversion, same pixels.
    reformatter = VideoReformatter()

    def pixels(frame: av.VideoFrame) -> np.ndarray:
        if id(frame) not in converted:
            _frame_size_check(path, frame.width, frame.height)  # the stream's header may have understated it
            rgb = reformatter.reformat(frame, format="rgb24", width=width, height=height).to_ndarray()
            # Phones store portrait video as landscape frames plus a display matrix saying how to turn them;
            # players apply it, so must we (PyAV >= 13 exposes it; rotation is counter-clockwise degrees).
            turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
            converted[id(frame)] = (frame, np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb)
        return converted[id(frame)][1]

    # A frame covers [its time, its time + its duration]; a target outside every such span (give or take
    # PAD_TOLERANCE_S) is padding: before the first frame, after the last, or in a hole of damaged packets.
    picked: list[np.ndarray] = []
    uncovered = 0
    prev: tuple[float, float, av.VideoFrame] | None = None  # (time, end, frame) of the frame before
    clock = _FrameClock()
    for frame in _frames_from(container, stream, float(targets[0])):
        t = clock.time(frame)
        t = t if t is not None else (prev[0] + period if prev is not None else 0.0)
        while len(picked) < len(targets) and targets[len(picked)] <= t:
            target = float(targets[len(picked)])
            nearer_prev = prev is not None and target - prev[0] <= t - target
            picked.append(pixels(prev[2] if nearer_prev else frame))
            covered = t - target <= PAD_TOLERANCE_S or (prev is not None and target <= prev[1] + PAD_TOLERANCE_S)
            uncovered += not covered
        if len(picked) == len(targets):
            break
        prev = (t, t + (_frame_seconds(frame) or period), frame)
    if prev is None and not picked:
        raise MediaError("no_video", path, "no decodable video frame")
    if len(picked) < len(targets):
        # The stream ended before the window did: repeat the last frame.
        uncovered += int(np.sum(targets[len(picked):] > prev[1] + PAD_TOLERANCE_S))
        picked += [pixels(prev[2])] * (len(targets) - len(picked))
    return torch.from_numpy(np.stack(picked)), uncovered / len(targets)


def _decode_audio(container: av.container.InputContainer, path: str | Path, start: float, seconds: float,
                  sample_rate: int) -> tuple[torch.Tensor, float]:
    """`seconds` of mono audio from `start` (absolute seconds), channels averaged, resampled to `sample_rate`, and
    the fraction of its samples the stream did not cover (silence)."""
    if not container.streams.audio:
        raise MediaError("no_audio", path, "the file has no audio stream")
    stream = container.streams.audio[0]
    wanted = round(seconds * sample_rate)
    end = start + seconds

    def resampler() -> av.AudioResampler:
        # Keep the source channel layout and average the channels ourselves: FFmpeg's mono downmix adds channels
        # with centre-mix gains (5.1 -> mono can reach 1.7x full scale), the mean stays in [-1, 1].
        return av.AudioResampler(format="fltp", layout=None, rate=sample_rate)

    pieces: list[np.ndarray] = []
    real: list[bool] = []  # per piece: decoded samples (True) or silence filling a hole (False)
    count = 0  # output samples so far, holes included: sample k is at first_time + k / sample_rate

    def add(chunks: list[av.AudioFrame]) -> None:
        nonlocal count
        for out in chunks:
            pieces.append(out.to_ndarray().mean(axis=0))
            real.append(True)
            count += out.samples

    first_time = expected = None
    convert = resampler()
    for frame in _frames_from(container, stream, start):
        t = frame.time
        if first_time is None:
            first_time = expected = t if t is not None else 0.0
        if t is not None and t > expected + AUDIO_GAP_S:
            # Packets were lost: flush what is buffered, then silence up to this frame's time.
            add(convert.resample(None))
            convert = resampler()
            hole = round((t - first_time) * sample_rate) - count
            if hole > 0:
                pieces.append(np.zeros(hole, np.float32))
                real.append(False)
                count += hole
        add(convert.resample(frame))
        expected = (t if t is not None else expected) + frame.samples / frame.sample_rate
        if first_time + count / sample_rate >= end:
            break
    if first_time is None:
        raise MediaError("no_audio", path, "no decodable audio samples")
    add(convert.resample(None))
    decoded = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    covered = np.concatenate([np.full(len(p), r) for p, r in zip(pieces, real)]) if pieces else np.zeros(0, bool)
    offset = round((start - first_time) * sample_rate)
    wave = np.zeros(wanted, np.float32)
    have = np.zeros(wanted, bool)
    lead = max(-offset, 0)
    segment = slice(max(offset, 0), max(offset, 0) + wanted - lead)
    wave[lead:lead + len(decoded[segment])] = decoded[segment]
    have[lead:lead + len(decoded[segment])] = covered[segment]
    bad = ~np.isfinite(wave)
    if bad.any():  # float PCM can carry NaN / Inf; clipping below would turn an Inf into full scale
        raise MediaError("non_finite", path, f"the audio holds {int(bad.sum())} NaN or infinite samples in the "
                                             f"{seconds:.2f} s window (the first {np.argmax(bad) / sample_rate:.2f} "
                                             "s into it)")
    np.clip(wave, -1.0, 1.0, out=wave)  # lossy codecs overshoot full scale slightly
    return torch.from_numpy(wave), 1.0 - have.sum() / wanted


AUDIO_WINDOWS = ("contained", "looped", "synced")


def _looped_audio(container: av.container.InputContainer, path: str | Path, origin: float, span: tuple[float, float],
                  start: float, seconds: float, sample_rate: int) -> tuple[torch.Tensor, float]:
    """`seconds` of audio from `start` that wrap round to the span's start at its end, as the official DMVR
    `sample_sequence` (repeat_sequence=True) does with the spectrogram frames of a stored clip; and the fraction
    of silence in it (an audio stream that ends before the span does leaves some before each loop)."""
    wanted = round(seconds * sample_rate)
    span_samples = max(round((span[1] - span[0]) * sample_rate), 1)
    pieces, count, silent, t = [], 0, 0.0, start
    while count < wanted:
        # the rest of the span from t, in whole samples, at most what is still wanted
        samples = min(max(round((span[1] - t) * sample_rate), 1), wanted - count, span_samples)
        piece, pad = _decode_audio(container, path, origin + t, samples / sample_rate, sample_rate)
        pieces.append(piece[:samples])
        count += len(pieces[-1])
        silent += pad * len(piece)
        t = span[0]
    return torch.cat(pieces)[:wanted], min(silent / max(wanted, 1), 1.0)


def decode_clip(
    path: str | Path | MediaBytes,
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

    Raises MediaError (see MEDIA_ERROR_KINDS): `no_video` / `no_audio` when a requested modality has no stream or
    no decodable frame, `empty` when the span [start, end] lies outside the media, `non_finite` for NaN / Inf
    audio samples in the window, and the file-level kinds of `open_media`.
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
    with open_media(path) as container:
        origin = media_origin(container)
        duration = _duration(container, origin)
        span_start = 0.0 if start is None else float(start)
        span_end = duration if end is None else min(float(end), duration)
        if not span_start < span_end or not span_start < duration:  # also a NaN duration
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
        video_pad = audio_pad = 0.0
        if video:
            targets = origin + video_start + np.arange(num_frames) * (frame_stride / fps)
            frames, video_pad = _decode_video(container, path, targets, max_short_side)
        if audio and audio_window == "contained":
            wave, audio_pad = _decode_audio(container, path, origin + audio_start, audio_seconds, sample_rate)
        elif audio:
            wave, audio_pad = _looped_audio(container, path, origin, (span_start, span_end), audio_start,
                                            audio_seconds, sample_rate)
    # A video target counts as padding only beyond the tolerance already, audio samples are counted one by one.
    return Clip(video=frames, audio=wave, video_padded=video_pad > 0,
                audio_padded=audio_pad * audio_seconds > PAD_TOLERANCE_S, video_start=video_start,
                audio_start=audio_start, video_pad_fraction=video_pad, audio_pad_fraction=audio_pad)
