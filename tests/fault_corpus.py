"""A corpus of bad and awkward media files, written by the tests themselves, and what each must give.

Every file is made here with PyAV, numpy and byte surgery on PyAV's output (no ffmpeg binary: CI machines have
none), tiny (64x48 or smaller, under 2 s) so the whole corpus is ~1 MB and checks in seconds. Each `Case` says
what `mbt data check` must report for it with the window of OVERRIDES: "ok", "warn" (usable, with those warning
kinds) or "problem" (unusable, with that kind). Training, evaluation and prediction follow from it (see `outcome`
in the tests and the table): a problem is a counted skip in training and evaluation and an error in predict,
except where a case says its outcome depends on the window's position.

    python tests/fault_corpus.py --table > docs/reliability.md

runs every case through `data check`, the training and evaluation datasets and `predict`, and writes the table of
what each did (measured, not copied from the expectations).
"""

from __future__ import annotations

import builtins
import os
import stat
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import av
import numpy as np

from media_factory import write_av

# The window every expectation is for: 4 frames at stride 2 of 25 fps (0.32 s) and 96 spectrogram frames (0.975 s).
OVERRIDES = ["model.image_size=32", "model.num_frames=4", "model.spec_frames=96", "model.num_mel_bins=32"]
SIZE = (64, 48)
SECONDS = 1.5  # longer than both windows
LABELS = ("bright", "dark")  # the engine fixtures' classes, so corpus rows can join a training manifest


# ==================================================================== makers
def _good(path: Path, **kwargs) -> None:
    write_av(path, **{"seconds": SECONDS, "size": SIZE, **kwargs})


def _remux(src: Path, dst: Path, *, fmt: str = "mp4", options: dict | None = None,
           metadata: dict | None = None) -> None:
    """Copy the packets of `src` into a new container (e.g. faststart: the index first)."""
    with av.open(str(src)) as source, av.open(str(dst), "w", format=fmt, options=options or {}) as out:
        for key, value in (metadata or {}).items():
            out.metadata[key] = value
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def _faststart(path: Path) -> bytes:
    """A good mp4 with its index (moov) first, as most downloaders write them: cutting it leaves it openable."""
    plain = path.with_name(f".{path.name}.plain.mp4")
    _good(plain)
    _remux(plain, path, options={"movflags": "+faststart"})
    plain.unlink()
    return path.read_bytes()


def _cut(fraction: float, faststart: bool) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        if faststart:
            data = _faststart(path)
        else:
            _good(path)  # PyAV writes the index last: any cut loses it
            data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * fraction)])
    return make


def _garbage_middle(path: Path) -> None:
    data = bytearray(_faststart(path))
    media = data.find(b"mdat")
    size = (len(data) - media) // 10  # 10% of the media data, from its middle, replaced by noise
    at = media + (len(data) - media) // 2
    data[at:at + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _bytes(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def _float_pcm(value: float, seconds: tuple[float, float], container: str) -> Callable[[Path], None]:
    """Float PCM audio (8 kHz, resampled when decoded) holding `value` over [a, b) seconds."""
    def audio_fn(t: np.ndarray) -> np.ndarray:
        wave = 0.3 * np.sin(2 * np.pi * 440 * t)
        wave[(t >= seconds[0]) & (t < seconds[1])] = value
        return wave
    return lambda path: write_av(path, container=container, seconds=SECONDS, size=SIZE, acodec="pcm_f32le",
                                 sample_rate=8000, audio_fn=audio_fn)


def _huge_declared(path: Path) -> None:
    """FFV1 in Matroska: the decoder takes the frame size from the container, whose header is patched to say
    16384x8192 (a frame of 400 MB) while the data holds 320x256."""
    write_av(path, container="matroska", vcodec="ffv1", size=(320, 256), seconds=0.5, audio=False)
    data = path.read_bytes()
    width, height = bytes([0xB0, 0x82, 0x01, 0x40]), bytes([0xBA, 0x82, 0x01, 0x00])  # PixelWidth/Height 320, 256
    assert data.count(width) == 1 and data.count(height) == 1
    path.write_bytes(data.replace(width, bytes([0xB0, 0x82, 0x40, 0x00])).replace(height, bytes([0xBA, 0x82, 0x20,
                                                                                                  0x00])))


def rotated_frame(index: int, t: float) -> np.ndarray:
    """64x48: the left half white, the right half a level changing with the frame (so it is not a still)."""
    frame = np.full((48, 64, 3), 255, np.uint8)
    frame[:, 32:] = 20 + index * 5 % 100
    return frame


def _rotated(path: Path) -> None:
    """A landscape mp4 whose track header (tkhd) says "turn 90 degrees clockwise", as phones record portrait."""
    _good(path, frame_fn=rotated_frame)
    data = bytearray(path.read_bytes())
    matrix = data.find(b"tkhd") + 4 + 40  # version/flags, times, track id, duration, layer, volume: 40 bytes
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))


