"""`mbt data transcode`: re-encode a manifest's media for fast random access, resumably.

Each file becomes an mp4 with H.264 video (short side scaled down to `short_side`, a keyframe every `gop` frames,
so seeking to any clip decodes at most `gop` frames, encoded for fast decoding; optionally resampled to the `fps`
the training sampling reads, so that no frame is decoded in vain) and AAC 16 kHz mono audio (what the audio front
end uses).
Timestamps are kept, so the manifest's start/end still select the same moments. An output is written under a
temporary name and renamed when complete: a file that exists is done, and a rerun skips it.

Each file succeeds or fails on its own: a missing or damaged input, a FIFO, a symbolic-link loop, an encoder error
or a full disk is that file's failure, listed with its kind, and the other files go on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from mbt.data.manifest import ManifestRow, read_manifest, write_manifest
from mbt.data.parallel import map_with_progress
from mbt.fileio import describe_os_error, write_json
from mbt.media.decode import DECODER_ERRORS, MediaError, open_media

log = logging.getLogger("mbt.data")

AUDIO_RATE = 16000
REPORT_NAME = "transcode_report.json"


# Output errors that are the disk's or the folder's, not the file's: the run cannot do better by going on alone.
_IO_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class TranscodeError(RuntimeError):
    """A file that could not be re-encoded; the message names it. `kind`: a MediaError kind for the input,
    "output" when the output could not be written (disk full, read-only, permission), "encode" otherwise."""

    def __init__(self, message: str, kind: str = "encode"):
        super().__init__(message)
        self.kind = kind


class _OutputError(Exception):
    """Writing the output failed (raised inside the input's `open_media`, which would call an OSError corrupt)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


@dataclass
class TranscodeReport:
    manifest: Path  # the manifest written in the output folder
    done: int = 0  # files encoded by this run
    already_done: int = 0  # outputs that existed (a resumed run)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "kind", "reason"}
    rows: int = 0  # rows in the written manifest

    def to_json(self) -> dict:
        return {"manifest": str(self.manifest), "done": self.done, "already_done": self.already_done,
                "rows": self.rows, "failed": self.failed}

    def summary(self) -> str:
        lines = [f"transcoded {self.done} file(s), {self.already_done} already done; {self.rows} rows in "
                 f"{self.manifest}"]
        if self.failed:
            lines.append(f"{len(self.failed)} file(s) failed (their rows are left out; see "
                         f"{self.manifest.parent / REPORT_NAME}):")
            lines += [f"  {f['path']}: {f['kind']}: {f['reason']}" for f in self.failed]
        return "\n".join(lines)

    @property
    def output_failed(self) -> bool:
        """Some output could not be written (disk full, read-only, permission): an I/O failure, not the data's."""
        return any(f["kind"] == "output" for f in self.failed)


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)  # yuv420p needs even sides


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side brought down to `short_side` (never up), both even."""
    scale = min(1.0, short_side / min(width, height))
    return _even(width * scale), _even(height * scale)


class _VideoSink:
    """Scales and encodes decoded frames; with `fps`, emits a constant rate (output time k / fps shows the latest
    source frame at or before it), otherwise keeps each frame's own time."""

    def __init__(self, out: av.container.OutputContainer, stream: av.video.stream.VideoStream, *, short_side: int,
                 gop: int, fps: float | None):
        width, height = scaled_size(stream.codec_context.width, stream.codec_context.height, short_side)
        source_rate = stream.average_rate or Fraction(25)
        self.source_period = 1 / float(source_rate)
        self.rate = Fraction(fps).limit_denominator(1001) if fps else source_rate
        self.fps = fps
        self.out = out
        self.stream = out.add_stream("libx264", rate=self.rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        # a millisecond time base keeps variable frame times as they were
        self.time_base = Fraction(1, 1000) if fps is None else 1 / self.rate
        self.stream.codec_context.time_base = self.time_base
        self.stream.time_base = self.time_base
        self.stream.codec_context.gop_size = gop
        # scenecut would add keyframes of its own; keyint/min-keyint pin the interval to `gop`. fastdecode (no
        # CABAC, no deblocking filter, no weighted prediction): every training clip decodes these frames again,
        # 2.6x faster for ~15 % more bytes at the same crf (benchmarks/loader.py)
        self.stream.options = {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0", "preset": "fast",
                               "tune": "fastdecode", "crf": "20"}
        self.current: tuple[float, av.VideoFrame] | None = None
        self.next_time = 0.0
        self.last_pts = -1

    def _emit(self, time: float, frame: av.VideoFrame) -> None:
        pts = round(time / self.time_base)
        if pts <= self.last_pts:  # two source frames within one output tick: keep the first
            return
        self.last_pts = pts
        picture = frame.reformat(width=self.stream.width, height=self.stream.height, format="yuv420p")
        picture.pts, picture.time_base = pts, self.time_base
        self.out.mux(self.stream.encode(picture))

    def push(self, frame: av.VideoFrame) -> None:
        if frame.time is None:
            return
        if not self.fps:
            self._emit(frame.time, frame)
            return
        if self.current is None:
            self.next_time = frame.time
        else:
            while self.next_time < frame.time - 1e-9:
                self._emit(self.next_time, self.current[1])
                self.next_time += 1 / self.fps
        self.current = (frame.time, frame)

    def close(self) -> None:
        if self.fps and self.current is not None:
            # the last source frame lasts one source frame period
            end = self.current[0] + self.source_period
            while self.next_time < end - 1e-9:
                self._emit(self.next_time, self.current[1])
                self.next_time += 1 / self.fps
        self.out.mux(self.stream.encode(None))


class _AudioSink:
    """Resamples to 16 kHz mono and encodes AAC; sample times count from the first input sample's time, so the
    audio stays aligned with the video."""

    def __init__(self, out: av.container.OutputContainer):
        self.out = out
        self.stream = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        self.resampler = av.AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE)
        self.next_sample: int | None = None

    def _encode(self, chunks: list[av.AudioFrame]) -> None:
        for chunk in chunks:
            chunk.pts, chunk.time_base = self.next_sample, Fraction(1, AUDIO_RATE)
            self.next_sample += chunk.samples
            self.out.mux(self.stream.encode(chunk))

    def push(self, frame: av.AudioFrame) -> None:
        if self.next_sample is None:
            self.next_sample = max(0, int(round((frame.time or 0.0) * AUDIO_RATE)))
        self._encode(self.resampler.resample(frame))

    def close(self) -> None:
        if self.next_sample is not None:
            self._encode(self.resampler.resample(None))
        self.out.mux(self.stream.encode(None))


