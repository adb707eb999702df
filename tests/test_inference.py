"""Using a trained model on media files: `mbt.Classifier`, `Preprocessor.from_pretrained`, `mbt predict` over
files, a manifest (resumable), a folder and a long video's timeline; all on generated mp4 files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_fixtures import CLASSES, toy_config, write_toy_set
from mbt import Classifier, Preprocessor
from mbt.cli import main
from mbt.data.datasets import eval_positions
from mbt.engine.predict import window_spans
from mbt.media import MediaError
from media_factory import write_av


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    train = write_toy_set(root, 12)
    val = write_toy_set(root, 5, name="val")
    return root, train, val


@pytest.fixture(scope="module")
def trained(toy):
    root, train, val = toy
    out = root / "run"
    assert main(["train", str(toy_config(root, train, val, epochs=3, lr=3e-3)), "--out", str(out),
                 "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def clf(trained):
    return Classifier.from_pretrained(trained)


def _long_video(path: Path, seconds: float = 12.0, period: float = 6.0) -> Path:
    """`bright` (light frames, high tone) in the first half of every period, `dark` in the second."""
    rng = np.random.default_rng(0)

    def bright(t):
        return (np.asarray(t) % period) < period / 2

    def frame_fn(index, t):
        level = 200 if bright(t) else 40
        return np.clip(level + rng.integers(-20, 20, (48, 64, 3)), 0, 255).astype(np.uint8)

    def audio_fn(t):
        freq = np.where(bright(t), 1760.0, 330.0)
        return (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)

    write_av(path, fps=8, seconds=seconds, size=(64, 48), frame_fn=frame_fn, audio_fn=audio_fn)
    return path


def _reference_scores(model, run: Path, path: Path, num_clips: int, modalities=None) -> torch.Tensor:
    """Softmax of the mean logits of the evaluation views, computed by hand with the public pieces."""
    pre = Preprocessor.from_pretrained(run)
    views = [pre(path, position=p, modalities=modalities) for p in eval_positions(num_clips)]
    inputs = {m: torch.stack([v.inputs[m] for v in views]) for m in views[0].inputs}
    with torch.no_grad():
        return torch.softmax(model(**inputs).logits.mean(dim=0), dim=-1)


# ==================================================================== Python API
def test_preprocessor_from_pretrained_defaults_to_evaluation(trained, toy):
    root, _, _ = toy
    pre = Preprocessor.from_pretrained(trained)
    assert pre.cfg.class_names == CLASSES
    clip = root / "media" / "val_000.mp4"
    default, explicit = pre(clip), pre(clip, train=False)
    for m in ("video", "audio"):
        assert torch.equal(default.inputs[m], explicit.inputs[m])  # no augmentation unless train=True


def test_classifier_call_gives_sorted_labels_matching_the_model(clf, trained, toy):
    root, _, _ = toy
    clip = root / "media" / "val_001.mp4"
    result = clf(clip, top_k=2, clips=2)
    assert [label for label, _ in result] == sorted(CLASSES, key=lambda c: -dict(result)[c])
    reference = _reference_scores(clf.model, trained, clip, 2)
    for label, score in result:
        assert score == pytest.approx(float(reference[CLASSES.index(label)]), abs=1e-5)
    assert clf(clip, top_k=1, clips=2) == result[:1]
    assert clf(clip, top_k=1)[0][0] == "dark"  # the toy model was trained to tell them apart


def test_predict_many_files_matches_single_calls_and_marks_problems(clf, trained, toy, tmp_path):
    root, _, _ = toy
    silent_film = write_av(tmp_path / "video_only.mp4", fps=8, seconds=1.5, size=(64, 48), audio=False).path
    paths = [root / "media" / f"val_{i:03d}.mp4" for i in range(4)] + [tmp_path / "gone.mp4", silent_film]
    batch = clf.predict(paths, batch_size=3, num_workers=2, clips=2)
    assert [p.path for p in batch] == [str(p) for p in paths]
    for path, prediction in zip(paths[:4], batch[:4]):
        single = clf(path, top_k=5, clips=2)
        assert [e["label"] for e in prediction.labels] == [label for label, _ in single]
        assert [e["score"] for e in prediction.labels] == pytest.approx([score for _, score in single], abs=1e-5)
        assert prediction.skipped is None and prediction.num_views == 2 and prediction.missing == []
        assert set(prediction.modality_labels) == {"video", "audio"}  # the token classifier's per-stream heads
    gone = batch[4]
    assert gone.skipped.startswith("missing") and gone.labels == [] and gone.scores is None
    film = batch[5]
    assert film.modalities == ["video"] and film.missing == ["audio"] and film.skipped is None
    assert any("no audio track" in w for w in film.warnings)
    reference = _reference_scores(clf.model, trained, silent_film, 2, modalities=("video",))
    assert film.scores == pytest.approx(reference.numpy(), abs=1e-5)
    with pytest.raises(MediaError, match="no such file"):
        clf(tmp_path / "gone.mp4")


def test_timeline_follows_what_happens_when(clf, tmp_path):
    video = _long_video(tmp_path / "long.mp4", seconds=12.0, period=6.0)
    timeline = clf.timeline(video, window=2.0, hop=1.0)
    spans = window_spans(timeline.duration, 2.0, 1.0)
    assert len(timeline.starts) == len(spans) == timeline.scores.shape[0] and timeline.class_names == CLASSES
    assert np.allclose(timeline.scores.sum(axis=1), 1.0, atol=1e-5)
    centres = (timeline.starts + timeline.ends) / 2
    best = [CLASSES[i] for i in timeline.scores.argmax(axis=1)]
    # bright in [0, 3) and [6, 9) s, dark in between: windows centred well inside a half get that half's class
    for centre, label in zip(centres, best):
        if round(centre % 6.0) in (1, 2):
            assert label == "bright", (centre, label)
        elif round(centre % 6.0) in (4, 5):
            assert label == "dark", (centre, label)
    assert {"bright", "dark"} <= set(best)
    default = clf.timeline(video)
    assert default.window == pytest.approx(1.0)  # the toy model's input window: 4 frames x 2 / 8 fps
    assert default.hop == pytest.approx(0.5)


def test_window_spans_cover_the_recording():
    assert window_spans(3.0, 8.0, 4.0) == [(0.0, 3.0)]  # shorter than a window: one window
    spans = window_spans(10.0, 4.0, 3.0)
    assert spans[0] == (0.0, 4.0) and spans[-1] == (6.0, 10.0)  # the last one ends at the end
    assert all(b[0] - a[0] <= 3.0 + 1e-9 for a, b in zip(spans, spans[1:]))
    with pytest.raises(ValueError, match="> 0"):
        window_spans(10.0, 4.0, 0.0)


# ==================================================================== command line
def test_predict_manifest_is_resumable(trained, toy, tmp_path, capsys, caplog):
    root, _, val = toy
    manifest = tmp_path / "todo.csv"
    rows = [f"{root / 'media' / f'val_{i:03d}.mp4'}" for i in range(5)] + [str(tmp_path / "gone.mp4")]
    manifest.write_text("path\n" + "\n".join(rows) + "\n")  # labels are optional for prediction
    out = tmp_path / "preds.jsonl"
    args = ["predict", str(trained), "--manifest", str(manifest), "--out", str(out), "--clips", "1",
            "--num-workers", "0", "--no-progress"]
    assert main(args) == 1  # a skipped clip is a data problem
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in first] == rows
    assert first[-1]["skipped"].startswith("missing") and all(r["skipped"] is None for r in first[:-1])
    assert all(len(r["labels"]) == 2 and r["views"] == 1 for r in first[:-1])
    # a killed run: two complete lines and one cut short
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:25])
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "4 clips predicted, 2 already in the output" in err and "preds.jsonl:3: not a complete" in caplog.text
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in again) == sorted(rows) and again[:2] == first[:2]
    assert main(args) == 1
    assert "0 clips predicted, 6 already in the output" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 6


def test_predict_folder_and_strict_json(trained, toy, tmp_path):
    root, _, _ = toy
    out = tmp_path / "folder.jsonl"
    assert main(["predict", str(trained), "--folder", str(root / "media"), "--out", str(out), "--clips", "1",
                 "--num-workers", "1", "--no-progress"]) == 0
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
               for line in out.read_text().splitlines()]
    assert len(records) == 17 and all(Path(r["path"]).suffix == ".mp4" for r in records)  # 12 train + 5 val


def test_predict_timeline_writes_json_and_plot(trained, tmp_path, capsys):
    video = _long_video(tmp_path / "long.mp4", seconds=8.0, period=8.0)
    out, plot = tmp_path / "timeline.json", tmp_path / "timeline.png"
    assert main(["predict", str(trained), str(video), "--timeline", "--window", "2", "--hop", "1", "--out",
                 str(out), "--plot", str(plot), "--no-progress", "--num-workers", "0"]) == 0
    data = json.loads(out.read_text())
    assert data["labels"] == CLASSES and len(data["start"]) == len(data["scores"]) == 7
    assert data["scores"][0][CLASSES.index("bright")] > 0.5 > data["scores"][-1][CLASSES.index("bright")]
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "-3"], "--top-k must be >= 1"),
    (["--clips", "0"], "--clips must be >= 1"),
    (["--timeline", "--hop", "0"], "--hop must be > 0"),
    (["--window", "2"], "--window goes with --timeline"),
    (["--manifest", "m.csv"], "not both"),
])
def test_predict_usage_errors_are_one_line_exit_2(trained, toy, extra, message, capsys):
    root, _, _ = toy
    assert main(["predict", str(trained), str(root / "media" / "val_000.mp4"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_predict_prints_each_warning_once(trained, tmp_path, capsys):
    silent_film = write_av(tmp_path / "video_only.mp4", fps=8, seconds=1.5, size=(64, 48), audio=False).path
    capsys.readouterr()
    assert main(["predict", str(trained), "--top-k", "1", str(silent_film)]) == 0  # files after an option too
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("no audio track") == 1


def test_predict_manifest_segments_of_one_file_are_separate_clips(trained, tmp_path):
    video = _long_video(tmp_path / "long.mp4", seconds=6.0, period=6.0)
    manifest = tmp_path / "segments.csv"
    manifest.write_text(f"path,labels,start,end\n{video.name},bright,0,2.5\n{video.name},dark,3.5,6\n")
    out = tmp_path / "segments.jsonl"
    args = ["predict", str(trained), "--manifest", str(manifest), "--out", str(out), "--clips", "2",
            "--num-workers", "0", "--no-progress"]
    assert main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["start"], r["end"]) for r in records] == [(0.0, 2.5), (3.5, 6.0)]
    assert [r["labels"][0]["label"] for r in records] == ["bright", "dark"]  # each segment's own content
    assert main(args) == 0 and len(out.read_text().splitlines()) == 2  # both segments count as done