def _bad_metadata(path: Path) -> None:
    """A title tag whose bytes are not UTF-8 (FFmpeg passes them on; a strict reader raises UnicodeDecodeError)."""
    plain = path.with_name(f".{path.name}.plain.mp4")
    _good(plain)
    _remux(plain, path, metadata={"title": "MBT-TITLE-PLACEHOLDER"})
    plain.unlink()
    data = path.read_bytes()
    assert b"MBT-TITLE-PLACEHOLDER" in data
    path.write_bytes(data.replace(b"MBT-TITLE-PLACEHOLDER", b"\xff\xfe\xc3\x28 latin-1 \xe9t\xe9 \xa0\xa1\xa2"))


def _mp4_named(path: Path, container: str, **kwargs) -> None:
    write_av(path, container=container, **{"seconds": SECONDS, "size": SIZE, **kwargs})


def _symlink(target: str) -> Callable[[Path], None]:
    return lambda path: os.symlink(target, path)


def _locked(path: Path) -> None:
    _good(path)
    path.chmod(0)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


# ==================================================================== the cases
@dataclass(frozen=True)
class Case:
    """One kind of file. check: "ok" | "warn" | "problem"; kinds: the warnings, or the one problem kind.

    position_dependent: the trouble sits in one part of the file, so a window elsewhere is fine (training draws
    random windows, evaluation several): only `data check` (and its centred window) has a fixed outcome.
    """

    name: str
    what: str
    make: Callable[[Path], None] | None
    check: str
    kinds: tuple[str, ...] = ()
    span: tuple[float, float] | None = None
    position_dependent: bool = False

    @property
    def problem(self) -> str | None:
        return self.kinds[0] if self.check == "problem" else None


