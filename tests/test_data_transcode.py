"""`mbt data transcode`: outputs re-probed (short side, keyframe interval, audio), resume, failures reported."""

from __future__ import annotations

import json

import av
import pytest

from mbt.cli import main
from mbt.data.manifest import ManifestRow, read_manifest, write_manifest
from mbt.data.transcode import transcode_manifest
from mbt.media.decode import probe
from media_factory import read_marker, write_av


def packet_times(path) -> list[tuple[float, bool]]:
    """(time, is_keyframe) of every video packet, in display order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted((float(p.pts * stream.time_base), p.is_keyframe) for p in container.demux(stream)
                      if p.pts is not None)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    write_av(d / "a.mp4", seconds=2.0, size=(320, 240), sample_rate=44100, channels=2)
    (d / "sub").mkdir()
    write_av(d / "sub" / "b.mkv", seconds=1.0, size=(240, 320), fps=30)
    write_av(d / "vfr.mp4", seconds=1.0, size=(160, 120), vfr=True)
    (d / "broken.mp4").write_bytes(b"not a video at all" * 20)
    rows = [ManifestRow(d / "a.mp4", ("dog",), 0.5, 1.5), ManifestRow(d / "a.mp4", ("cat",), 1.0, 2.0),
            ManifestRow(d / "sub" / "b.mkv", ("cat",)), ManifestRow(d / "broken.mp4", ("dog",)),
            ManifestRow(d / "missing.mp4", ("dog",))]
    write_manifest(d / "train.csv", rows)
    return d


@pytest.fixture(scope="module")
def transcoded(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return out, transcode_manifest(sources / "train.csv", out, short_side=96, gop=8, progress=False)


def test_outputs_have_the_short_side_gop_and_16k_mono_audio(transcoded):
    out, _ = transcoded
    info = probe(out / "a.mp4")
    assert (info.width, info.height) == (128, 96) and info.video_codec == "h264"
    assert (info.audio_codec, info.sample_rate, info.channels) == ("aac", 16000, 1)
    portrait = probe(out / "sub" / "b.mp4")
    assert (portrait.width, portrait.height) == (96, 128)
    for name, frames in (("a.mp4", 50), ("sub/b.mp4", 30)):
        packets = packet_times(out / name)
        assert len(packets) == frames
        assert [i for i, (_, key) in enumerate(packets) if key] == list(range(0, frames, 8))


def test_frame_times_are_kept_so_start_and_end_still_match(transcoded):
    out, _ = transcoded
    with av.open(str(out / "a.mp4")) as container:
        frames = {round(f.time, 2): read_marker(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)}
    assert frames[1.0] == 25 and frames[0.0] == 0 and frames[1.96] == 49


def test_manifest_keeps_labels_and_windows_and_drops_failures(transcoded, sources):
    out, report = transcoded
    rows = read_manifest(out / "train.csv")
    assert [(r.path.relative_to(out).as_posix(), r.labels, r.start, r.end) for r in rows] == [
        ("a.mp4", ("dog",), 0.5, 1.5), ("a.mp4", ("cat",), 1.0, 2.0), ("sub/b.mp4", ("cat",), None, None)]
    assert report.done == 2  # a.mp4 listed twice is encoded once
    failed = {f["path"]: f["reason"] for f in report.failed}
    assert set(failed) == {str(sources / "broken.mp4"), str(sources / "missing.mp4")}
    assert all(failed.values())
    saved = json.loads((out / "transcode_report.json").read_text())
    assert sorted(f["path"] for f in saved["failed"]) == sorted(failed)
    assert not list(out.rglob("*.part"))  # no temporary left behind


def test_rerun_skips_finished_outputs(transcoded, sources):
    out, _ = transcoded
    before = (out / "a.mp4").stat().st_mtime_ns
    again = transcode_manifest(sources / "train.csv", out, short_side=96, gop=8, progress=False)
    assert (again.done, again.already_done, len(again.failed)) == (0, 2, 2)
    assert (out / "a.mp4").stat().st_mtime_ns == before


def test_fps_option_makes_a_variable_rate_constant(sources, tmp_path):
    write_manifest(tmp_path / "m.csv", [ManifestRow(sources / "vfr.mp4", ("a",))])
    report = transcode_manifest(tmp_path / "m.csv", tmp_path / "out", fps=10, gop=5, progress=False)
    assert report.done == 1
    times = [t for t, _ in packet_times(tmp_path / "out" / "vfr.mp4")]
    assert len(times) in (10, 11)  # 1 s at 10 fps; the last source frame's own duration may add one
    assert all(abs((b - a) - 0.1) < 1e-6 for a, b in zip(times, times[1:]))


def test_transcode_command_runs_in_parallel_and_reports_failures(sources, tmp_path, capsys):
    code = main(["data", "transcode", str(sources / "train.csv"), "--out", str(tmp_path / "out"),
                 "--short-side", "64", "--gop", "4", "--jobs", "2"])
    assert code == 1  # some files failed; the others are done
    printed = capsys.readouterr().out
    assert "broken.mp4" in printed and "2 file(s) failed" in printed
    assert probe(tmp_path / "out" / "a.mp4").height == 64


def test_each_bad_file_fails_alone_and_the_others_are_done(sources, tmp_path, capsys):
    """A symbolic-link loop, a FIFO, a directory and a missing file each fail with their kind; the good file is
    transcoded (a loop used to abort the whole command before any file was done)."""
    import os

    bad = tmp_path / "bad"
    bad.mkdir()
    os.symlink("loop.mp4", bad / "loop.mp4")
    os.mkfifo(bad / "pipe.mp4")
    (bad / "folder.mp4").mkdir()
    rows = [ManifestRow(bad / name, ("dog",)) for name in ("loop.mp4", "pipe.mp4", "folder.mp4", "gone.mp4")]
    write_manifest(tmp_path / "m.csv", [*rows, ManifestRow(sources / "a.mp4", ("cat",))])
    code = main(["data", "transcode", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--jobs", "1",
                 "--short-side", "64"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    report = json.loads((tmp_path / "out" / "transcode_report.json").read_text())
    assert {os.path.basename(f["path"]): f["kind"] for f in report["failed"]} == {
        "loop.mp4": "unreadable", "pipe.mp4": "not_a_file", "folder.mp4": "not_a_file", "gone.mp4": "missing"}
    assert report["done"] == 1 and [r.labels for r in read_manifest(tmp_path / "out" / "m.csv")] == [("cat",)]


def test_a_full_disk_fails_the_file_as_an_output_error_and_exits_3(sources, tmp_path, monkeypatch, capsys):
    import errno
    import os

    import mbt.data.transcode as transcode

    real_replace = os.replace

    def full(src, dst):  # the disk fills while a media file is finished; the report still gets written
        if str(src).endswith(".part"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(transcode.os, "replace", full)
    write_manifest(tmp_path / "m.csv", [ManifestRow(sources / "a.mp4", ("cat",))])
    code = main(["data", "transcode", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--jobs", "1"])
    out = capsys.readouterr().out
    assert code == 3 and "output: " in out and "no space left" in out
    monkeypatch.undo()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".part")]
    assert not os.path.exists(tmp_path / "out" / "a.mp4")


def test_default_transcode_stores_the_sampled_rate_and_the_loader_reads_the_same_frames(tmp_path, capsys):
    """Issue 19: the command's defaults write 12.5 fps (stride 2 of 25 fps); decoding picks frames by timestamp,
    so the paper's sampling (fps 25, frame_stride 2) reads the same source frames from the smaller file."""
    from mbt.media.decode import decode_clip

    source = write_av(tmp_path / "src.mp4", seconds=4.0, size=(160, 120), fps=25, gop=50).path
    write_manifest(tmp_path / "m.csv", [ManifestRow(source, ("dog",))])
    assert main(["data", "transcode", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--jobs", "1"]) == 0
    info = probe(tmp_path / "out" / "src.mp4")
    assert info.fps == pytest.approx(12.5) and len(packet_times(tmp_path / "out" / "src.mp4")) == 50
    assert (info.width, info.height) == (160, 120)  # never enlarged (the default short side is 340)
    for start in (0.0, 0.8, 1.6):  # windows starting on the 12.5 fps grid
        window = dict(num_frames=8, fps=25.0, frame_stride=2, audio_seconds=1.0, start=start, position=0.0,
                      audio=False)
        original = decode_clip(source, **window).video.numpy()
        stored = decode_clip(tmp_path / "out" / "src.mp4", **window).video.numpy()
        expected = [round(start * 25) + 2 * i for i in range(8)]
        assert [read_marker(f) for f in original] == expected
        assert [read_marker(f) for f in stored] == expected
