"""The embedded demo set: real H.264 + AAC mp4 files, manifests, determinism, reuse, and signals that carry the label."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from mbt.data.demo import DemoSet, build_demo_set
from mbt.data.manifest import read_classes, read_manifest

SMALL = {"num_train": 16, "num_val": 8, "num_test": 8, "progress": False}
GRID_S = 0.5  # the demo config samples frames every 0.5 s


@pytest.fixture(scope="module")
def fusion_set(tmp_path_factory) -> DemoSet:
    return build_demo_set(tmp_path_factory.mktemp("demo"), variant="fusion", jobs=2, **SMALL)


@pytest.fixture(scope="module")
def relation_set(tmp_path_factory) -> DemoSet:
    return build_demo_set(tmp_path_factory.mktemp("demo"), variant="relation", jobs=2, **SMALL)


@pytest.fixture(scope="module")
def match_set(tmp_path_factory) -> DemoSet:
    return build_demo_set(tmp_path_factory.mktemp("demo"), variant="match", jobs=2, **SMALL)


def decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All frames (T, H, W, 3) uint8 and the mono audio samples of a clip."""
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    return frames, audio


def meta_rows(demo: DemoSet) -> list[dict[str, str]]:
    with demo.meta.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def energy_10ms(audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    hop = sample_rate // 100
    usable = len(audio) // hop * hop
    return (audio[:usable].reshape(-1, hop) ** 2).mean(axis=1)


def colour_name(rgb: np.ndarray) -> str:
    """Name a strongly saturated colour by which channels are high."""
    high = rgb > 140
    low = rgb < 110
    names = {(True, False, False): "red", (False, True, False): "green", (False, False, True): "blue",
             (True, True, False): "yellow"}
    for pattern, name in names.items():
        if all(high[i] if on else low[i] for i, on in enumerate(pattern)):
            return name
    return f"unclear {rgb.round()}"


def all_clips(demo: DemoSet) -> list[Path]:
    return [row.path for split in (demo.train, demo.val, demo.test) for row in read_manifest(split)]


def test_clips_are_h264_aac_mp4_of_the_requested_duration_rate_and_size(fusion_set):
    for path in all_clips(fusion_set):
        with av.open(str(path)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264" and video.format.name == "yuv420p"
            assert (video.width, video.height) == (64, 64)
            assert video.average_rate == 8
            assert audio.codec_context.name == "aac" and audio.sample_rate == 16000
            assert audio.layout.nb_channels == 1
            assert container.duration / 1e6 == pytest.approx(4.0, abs=0.1)
        frames, samples = decode(path)
        assert frames.shape == (32, 64, 64, 3)
        assert 64000 <= len(samples) < 64000 + 2048  # AAC pads the last 1024-sample frame


def test_non_default_format_is_respected(tmp_path):
    demo = build_demo_set(tmp_path, variant="relation", num_train=2, num_val=2, num_test=2, seconds=3.0, fps=4,
                          size=48, sample_rate=8000, jobs=1, progress=False)
    for path in all_clips(demo):
        frames, samples = decode(path)
        assert frames.shape == (12, 48, 48, 3)
        assert 24000 <= len(samples) < 24000 + 2048
        with av.open(str(path)) as container:
            assert container.streams.audio[0].sample_rate == 8000
            assert container.streams.video[0].average_rate == 4


@pytest.mark.parametrize("variant", ["fusion", "relation", "match"])
def test_manifests_list_every_clip_once_with_a_known_label_and_balanced_classes(variant, fusion_set, relation_set,
                                                                                 match_set):
    demo = {"fusion": fusion_set, "relation": relation_set, "match": match_set}[variant]
    assert demo.variant == variant
    assert read_classes(demo.classes) == demo.class_names
    assert len(demo.class_names) == (8 if variant == "fusion" else 2)
    listed = []
    for split, expected in ((demo.train, 16), (demo.val, 8), (demo.test, 8)):
        rows = read_manifest(split)
        assert len(rows) == expected
        counts = Counter(label for row in rows for label in row.labels)
        assert all(len(row.labels) == 1 for row in rows)
        assert set(counts) <= set(demo.class_names)
        assert max(counts.values()) - min(counts.get(c, 0) for c in demo.class_names) <= 1
        listed += [row.path.resolve() for row in rows]
    assert len(set(listed)) == len(listed)  # no clip in two splits
    assert set(listed) == {p.resolve() for p in (demo.root / "media").glob("*.mp4")}


def test_meta_describes_every_listed_clip(fusion_set):
    manifest = {row.path.resolve(): row.labels[0] for row in read_manifest(fusion_set.train)}
    manifest |= {row.path.resolve(): row.labels[0] for row in read_manifest(fusion_set.val)}
    manifest |= {row.path.resolve(): row.labels[0] for row in read_manifest(fusion_set.test)}
    meta = {(fusion_set.root / row["path"]).resolve(): row for row in meta_rows(fusion_set)}
    assert set(meta) == set(manifest)
    for path, row in meta.items():
        assert row["label"] == manifest[path] == f"{row['visual']}+{row['sound']}"


def test_fusion_video_shows_the_visual_group_and_audio_the_sound_group(fusion_set):
    for row in meta_rows(fusion_set):
        frames, audio = decode(fusion_set.root / row["path"])
        pixels = frames.astype(int)
        saturated = pixels.max(-1) - pixels.min(-1) > 80
        if row["corrupted"] == "video":
            assert saturated.mean() < 0.005, row  # grey noise: no object to see
        else:
            # A big object in every frame, whose colour names the visual group.
            assert saturated.mean(axis=(1, 2)).min() > 0.05, row
            assert colour_name(pixels[saturated].mean(axis=0)) == row["visual"].split("_")[0], row

        power = np.abs(np.fft.rfft(audio[:64000])) ** 2
        freqs = np.fft.rfftfreq(64000, 1 / 16000)
        peakiness = power.max() / np.median(power)
        if row["corrupted"] == "audio":
            assert peakiness < 1e3, row  # white noise: no tone stands out
            continue
        assert peakiness > 1e4, row
        peak = freqs[power.argmax()]
        assert peak == pytest.approx(float(row["tone_hz"]), abs=1.0)
        energy = energy_10ms(audio)
        duty = (energy > 0.25 * energy.max()).mean()
        if row["sound"] == "hum":
            assert peak < 600 and duty > 0.95, row
        else:
            assert peak > 1200 and 0.4 < duty < 0.6, row  # 0.25 s on, 0.25 s off


def test_fusion_corrupts_one_modality_in_a_tenth_of_the_clips_each(fusion_set):
    train = [row for row in meta_rows(fusion_set) if row["split"] == "train"]
    assert Counter(row["corrupted"] for row in train) == {"none": 12, "video": 2, "audio": 2}


def test_relation_flash_and_beep_coincide_only_in_sync(relation_set):
    for row in meta_rows(relation_set):
        frames, audio = decode(relation_set.root / row["path"])
        sampled = frames[::4].astype(float).mean(axis=(1, 2, 3))  # 2 fps, as the demo config samples
        # Exactly one sampled frame sees the flash, far brighter than the rest.
        bright = sampled > sampled.min() + 100
        assert bright.sum() == 1, (row, sampled.round())
        t_flash = np.argmax(sampled) * GRID_S
        energy = energy_10ms(audio)
        t_beep = np.argmax(energy > 0.5 * energy.max()) * 0.01
        assert t_flash == float(row["video_event_s"])
        assert t_beep == pytest.approx(float(row["audio_event_s"]), abs=0.02)
        if row["label"] == "in_sync":
            assert abs(t_flash - t_beep) < 0.02, row
        else:
            assert abs(t_flash - t_beep) >= 1.5 - 0.02, row


def test_relation_event_times_alone_say_nothing_about_the_label(relation_set):
    # 16 training clips = 8 per class: every 0.5 s slot holds exactly one flash and one beep in each class.
    train = [row for row in meta_rows(relation_set) if row["split"] == "train"]
    slots = sorted(i * GRID_S for i in range(8))
    for label in ("in_sync", "out_of_sync"):
        rows = [row for row in train if row["label"] == label]
        assert sorted(float(row["video_event_s"]) for row in rows) == slots
        assert sorted(float(row["audio_event_s"]) for row in rows) == slots


MATCHING = {("red", "low"), ("blue", "high")}  # the match variant's definition of `match`


def match_cues(path: Path) -> dict[str, float | str | int]:
    """What the decoded clip shows and plays: flash colour and onset, tone pitch, frequency, onset and length."""
    frames, audio = decode(path)
    sampled = frames[::4].astype(float).mean(axis=(1, 2))  # (8, 3) mean colour at 2 fps, as the demo config samples
    flashed = np.flatnonzero(sampled.max(axis=1) > 150)  # a saturated flash drives one channel far above the dark
    dominant = sampled[flashed].mean(axis=0).argmax()
    t_flash = flashed[0] * GRID_S if len(flashed) else float("nan")
    energy = energy_10ms(audio)
    loud = energy > 0.5 * energy.max()
    t_tone = np.argmax(loud) * 0.01
    # Dominant frequency over the flash's second: 1 Hz resolution.
    window = audio[round(t_flash * 16000):][:16000]
    tone_hz = np.fft.rfftfreq(len(window), 1 / 16000)[np.abs(np.fft.rfft(window)).argmax()]
    return {"flash_frames": len(flashed), "flash_span": int(flashed[-1] - flashed[0]) + 1 if len(flashed) else 0,
            "colour": {0: "red", 2: "blue"}.get(int(dominant), f"channel {dominant}"), "t_flash": t_flash,
            "tone_hz": tone_hz, "pitch": "low" if tone_hz < 1000 else "high", "t_tone": t_tone,
            "tone_s": loud.sum() * 0.01, "num_frames": len(frames), "num_samples": len(audio)}


def test_match_flash_and_tone_start_together_and_last_one_second(match_set):
    for row in meta_rows(match_set):
        cues = match_cues(match_set.root / row["path"])
        assert cues["num_frames"] == 32 and 64000 <= cues["num_samples"] < 64000 + 2048, row
        # Two consecutive sampled frames (1.0 s) see the flash; the tone sounds over that same second.
        assert cues["flash_frames"] == cues["flash_span"] == 2, (row, cues)
        assert cues["t_flash"] == float(row["video_event_s"]) == float(row["audio_event_s"]), (row, cues)
        assert abs(cues["t_tone"] - cues["t_flash"]) < GRID_S, (row, cues)  # within one sampled frame
        assert cues["t_tone"] == pytest.approx(float(row["audio_event_s"]), abs=0.02), (row, cues)
        assert cues["tone_s"] == pytest.approx(1.0, abs=0.03), (row, cues)


def test_match_label_is_the_xor_of_the_colour_seen_and_the_pitch_heard(match_set):
    for row in meta_rows(match_set):
        cues = match_cues(match_set.root / row["path"])
        assert (cues["colour"], cues["pitch"]) == (row["visual"], row["sound"]), (row, cues)
        assert cues["tone_hz"] == pytest.approx(float(row["tone_hz"]), abs=2.0), (row, cues)
        assert row["label"] == ("match" if (cues["colour"], cues["pitch"]) in MATCHING else "mismatch"), row


def test_match_colour_and_pitch_alone_say_nothing_about_the_label(match_set):
    assert match_set.class_names == ["match", "mismatch"]
    rows = meta_rows(match_set)
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        cells = Counter((row["visual"], row["sound"]) for row in rows if row["split"] == split)
        # Every (colour, pitch) cell equally often: each of colour and pitch is uniform within each class.
        assert cells == {cell: n // 4 for cell in (("red", "low"), ("red", "high"), ("blue", "low"),
                                                   ("blue", "high"))}, split


@pytest.mark.parametrize("variant", ["fusion", "relation", "match"])
def test_same_seed_gives_identical_clips_whatever_the_number_of_processes(variant, fusion_set, relation_set,
                                                                          match_set, tmp_path):
    first = {"fusion": fusion_set, "relation": relation_set, "match": match_set}[variant]
    again = build_demo_set(tmp_path, variant=variant, jobs=1, **SMALL)
    assert again.root != first.root
    for a, b in zip(all_clips(first), all_clips(again), strict=True):
        assert a.name == b.name
        # Byte-identical files (the encoders run deterministically), hence identical decoded frames and audio.
        assert a.read_bytes() == b.read_bytes(), a.name
    assert first.meta.read_text() == again.meta.read_text()


def test_no_two_clips_are_alike_within_or_across_splits(fusion_set):
    digests = [hashlib.sha256(decode(path)[0].tobytes()).hexdigest() for path in all_clips(fusion_set)]
    assert len(set(digests)) == len(digests)


def tiny(root: Path, **overrides) -> DemoSet:
    params = {"variant": "relation", "num_train": 4, "num_val": 2, "num_test": 2, "jobs": 1, "progress": False}
    return build_demo_set(root, **params | overrides)


def mtimes(demo: DemoSet) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in demo.root.rglob("*") if p.is_file()}