CASES: list[Case] = [
    Case("good.mp4", "H.264 + AAC mp4, 1.5 s", _good, "ok"),
    # ---- files that are not there or not files
    Case("missing.mp4", "listed in the manifest, not on disk", None, "problem", ("missing",)),
    Case("broken_symlink.mp4", "a symbolic link to a file that does not exist", _symlink("nowhere.mp4"), "problem",
         ("missing",)),
    Case("symlink_loop.mp4", "a symbolic link to itself", _symlink("symlink_loop.mp4"), "problem", ("unreadable",)),
    Case("permission_denied.mp4", "mode 000 (simulated when running as root)", _locked, "problem", ("unreadable",)),
    Case("directory.mp4", "a directory named like a video", lambda p: p.mkdir(), "problem", ("not_a_file",)),
    Case("fifo.mp4", "a named pipe (opening it would block)", _fifo, "problem", ("not_a_file",)),
    Case("device.mp4", "a symbolic link to /dev/null, a character device", _symlink("/dev/null"), "problem",
         ("not_a_file",)),
    Case("zero_bytes.mp4", "0 bytes", _bytes(b""), "problem", ("empty",)),
    # ---- not media, or damaged beyond use
    Case("garbage.mp4", "1 KB of random bytes", _bytes(np.random.default_rng(1).bytes(1024)), "problem",
         ("unreadable",)),
    Case("text.mp4", "a text file named .mp4", _bytes(b"this is not a video\n" * 50), "problem", ("unreadable",)),
    Case("cut_index_60.mp4", "an mp4 cut at 60% of its bytes, index (moov) at the end: lost", _cut(0.6, False),
         "problem", ("corrupt",)),
    Case("cut_header_10.mp4", "a faststart mp4 cut at 10%: inside its index", _cut(0.1, True), "problem",
         ("corrupt",)),
    Case("raw_h264.mp4", "a raw H.264 elementary stream (`ffmpeg -f h264`) named .mp4",
         lambda p: write_av(p, container="h264", audio=False, seconds=1.0, size=SIZE), "problem",
         ("unsupported_container",)),
    Case("huge_declared.mkv", "FFV1 whose header declares 16384x8192 frames", _huge_declared, "problem",
         ("too_large",)),
    # ---- a modality missing
    Case("audio_only.m4a", "AAC audio only", lambda p: write_av(p, video=False, seconds=SECONDS), "problem",
         ("no_video",)),
    Case("audio_only.mp3", "MP3 audio only", lambda p: write_av(p, container="mp3", acodec="libmp3lame",
                                                                video=False, seconds=SECONDS), "problem",
         ("no_video",)),
    Case("audio_only.wav", "16-bit PCM WAV", lambda p: write_av(p, acodec="pcm_s16le", video=False, seconds=SECONDS),
         "problem", ("no_video",)),
    Case("audio_only.ogg", "Opus in Ogg", lambda p: write_av(p, container="ogg", acodec="libopus", sample_rate=48000,
                                                             video=False, seconds=SECONDS), "problem",
         ("no_video",)),
    Case("adts_named.mp4", "a raw AAC (ADTS) stream named .mp4",
         lambda p: write_av(p, container="adts", video=False, seconds=SECONDS), "problem", ("no_video",)),
    Case("video_only.mp4", "H.264 with no audio track", lambda p: _good(p, audio=False), "problem", ("no_audio",)),
    Case("empty_audio_track.mp4", "an audio track with no samples", lambda p: _good(p, audio_seconds=0.0), "problem",
         ("no_audio",)),
    # ---- values that are not numbers
    Case("nan_audio.mov", "float PCM in .mov with NaN samples in the middle", _float_pcm(np.nan, (0.6, 0.8), "mov"),
         "problem", ("non_finite",)),
    Case("inf_audio.mkv", "float PCM in .mkv with +Inf samples in the middle", _float_pcm(np.inf, (0.6, 0.8),
                                                                                       "matroska"),
         "problem", ("non_finite",)),
    Case("nan_at_start.mov", "float PCM in .mov with NaN in its first 0.1 s only, outside the centred window",
         _float_pcm(np.nan, (0.0, 0.1), "mov"), "problem", ("non_finite",), position_dependent=True),
    # ---- too short, or mostly padding
    Case("outside_span.mp4", "start/end 5-6 s in a 1.5 s file", _good, "problem", ("empty",), span=(5.0, 6.0)),
    Case("one_frame.mp4", "a single frame (0.04 s)", lambda p: _good(p, seconds=0.04), "problem",
         ("too_much_padding",)),
    Case("short_0.3s.mp4", "0.3 s long", lambda p: _good(p, seconds=0.3), "problem", ("too_much_padding",)),
    Case("short_audio_track.mp4", "1.5 s of video, 0.2 s of audio", lambda p: _good(p, audio_seconds=0.2), "problem",
         ("too_much_padding",)),
    Case("short_video_track.mp4", "0.2 s of video, 1.5 s of audio",
         lambda p: _good(p, seconds=0.2, audio_seconds=SECONDS), "problem", ("too_much_padding",),
         position_dependent=True),
    Case("cut_50.mp4", "a faststart mp4 cut at 50% of its bytes", _cut(0.5, True), "problem",
         ("too_much_padding",), position_dependent=True),
    # ---- usable, worth a warning
    Case("cut_85.mp4", "a faststart mp4 cut at 85% of its bytes", _cut(0.85, True), "warn", ("truncated",),
         position_dependent=True),
    Case("garbage_middle.mp4", "10% of a faststart mp4's media data overwritten with noise", _garbage_middle, "warn",
         ("corrupt",), position_dependent=True),
    Case("short_0.6s.mp4", "0.6 s long: the audio window is a third padding", lambda p: _good(p, seconds=0.6),
         "warn", ("short",)),
    Case("still.mp4", "the same frame throughout",
         lambda p: _good(p, frame_fn=lambda i, t: np.full((48, 64, 3), 90, np.uint8)), "warn", ("still",)),
    Case("silent.mp4", "digital silence", lambda p: _good(p, audio_fn=np.zeros_like), "warn", ("silent",)),
    Case("vfr.mp4", "variable frame rate (intervals of 0.5, 1.5, 1 frame)", lambda p: _good(p, vfr=True), "warn",
         ("vfr",)),
    Case("large_2560x1440.mp4", "2560x1440 frames", lambda p: write_av(p, seconds=1.0, size=(2560, 1440), fps=5),
         "warn", ("large",)),
    # ---- awkward but fine
    Case("odd_97x61.mkv", "odd frame size 97x61 (FFV1)", lambda p: _mp4_named(p, "matroska", vcodec="ffv1",
                                                                             size=(97, 61)), "ok"),
    Case("portrait_48x64.mp4", "portrait frames", lambda p: _good(p, size=(48, 64)), "ok"),
    Case("tiny_16x16.mp4", "16x16 frames (scaled up to the crop)", lambda p: _good(p, size=(16, 16)), "ok"),
    Case("rotated_90.mp4", "landscape frames with a 90-degree display matrix (a phone's portrait video)", _rotated,
         "ok"),
    Case("audio_8k.mp4", "8 kHz audio (resampled)", lambda p: _good(p, sample_rate=8000), "ok"),
    Case("surround_44k.mp4", "6-channel 44.1 kHz AAC (channels averaged)",
         lambda p: _good(p, channels=6, sample_rate=44100), "ok"),
    Case("fps_120.mp4", "120 frames/s", lambda p: _good(p, fps=120, seconds=1.0), "ok"),
    Case("fps_5.mp4", "5 frames/s", lambda p: _good(p, fps=5), "ok"),
    Case("vp8_opus_48k.webm", "VP8 + Opus 48 kHz stereo in WebM",
         lambda p: _mp4_named(p, "webm", vcodec="libvpx", acodec="libopus", sample_rate=48000, channels=2), "ok"),
    Case("h264_pcm.mkv", "H.264 + 16-bit PCM in Matroska", lambda p: _mp4_named(p, "matroska", acodec="pcm_s16le"),
         "ok"),
    Case("h264_aac.mov", "H.264 + AAC in QuickTime", lambda p: _mp4_named(p, "mov"), "ok"),
    Case("ffv1_mp3.avi", "FFV1 + MP3 in AVI", lambda p: _mp4_named(p, "avi", vcodec="ffv1", acodec="libmp3lame",
                                                                   sample_rate=44100), "ok"),
    Case("h264_bframes.avi", "H.264 with B-frames in AVI: no presentation times, frames decode out of order",
         lambda p: _mp4_named(p, "avi", acodec="libmp3lame", sample_rate=44100), "ok"),
    Case("mpeg2_ts.ts", "MPEG-2 video + MP2 audio in MPEG-TS (timestamps start at 1.4 s)",
         lambda p: _mp4_named(p, "mpegts", vcodec="mpeg2video", acodec="mp2"), "ok"),
    Case("matroska_named.mp4", "Matroska content with an .mp4 name", lambda p: _mp4_named(p, "matroska"), "ok"),
    Case("bad_utf8_title.mp4", "a title tag that is not UTF-8", _bad_metadata, "ok"),
    Case("unicode_é_日本.mp4", "a non-ASCII file name", _good, "ok"),
]