def transcode_file(src: str | Path, dst: str | Path, *, short_side: int = 256, gop: int = 16,
                   fps: float | None = None) -> None:
    """Re-encode one file to `dst` (written as `dst` only once complete). Raises TranscodeError."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    try:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _OutputError(e) from None
        _encode(src, tmp, short_side=short_side, gop=gop, fps=fps)
        try:
            os.replace(tmp, dst)
        except OSError as e:
            raise _OutputError(e) from None
    except MediaError as e:
        raise TranscodeError(f"{src}: {e.reason}", e.kind) from None
    except _OutputError as e:
        code = getattr(e.error, "errno", None)
        raise TranscodeError(f"{src}: cannot write {dst}: {describe_os_error(e.error, dst)}",
                             "output" if code in _IO_ERRNOS else "encode") from None
    except DECODER_ERRORS as e:
        raise TranscodeError(f"{src}: {type(e).__name__}: {e}") from None
    finally:
        with contextlib.suppress(OSError):  # a read-only or vanished folder: nothing was left there anyway
            tmp.unlink(missing_ok=True)


def _encode(src: Path, dst: Path, *, short_side: int, gop: int, fps: float | None) -> None:
    # open_media turns every input failure (and a FIFO or a device, which av.open would block on) into a
    # MediaError; output failures are raised as _OutputError so that it does not take them for the input's.
    with open_media(src) as source:
        inputs = [s for s in (source.streams.video[:1] + source.streams.audio[:1])]
        try:
            # faststart puts the index first: a reader can seek without scanning the file
            out = av.open(str(dst), "w", format="mp4", options={"movflags": "+faststart"})
        except DECODER_ERRORS as e:
            raise _OutputError(e) from None
        try:
            sinks: dict[int, _VideoSink | _AudioSink] = {}
            for stream in inputs:
                sinks[stream.index] = (_VideoSink(out, stream, short_side=short_side, gop=gop, fps=fps)
                                       if stream.type == "video" else _AudioSink(out))
            # one pass over the interleaved packets keeps the output interleaved too
            for packet in source.demux(*inputs):
                for frame in packet.decode():
                    _write(sinks[packet.stream.index].push, frame)
            for sink in sinks.values():
                _write(sink.close)
        except BaseException:
            with contextlib.suppress(*DECODER_ERRORS):
                out.close()
            raise
        _write(out.close)  # with faststart the index is written here: a full disk shows up now


def _write(step, *args) -> None:
    """Run an encode-and-mux step; its failures are the output's (encoder, disk), not the input's."""
    try:
        step(*args)
    except DECODER_ERRORS as e:
        raise _OutputError(e) from None


# ==================================================================== a manifest
def output_names(sources: list[Path], manifest_dir: Path) -> dict[Path, Path]:
    """Output path (relative to the output folder) of each source, with an .mp4 suffix: its path relative to the
    manifest's folder, or to the sources' common folder when some lie outside it. Where two sources would collide
    (a.mkv and a.mp4), their old suffix is kept (a.mkv.mp4)."""
    # abspath, not resolve(): resolving would follow a symbolic-link loop into an error before any file is done
    resolved = {src: Path(os.path.abspath(src)) for src in sources}
    base = Path(os.path.abspath(manifest_dir))
    if not all(path.is_relative_to(base) for path in resolved.values()):
        base = Path(os.path.commonpath([path.parent for path in resolved.values()]))
    relative = {src: path.relative_to(base) for src, path in resolved.items()}
    names = {src: rel.with_suffix(".mp4") for src, rel in relative.items()}
    counts: dict[Path, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {src: name if counts[name] == 1 else relative[src].with_name(relative[src].name + ".mp4")
            for src, name in names.items()}


def _transcode_job(job: tuple[Path, Path, int, int, float | None]) -> tuple[str, str | None, str | None]:
    """("done", None, None) or ("failed", kind, reason): a failure of one file never ends the others."""
    src, dst, short_side, gop, fps = job
    try:
        transcode_file(src, dst, short_side=short_side, gop=gop, fps=fps)
    except TranscodeError as e:
        return "failed", e.kind, str(e).removeprefix(f"{src}: ")
    except Exception as e:  # whatever else one file provokes is still that file's failure
        return "failed", "encode", f"{type(e).__name__}: {e}"
    return "done", None, None


def transcode_manifest(manifest: str | Path, out: str | Path, *, short_side: int = 256, gop: int = 16,
                       fps: float | None = None, jobs: int = 1, progress: bool = True) -> TranscodeReport:
    """Re-encode every file of a manifest into `out` and write `out/<manifest name>` pointing at the outputs
    (labels and start/end kept); rows whose file failed are left out and listed in `out/transcode_report.json`."""
    if short_side < 2 or gop < 1 or (fps is not None and fps <= 0):
        raise ValueError(f"need short_side >= 2, gop >= 1 and fps > 0; got {short_side}, {gop}, {fps}")
    manifest, out = Path(manifest), Path(out)
    rows = read_manifest(manifest)
    sources = list(dict.fromkeys(row.path for row in rows))  # a video with many segments is encoded once
    names = output_names(sources, manifest.parent)
    out.mkdir(parents=True, exist_ok=True)
    report = TranscodeReport(out / manifest.name)
    if report.manifest.resolve() == manifest.resolve():
        raise ValueError(f"{out}: the output folder holds the input manifest; choose another folder")
    todo = []
    for src in sources:
        if (out / names[src]).exists():
            report.already_done += 1
        else:
            todo.append((src, out / names[src], short_side, gop, fps))
    failed: set[Path] = set()
    for job, (status, kind, reason) in zip(todo, map_with_progress(_transcode_job, todo, jobs=jobs,
                                                                   desc="transcode", progress=progress)):
        if status == "done":
            report.done += 1
        else:
            failed.add(job[0])
            report.failed.append({"path": str(job[0]), "kind": kind, "reason": reason})
            log.warning("transcode failed: %s: %s: %s", job[0], kind, reason)
    kept = [ManifestRow(out / names[row.path], row.labels, row.start, row.end, row.line)
            for row in rows if row.path not in failed]
    write_manifest(report.manifest, kept)
    report.rows = len(kept)
    write_json(out / REPORT_NAME, report.to_json(), what="transcode report")
    return report
