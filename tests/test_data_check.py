"""The bad-media corpus: each kind of broken or odd file gives its documented outcome in `mbt data check`
(problem vs warning, kind, reason) and in the dataset (a counted skip marker, or tensors of the right shape)."""

from __future__ import annotations

import builtins
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import mbt.media.decode as decode
from mbt.cli import main
from mbt.config import build_config
from mbt.data.check import check_manifest
from mbt.data.datasets import ClipDataset, collate
from mbt.data.manifest import ManifestRow, read_manifest, write_manifest
from mbt.media.decode import MediaError
from mbt.media.preprocess import Preprocessor
from media_factory import tone, write_av

# A small window keeps the corpus small: 4 frames at stride 2 of 25 fps (0.32 s), 96 spectrogram frames (~1 s).
OVERRIDES = ["model.image_size=32", "model.num_frames=4", "model.spec_frames=96", "model.num_mel_bins=32"]
SIZE = (64, 48)
SECONDS = 1.5  # longer than both windows

# name -> (what check reports, kind): "problem" rows are unusable, "warn" rows usable with those warnings
EXPECTED: dict[str, tuple[str, set[str] | str]] = {
    "good.mp4": ("ok", set()),
    "zero_bytes.mp4": ("problem", "empty"),
    "truncated.mp4": ("problem", "corrupt"),
    "not_media.mp4": ("problem", "unreadable"),
    "audio_only.m4a": ("problem", "no_video"),
    "video_only.mp4": ("problem", "no_audio"),
    "directory.mp4": ("problem", "not_a_file"),
    "missing.mp4": ("problem", "missing"),
    "outside_span.mp4": ("problem", "empty"),  # start/end past the end of the file
    "single_frame.mp4": ("problem", "too_much_padding"),  # 93% of the audio window would be silence
    "silent.mp4": ("warn", {"silent"}),
    "still.mp4": ("warn", {"still"}),
    "short.mp4": ("warn", {"short"}),
    "vfr.mp4": ("warn", {"vfr"}),
    "surround_44k.mp4": ("ok", set()),  # 6 channels at 44.1 kHz are averaged and resampled: nothing to report
    "large.mp4": ("warn", {"large"}),
}
REASONS = {  # words the reason must contain, so a user can tell what is wrong
    "zero_bytes.mp4": "empty", "not_media.mp4": "not a media file", "truncated.mp4": "cut-off MP4",
    "directory.mp4": "directory", "missing.mp4": "no such file", "audio_only.m4a": "no video stream",
    "video_only.mp4": "no audio stream", "silent.mp4": "silent", "still.mp4": "still", "short.mp4": "padding",
    "vfr.mp4": "variable frame rate", "large.mp4": "2560x1440",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    write_av(d / "good.mp4", seconds=SECONDS, size=SIZE)
    (d / "zero_bytes.mp4").write_bytes(b"")
    data = (d / "good.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[:len(data) // 2])  # the index (moov) is at the end: it is cut off
    (d / "not_media.mp4").write_bytes(b"this is a text file with an .mp4 name\n" * 40)
    write_av(d / "audio_only.m4a", video=False, seconds=SECONDS)
    write_av(d / "video_only.mp4", audio=False, seconds=SECONDS, size=SIZE)
    (d / "directory.mp4").mkdir()
    write_av(d / "outside_span.mp4", seconds=SECONDS, size=SIZE)
    write_av(d / "single_frame.mp4", seconds=0.04, size=SIZE)
    write_av(d / "silent.mp4", seconds=SECONDS, size=SIZE, audio_fn=np.zeros_like)
    write_av(d / "still.mp4", seconds=SECONDS, size=SIZE, frame_fn=lambda i, t: np.full((48, 64, 3), 90, np.uint8))
    write_av(d / "short.mp4", seconds=0.5, size=SIZE)
    write_av(d / "vfr.mp4", seconds=SECONDS, size=SIZE, vfr=True)
    write_av(d / "surround_44k.mp4", seconds=SECONDS, size=SIZE, channels=6, sample_rate=44100)
    write_av(d / "large.mp4", seconds=1.0, size=(2560, 1440), fps=5)
    rows = [ManifestRow(d / name, (f"class{i % 2}",), *((5.0, 6.0) if name == "outside_span.mp4" else ()))
            for i, name in enumerate(EXPECTED)]
    write_manifest(d / "manifest.csv", rows)
    return d


@pytest.fixture(scope="module")
def report(corpus):
    return check_manifest(corpus / "manifest.csv", build_config(overrides=OVERRIDES), progress=False)


def test_check_reports_each_bad_file_as_a_problem_of_its_kind(report):
    problems = {Path(p["path"]).name: p for p in report.problems}
    expected = {name: kind for name, (outcome, kind) in EXPECTED.items() if outcome == "problem"}
    assert {name: p["kind"] for name, p in problems.items()} == expected
    for name, problem in problems.items():
        if name in REASONS:
            assert REASONS[name] in problem["reason"], problem


def test_check_reports_usable_oddities_as_warnings_only(report):
    found: dict[str, set[str]] = {}
    for w in report.warnings:
        found.setdefault(Path(w["path"]).name, set()).add(w["kind"])
        if Path(w["path"]).name in REASONS:
            assert REASONS[Path(w["path"]).name] in w["reason"], w
    usable = {name: kinds for name, (outcome, kinds) in EXPECTED.items() if outcome != "problem"}
    assert {name: found.get(name, set()) for name in usable} == usable
    assert report.ok == len(usable) and report.rows == len(EXPECTED)


def test_check_with_audio_only_modalities_accepts_a_file_without_video(corpus):
    rows = [ManifestRow(corpus / "audio_only.m4a", ("a",)), ManifestRow(corpus / "video_only.mp4", ("a",))]
    write_manifest(corpus / "audio_manifest.csv", rows)
    cfg = build_config(overrides=[*OVERRIDES, "model.modalities=[audio]"])
    result = check_manifest(corpus / "audio_manifest.csv", cfg, progress=False)
    assert [(Path(p["path"]).name, p["kind"]) for p in result.problems] == [("video_only.mp4", "no_audio")]


def test_permission_denied_is_an_unreadable_problem(corpus, tmp_path, monkeypatch):
    locked = tmp_path / "locked.mp4"
    locked.write_bytes((corpus / "good.mp4").read_bytes())
    locked.chmod(0)
    try:
        with open(locked, "rb"):
            blocked = False
    except PermissionError:
        blocked = True
    if not blocked:
        # Running as root: chmod 000 does not block reads. Make the decoder's open() fail the way the OS would.
        def denying_open(file, *args, **kwargs):
            if Path(file) == locked:
                raise PermissionError(13, "Permission denied", str(file))
            return builtins.open(file, *args, **kwargs)

        monkeypatch.setattr(decode, "open", denying_open, raising=False)
    write_manifest(tmp_path / "m.csv", [ManifestRow(locked, ("a",))])
    result = check_manifest(tmp_path / "m.csv", build_config(overrides=OVERRIDES), progress=False)
    assert [(p["kind"], "Permission denied" in p["reason"]) for p in result.problems] == [("unreadable", True)]


def test_check_command_writes_the_json_contract_and_exits_1_on_problems(corpus, tmp_path, capsys):
    out = tmp_path / "report.json"
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    code = main(["data", "check", str(corpus / "manifest.csv"), *sets, "--json", str(out), "--jobs", "2"])
    assert code == 1
    data = json.loads(out.read_text())
    assert data["ok"] == sum(outcome != "problem" for outcome, _ in EXPECTED.values())
    for entry in data["problems"] + data["warnings"]:
        assert {"path", "kind", "reason"} <= set(entry)
    assert "no_video" in capsys.readouterr().out  # the human summary names the kinds


def test_check_command_exits_0_when_every_row_is_usable(corpus, tmp_path):
    write_manifest(tmp_path / "m.csv", [ManifestRow(corpus / "good.mp4", ("a",)),
                                        ManifestRow(corpus / "silent.mp4", ("b",))])
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    assert main(["data", "check", str(tmp_path / "m.csv"), *sets, "--jobs", "1"]) == 0


# ==================================================================== the same corpus through the dataset
def _dataset(corpus, *, train, on_missing_modality="skip"):
    cfg = build_config(overrides=OVERRIDES)
    rows = read_manifest(corpus / "manifest.csv")
    return ClipDataset(rows, ["class0", "class1"], Preprocessor(cfg.preprocessor()), train=train,
                       modalities=("video", "audio"), on_missing_modality=on_missing_modality,
                       max_pad_fraction=cfg.data.max_pad_fraction if train else None), cfg


def _skipped_by(dataset_train: bool, outcome: str, kind) -> bool:
    """Whether the dataset skips a row check calls `outcome`/`kind`: padding is limited in training only."""
    return outcome == "problem" and (dataset_train or kind != "too_much_padding")


@pytest.mark.parametrize("train", [True, False])
def test_dataset_skips_exactly_the_problem_rows_with_their_kind(corpus, train, caplog):
    dataset, cfg = _dataset(corpus, train=train)
    with caplog.at_level("INFO"):
        items = [dataset[i] for i in range(len(dataset))]
    names = list(EXPECTED)
    for item in items:
        outcome, kind = EXPECTED[names[item["row"]]]
        if _skipped_by(train, outcome, kind):
            assert "inputs" not in item and "target" not in item  # never a tensor with a label
            assert item["kind"] == kind and item["skipped"] and item["path"].endswith(names[item["row"]])
        else:
            assert item["inputs"]["video"].shape == (3, 4, 32, 32)
            assert item["inputs"]["audio"].shape == (96, 32)
            assert torch.isfinite(item["inputs"]["audio"]).all() and torch.isfinite(item["inputs"]["video"]).all()
            assert item["target"].item() == item["row"] % 2
    skipped = [item for item in items if "skipped" in item]
    assert len(skipped) == sum(_skipped_by(train, *expected) for expected in EXPECTED.values())
    # the dataset runs in loader workers, once per epoch: it leaves logging each skip once to its consumer (ClipLog)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_skip_counts_survive_data_loader_workers(corpus):
    dataset, _ = _dataset(corpus, train=False)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate)
    batches = list(loader)
    skipped = [s for b in batches for s in b["skipped"]]
    usable = sum(len(b["row"]) for b in batches)
    problems = {name for name, expected in EXPECTED.items() if _skipped_by(False, *expected)}
    assert sorted(Path(path).name for _, path, _, _ in skipped) == sorted(problems)
    assert usable == len(EXPECTED) - len(problems)
    for b in batches:
        if b["target"] is not None:
            assert b["inputs"]["video"].shape[0] == b["target"].shape[0] == len(b["row"])


def test_on_missing_modality_error_raises_instead_of_skipping(corpus):
    dataset, _ = _dataset(corpus, train=False, on_missing_modality="error")
    with pytest.raises(MediaError) as info:
        dataset[list(EXPECTED).index("audio_only.m4a")]
    assert info.value.kind == "no_video"


# ==================================================================== stats over the same corpus
def test_stats_normalise_the_usable_clips_to_zero_mean_unit_std(corpus, tmp_path, capsys):
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    out = tmp_path / "stats.json"
    assert main(["data", "stats", str(corpus / "manifest.csv"), *sets, "--json", str(out), "--jobs", "1"]) == 0
    stats = json.loads(out.read_text())
    assert "normalisation: custom" in capsys.readouterr().out
    # stats read only the audio: a file without video counts
    # (a window mostly padding is a training skip, but stats pad it as evaluation does)
    problems = [name for name, (outcome, kind) in EXPECTED.items()
                if outcome == "problem" and kind not in ("no_video", "too_much_padding")]
    short = ["single_frame.mp4", "short.mp4"]  # padded with silence, as training pads them, and counted
    assert (stats["skipped"], stats["padded"]) == (len(problems), len(short))
    assert stats["clips"] == len(EXPECTED) - len(problems)

    # the property the numbers are for: normalised with them, the same clips have mean 0 and std 1
    cfg = build_config(overrides=[*OVERRIDES, "data.normalisation=custom", f"data.spec_mean={stats['spec_mean']}",
                                  f"data.spec_std={stats['spec_std']}"])
    pre = Preprocessor(cfg.preprocessor())
    used = [name for name in EXPECTED if name not in problems]
    specs = torch.stack([pre(corpus / name, train=False, modalities=("audio",)).inputs["audio"] for name in used])
    assert abs(specs.mean().item()) < 1e-3 and abs(specs.std(unbiased=False).item() - 1) < 1e-3


def test_stats_of_short_clips_only_pad_them_and_say_so(tmp_path, capsys):
    # clips shorter than the audio window (0.975 s here), which `data check` calls usable and training pads
    rows = ["path,labels"]
    for i, seconds in enumerate((0.4, 0.6, 0.8)):
        write_av(tmp_path / f"short{i}.mp4", seconds=seconds, size=SIZE, audio_fn=tone(220.0 * (i + 1)))
        rows.append(f"short{i}.mp4,a")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    out = tmp_path / "stats.json"
    assert main(["data", "stats", str(tmp_path / "m.csv"), *sets, "--json", str(out), "--jobs", "1"]) == 0
    assert "3 shorter than the 96-frame window, padded with silence" in capsys.readouterr().out
    stats = json.loads(out.read_text())
    assert stats["clips"] == stats["padded"] == 3 and math.isfinite(stats["spec_mean"]) and stats["spec_std"] > 0


def test_stats_without_a_usable_clip_write_null_not_nan(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("path,labels\ngone.mp4,a\n")
    out = tmp_path / "stats.json"
    assert main(["data", "stats", str(tmp_path / "m.csv"), "--json", str(out), "--jobs", "1"]) == 1
    text = out.read_text()
    assert "NaN" not in text and json.loads(text)["spec_mean"] is None
    assert "no usable clip" in capsys.readouterr().out


# ==================================================================== labels and encodings
@pytest.fixture
def labelled(corpus, tmp_path):
    """A classes file [Dog, cat, Bird] and a manifest of good clips with right and wrong labels."""
    (tmp_path / "classes.txt").write_text("Dog\ncat\nBird\n", encoding="utf-8")
    good = corpus / "good.mp4"
    labels = ["Dog", "dog", "cta", "", "Dog;cat", "Bird"]
    lines = ["path,labels"] + [f"{good},{label}" for label in labels]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def _check_json(tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "r.json"
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    code = main(["data", "check", *args, *sets, "--jobs", "1", "--json", str(out)])
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_check_reports_unknown_empty_and_wrongly_cased_labels(labelled, capsys):
    code, report = _check_json(labelled, str(labelled / "m.csv"), "--classes", str(labelled / "classes.txt"))
    assert code == 1
    found = sorted((p["line"], p["kind"]) for p in report["problems"])
    assert found == [(3, "unknown_label"), (4, "unknown_label"), (5, "no_label")]  # "Dog;cat" is fine here
    reasons = {p["line"]: p["reason"] for p in report["problems"]}
    assert "'dog' is not in classes.txt" in reasons[3] and "did you mean 'Dog'?" in reasons[3]
    assert "did you mean 'cat'?" in reasons[4]
    assert report["ok"] == 3
    printed = capsys.readouterr().out
    assert "m.csv:3: " in printed and "m.csv:4: " in printed  # the summary lists manifest:line


def test_check_with_a_single_label_config_also_flags_several_labels(labelled, tmp_path):
    import yaml

    (labelled / "config.yaml").write_text(yaml.safe_dump({"data": {"classes": "classes.txt"}}))
    code, report = _check_json(labelled, str(labelled / "m.csv"), "--config", str(labelled / "config.yaml"))
    assert code == 1
    assert (6, "many_labels") in [(p["line"], p["kind"]) for p in report["problems"]]


def test_byte_order_marks_in_manifest_and_classes_file_are_ignored(labelled, corpus, tmp_path):
    (tmp_path / "classes.txt").write_bytes(b"\xef\xbb\xbfa\nb\n")
    (tmp_path / "m.csv").write_bytes(b"\xef\xbb\xbfpath,labels\n" + f"{corpus / 'good.mp4'},a\n".encode())
    code, report = _check_json(tmp_path, str(tmp_path / "m.csv"), "--classes", str(tmp_path / "classes.txt"))
    assert code == 0 and report["problems"] == [] and report["ok"] == 1


def test_a_latin1_manifest_is_one_line_naming_file_and_line(corpus, tmp_path, capsys):
    (tmp_path / "m.csv").write_bytes(f"path,labels\n{corpus / 'good.mp4'},a\n{corpus / 'good.mp4'},".encode()
                                     + "été\n".encode("latin-1"))
    code, _ = _check_json(tmp_path, str(tmp_path / "m.csv"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "m.csv:3: manifest is not UTF-8 text (byte 0xe9" in err


def test_a_manifest_with_a_header_and_no_rows_is_a_problem(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("path,labels\n")
    code, report = _check_json(tmp_path, str(tmp_path / "m.csv"))
    assert code == 1 and [p["kind"] for p in report["problems"]] == ["no_rows"] and report["ok"] == 0


def test_a_segment_inside_a_file_is_judged_on_its_own_span(tmp_path):
    """A row's [start, end] is scanned from its start: a late segment of a whole file is not cut off, and an early
    segment of a cut-off file is intact (only a segment reaching past the cut is)."""
    from fault_corpus import _remux

    write_av(tmp_path / "long.mp4", seconds=3.0, size=SIZE)
    _remux(tmp_path / "long.mp4", tmp_path / "fast.mp4", options={"movflags": "+faststart"})
    data = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])  # 3 s declared, about 1.4 s decodable
    rows = [ManifestRow(tmp_path / "long.mp4", ("a",), 2.0, 3.0), ManifestRow(tmp_path / "cut.mp4", ("a",), 0.0, 1.0),
            ManifestRow(tmp_path / "cut.mp4", ("a",), 1.0, 3.0)]
    write_manifest(tmp_path / "m.csv", rows)
    report = check_manifest(tmp_path / "m.csv", build_config(overrides=OVERRIDES), progress=False)
    kinds = {line: [e["kind"] for e in report.problems + report.warnings if e["line"] == line] for line in (2, 3, 4)}
    assert kinds[2] == [] and kinds[3] == []
    assert "truncated" in kinds[4] or "too_much_padding" in kinds[4]
    assert "cut off" in next(e["reason"] for e in report.problems + report.warnings if e["line"] == 4)