def build(folder: Path) -> Path:
    """Write every case's file into `folder` and a manifest `corpus.csv` (path,labels,start,end) listing them all;
    returns the manifest. Labels alternate between LABELS."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,labels,start,end"]
    for i, case in enumerate(CASES):
        if case.make is not None:
            case.make(folder / case.name)
        start, end = case.span or ("", "")
        lines.append(f"{case.name},{LABELS[i % 2]},{start},{end}")
    manifest = folder / "corpus.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def by_name() -> dict[str, Case]:
    return {case.name: case for case in CASES}


@contextmanager
def permissions_enforced() -> Iterator[None]:
    """Root reads files of any mode; make the decoder's open() refuse a mode-000 file as the OS does for anyone
    else (only in this process and its forked children)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        yield
        return

    def guarded_open(file, *args, **kwargs):
        try:
            locked = isinstance(file, (str, os.PathLike)) and stat.S_IMODE(os.stat(file).st_mode) == 0
        except OSError:
            locked = False
        if locked:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    import mbt.media.decode

    with mock.patch.object(mbt.media.decode, "open", guarded_open, create=True):
        yield


# ==================================================================== the table
def _table(folder: Path) -> str:
    """Run every case through data check, the datasets and predict; a Markdown table of what each did."""
    from collections import Counter

    import torch

    from mbt.config import build_config
    from mbt.data.check import LABEL_PROBLEMS, WARNING_KINDS, check_manifest
    from mbt.data.datasets import ClipDataset
    from mbt.data.manifest import read_manifest
    from mbt.engine.predict import predict_files
    from mbt.media.decode import MEDIA_ERROR_KINDS
    from mbt.media.preprocess import Preprocessor
    from mbt.model import MBT

    cfg = build_config(overrides=[*OVERRIDES, "model.depth=2", "model.width=32", "model.num_heads=2",
                                  "model.mlp_dim=64", "model.fusion_layer=1", "model.num_classes=2"])
    manifest = build(folder)
    with permissions_enforced():
        report = check_manifest(manifest, cfg, progress=False)
        rows = read_manifest(manifest)
        pre = Preprocessor(cfg.preprocessor(list(LABELS)))
        common = dict(modalities=("video", "audio"))
        train = ClipDataset(rows, list(LABELS), pre, train=True, max_pad_fraction=cfg.data.max_pad_fraction,
                            **common)
        evaluate = ClipDataset(rows, list(LABELS), pre, train=False, num_clips=4, **common)
        torch.manual_seed(0)
        model = MBT(cfg.model).eval()
        predictions = predict_files(model, pre, [folder / case.name for case in CASES])  # `mbt predict`'s defaults
        outcomes = {}
        for i, (case, prediction) in enumerate(zip(CASES, predictions)):
            epochs = []
            for epoch in range(4):
                train.set_epoch(epoch)
                epochs.append(train[i])
            views = [evaluate[i * evaluate.views_per_row + v] for v in range(evaluate.views_per_row)]
            outcomes[case.name] = (_dataset_outcome(epochs, "of 4 epochs"), _dataset_outcome(views, "of 4 clips"),
                                   _predict_outcome(prediction))
    checked: dict[str, list[str]] = {}
    for entry in report.problems:
        checked.setdefault(Path(entry["path"]).name, []).append(f"**problem** `{entry['kind']}`")
    for entry in report.warnings:
        checked.setdefault(Path(entry["path"]).name, []).append(f"warning `{entry['kind']}`")
    lines = [
        "# What happens to bad and awkward media",
        "",
        "Generated by `python tests/fault_corpus.py --table > docs/reliability.md` from the test suite's fault "
        "corpus (`tests/fault_corpus.py`, every file written by the tests with PyAV, numpy and byte surgery), with "
        f"a window of 4 frames at 25 fps (0.32 s) and 0.97 s of audio and `data.max_pad_fraction` "
        f"{cfg.data.max_pad_fraction:g}. Each column is what the code did, measured when the table was made:",
        "",
        "- **data check**: `mbt data check` (a problem makes the exit code 1; warnings do not).",
        "- **train**: the training dataset over 4 epochs (a random window each): a skip is logged once per clip, "
        "counted by kind, and never reaches the model; padded windows are used, logged once per clip and counted.",
        "- **evaluate**: `mbt evaluate --clips 4`: unusable views are skipped (a video with none left is counted in "
        "`num_skipped`); padding is not limited there (every view of a short clip is padded alike).",
        "- **predict**: `mbt predict` (4 clips averaged; an error makes the exit code 1; a file lacking one stream "
        "is predicted from the other, with a warning).",
        "",
        "| file | what it is | data check | train | evaluate | predict |",
        "|---|---|---|---|---|---|",
    ]
    for case in CASES:
        found = ", ".join(checked.get(case.name, [])) or "ok"
        train_outcome, eval_outcome, predict_outcome = outcomes[case.name]
        lines.append(f"| `{case.name}` | {case.what} | {found} | {train_outcome} | {eval_outcome} | "
                     f"{predict_outcome} |")
    problems = Counter(p["kind"] for p in report.problems)
    warnings = Counter(w["kind"] for w in report.warnings)
    lines += ["", "## Kinds", "", "Media problems (unusable: a skip in training and evaluation, an error in predict; "
              "`too_much_padding` only in training):", "", "| kind | meaning | files in the corpus |", "|---|---|---|"]
    lines += [f"| `{kind}` | {meaning} | {problems.get(kind, 0)} |" for kind, meaning in MEDIA_ERROR_KINDS.items()]
    lines += ["", "Warnings of `data check` (usable):", "", "| kind | meaning | files in the corpus |", "|---|---|---|"]
    lines += [f"| `{kind}` | {meaning} | {warnings.get(kind, 0)} |" for kind, meaning in WARNING_KINDS.items()]
    lines += ["", "Label problems of `data check` (with `--classes FILE`, or `--config` naming `data.classes`; the "
              "label count is checked against the config's `model.multi_label` / `class_splits`):", "",
              "| kind | meaning |", "|---|---|"]
    lines += [f"| `{kind}` | {meaning} |" for kind, meaning in LABEL_PROBLEMS.items()]
    return "\n".join(lines) + "\n"