def test_a_complete_build_is_reused_without_rewriting_anything(tmp_path):
    demo = tiny(tmp_path)
    before = mtimes(demo)
    assert tiny(tmp_path) == demo
    assert mtimes(demo) == before


def test_changed_parameters_rebuild_and_drop_clips_no_longer_listed(tmp_path):
    demo = tiny(tmp_path)
    old = decode(demo.root / "media" / "test_00000.mp4")[0]
    rebuilt = tiny(tmp_path, seed=1, num_train=2)
    assert not np.array_equal(decode(rebuilt.root / "media" / "test_00000.mp4")[0], old)
    assert {p.name for p in (rebuilt.root / "media").iterdir()} == {p.name for p in all_clips(rebuilt)}
    assert len(all_clips(rebuilt)) == 6


def test_an_interrupted_build_is_completed_on_the_next_call(tmp_path):
    demo = tiny(tmp_path)
    missing = demo.root / "media" / "train_00001.mp4"
    missing.unlink()
    tiny(tmp_path)
    frames, _ = decode(missing)
    assert frames.shape[0] == 32


@pytest.mark.parametrize(("overrides", "message"), [
    ({"variant": "karaoke"}, "karaoke"),
    ({"fps": 5}, "fps"),
    ({"seconds": 4.2}, "seconds"),
    ({"size": 63}, "size"),
    ({"num_val": 0}, "num_val"),
])
def test_bad_parameters_are_refused_with_the_value_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, **overrides)
    assert not any(tmp_path.iterdir())  # refused before anything is written