def _dataset_outcome(items: list[dict], of: str) -> str:
    from collections import Counter

    skipped = Counter(item["kind"] for item in items if "skipped" in item)
    used = [item for item in items if "skipped" not in item]
    parts = [f"skip `{kind}` ({n} {of})" if n < len(items) else f"skip `{kind}`" for kind, n in skipped.items()]
    if used:
        padded = [item for item in used if "padded" in item]
        worst = max((max(item["padded"][1:]) for item in padded), default=0.0)
        text = "used" if len(used) == len(items) else f"used ({len(used)} {of})"
        parts.append(text + (f", padded up to {worst:.0%}" if padded else ""))
    return "; ".join(parts)


def _predict_outcome(prediction) -> str:
    if prediction.skipped:
        return f"error `{prediction.skipped.split(':')[0]}`"
    notes = [f"no {m} track" for m in prediction.missing]
    views = f", {prediction.num_views} of 4 clips" if prediction.num_views < 4 else ""
    return "predicted" + (f" ({notes[0]}{views})" if notes else f" ({views[2:]})" if views else "")


if __name__ == "__main__":
    import argparse
    import logging
    import sys
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", action="store_true", help="print docs/reliability.md")
    parser.add_argument("--out", help="write the corpus here instead (and keep it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.table:
        with tempfile.TemporaryDirectory() as tmp:
            sys.stdout.write(_table(Path(tmp) / "corpus"))
    elif args.out:
        print(build(Path(args.out)))
    else:
        parser.print_help()
