"""ClipDataset and collate: targets, evaluation views, per-epoch randomness, skip markers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from mbt.config import build_config
from mbt.data.datasets import ClipDataset, collate, eval_positions
from mbt.data.manifest import ManifestError, ManifestRow
from mbt.media.decode import MediaError
from mbt.media.preprocess import Preprocessor, Sample
from media_factory import write_av


class RecordingPreprocessor:
    """Stands in for Preprocessor: records how it is called, returns inputs drawn from the generator it gets."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[dict] = []
        self.fail = fail

    def __call__(self, path, *, train, generator=None, position=None, crop=1, start=None, end=None,
                 modalities=None):
        self.calls.append(dict(path=Path(path).name, train=train, position=position, crop=crop, start=start,
                               end=end, modalities=modalities))
        if Path(path).name in self.fail:
            raise MediaError("no_audio", path, "the file has no audio stream")
        noise = torch.rand(3, generator=generator)
        return Sample(inputs={"video": noise.view(3, 1, 1, 1).expand(3, 2, 4, 4).clone(), "audio": torch.ones(8, 4)},
                      video_padded=False, audio_padded=False, warnings=[])


def rows(*labels: tuple[str, ...], start=None, end=None) -> list[ManifestRow]:
    return [ManifestRow(Path(f"/data/clip{i}.mp4"), lab, start, end, line=i + 2) for i, lab in enumerate(labels)]


# ==================================================================== targets
def test_single_label_targets_are_class_indices():
    ds = ClipDataset(rows(("dog",), ("cat",)), ["cat", "dog"], RecordingPreprocessor(), train=True,
                     modalities=("video", "audio"))
    assert [ds[i]["target"].item() for i in range(2)] == [1, 0]
    assert ds[0]["target"].dtype == torch.int64
    assert [t.item() for t in ds.targets] == [1, 0]  # by row, without decoding


def test_multi_label_targets_are_multi_hot():
    ds = ClipDataset(rows(("speech", "music"), ()), ["music", "dog", "speech"], RecordingPreprocessor(), train=True,
                     modalities=("audio",), multi_label=True)
    assert ds[0]["target"].tolist() == [1.0, 0.0, 1.0] and ds[0]["target"].dtype == torch.float32
    assert ds[1]["target"].tolist() == [0.0, 0.0, 0.0]


def test_class_split_labels_are_looked_up_in_their_own_split():
    classes = ["take", "put", "tap", "lid", "board"]  # 2 verbs then 3 nouns
    ds = ClipDataset(rows(("put", "lid"), ("take", "board")), classes, RecordingPreprocessor(), train=False,
                     modalities=("video",), class_splits=(2, 3))
    assert ds[0]["target"].tolist() == [1, 1] and ds[1]["target"].tolist() == [0, 2]
    with pytest.raises(ManifestError, match=r"manifest line 2 .*'lid' is not among class split 0"):
        ClipDataset(rows(("lid", "put")), classes, RecordingPreprocessor(), train=False, modalities=("video",),
                    class_splits=(2, 3))


@pytest.mark.parametrize("labels, kwargs, message", [
    (("wolf",), {}, r"manifest line 2 .*label 'wolf' is not in the classes file"),
    (("cat", "dog"), {}, r"manifest line 2 .*exactly one label"),
    (("cat",), {"class_splits": (1, 1)}, r"manifest line 2 .*2 class splits need one each"),
])
def test_bad_labels_fail_when_the_dataset_is_built(labels, kwargs, message):
    with pytest.raises(ManifestError, match=message):
        ClipDataset(rows(labels), ["cat", "dog"], RecordingPreprocessor(), train=True, modalities=("video",),
                    **kwargs)


# ==================================================================== evaluation views
def test_eval_views_enumerate_evenly_spaced_clips_times_crops():
    pre = RecordingPreprocessor()
    ds = ClipDataset(rows(("a",), ("a",), start=1.0, end=9.0), ["a"], pre, train=False, modalities=("audio",),
                     num_clips=4, num_crops=3)
    assert len(ds) == 2 * 4 * 3
    items = [ds[i] for i in range(len(ds))]
    assert [(it["row"], it["view"]) for it in items] == [(r, v) for r in range(2) for v in range(12)]
    views = [(c["position"], c["crop"]) for c in pre.calls[:12]]
    assert views == [(p, crop) for p in (0.0, 1 / 3, 2 / 3, 1.0) for crop in (0, 1, 2)]
    assert all(c["train"] is False and (c["start"], c["end"]) == (1.0, 9.0) for c in pre.calls)
    assert {c["path"] for c in pre.calls[12:]} == {"clip1.mp4"}


def test_one_eval_clip_is_the_centre_clip_and_training_ignores_views():
    pre = RecordingPreprocessor()
    ds = ClipDataset(rows(("a",)), ["a"], pre, train=False, modalities=("audio",))
    ds[0]
    assert (pre.calls[0]["position"], pre.calls[0]["crop"]) == (0.5, 1)
    train = ClipDataset(rows(("a",), ("a",)), ["a"], pre, train=True, modalities=("audio",), num_clips=4,
                        num_crops=3)
    assert len(train) == 2
    train[1]
    assert pre.calls[-1]["train"] is True and pre.calls[-1]["position"] is None


def test_eval_positions_include_both_ends():
    assert eval_positions(1) == [0.5]
    assert eval_positions(2) == [0.0, 1.0]
    assert eval_positions(5) == [0.0, 0.25, 0.5, 0.75, 1.0]


# ==================================================================== randomness
def test_training_randomness_depends_on_seed_epoch_and_index_only():
    def video(seed, epoch, index):
        ds = ClipDataset(rows(("a",), ("a",)), ["a"], RecordingPreprocessor(), train=True, modalities=("video",),
                         seed=seed)
        ds.set_epoch(epoch)
        return ds[index]["inputs"]["video"]

    assert torch.equal(video(0, 3, 1), video(0, 3, 1))  # a resumed run sees the same clip
    assert not torch.equal(video(0, 3, 1), video(0, 4, 1))
    assert not torch.equal(video(0, 3, 1), video(0, 3, 0))
    assert not torch.equal(video(0, 3, 1), video(1, 3, 1))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    for i in range(4):
        write_av(d / f"clip{i}.mp4", seconds=1.5, size=(64, 48))
    return d


def test_augmented_batches_are_identical_with_and_without_workers(media):
    cfg = build_config(overrides=["model.image_size=32", "model.num_frames=4", "model.spec_frames=64",
                                  "model.num_mel_bins=32"])
    ds = ClipDataset([ManifestRow(media / f"clip{i}.mp4", ("a",)) for i in range(4)], ["a"],
                     Preprocessor(cfg.preprocessor()), train=True, modalities=("video", "audio"),
                     seed=7)
    ds.set_epoch(2)

    def batches(workers):
        return list(DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate))

    inline, parallel = batches(0), batches(2)
    for a, b in zip(inline, parallel):
        assert torch.equal(a["inputs"]["video"], b["inputs"]["video"])
        assert torch.equal(a["inputs"]["audio"], b["inputs"]["audio"])
    assert inline[0]["inputs"]["video"].shape == (2, 3, 4, 32, 32)
    ds.set_epoch(3)
    assert not torch.equal(batches(0)[0]["inputs"]["video"], inline[0]["inputs"]["video"])


# ==================================================================== skips and collate
def test_collate_stacks_usable_items_and_lists_skips():
    pre = RecordingPreprocessor(fail={"clip1.mp4"})
    ds = ClipDataset(rows(("a",), ("b",), ("b",)), ["a", "b"], pre, train=False, modalities=("video", "audio"))
    batch = collate([ds[i] for i in range(3)])
    assert batch["row"].tolist() == [0, 2] and batch["target"].tolist() == [0, 1]
    assert batch["inputs"]["video"].shape == (2, 3, 2, 4, 4)
    assert batch["skipped"] == [(1, "/data/clip1.mp4", "no_audio", "the file has no audio stream")]


def test_a_batch_of_only_skips_has_no_inputs_or_targets():
    ds = ClipDataset(rows(("a",)), ["a"], RecordingPreprocessor(fail={"clip0.mp4"}), train=True,
                     modalities=("audio",))
    batch = collate([ds[0]])
    assert batch["inputs"] == {} and batch["target"] is None and len(batch["row"]) == 0
    assert [kind for _, _, kind, _ in batch["skipped"]] == ["no_audio"]


# ==================================================================== padding
class PaddingPreprocessor:
    """Samples padded by a given fraction per file name: {name: (video fraction, audio fraction)}."""

    def __init__(self, fractions: dict[str, tuple[float, float]]):
        self.fractions = fractions

    def __call__(self, path, **kwargs):
        video, audio = self.fractions.get(Path(path).name, (0.0, 0.0))
        return Sample(inputs={"video": torch.zeros(3, 2, 4, 4), "audio": torch.zeros(8, 4)},
                      video_padded=video > 0, audio_padded=audio > 0, warnings=[], video_pad_fraction=video,
                      audio_pad_fraction=audio)


def test_a_window_mostly_padding_is_a_skip_and_smaller_padding_is_listed(caplog):
    from mbt.data.datasets import ClipLog

    pre = PaddingPreprocessor({"clip0.mp4": (0.0, 0.8), "clip1.mp4": (0.6, 0.0), "clip2.mp4": (0.2, 0.3)})
    ds = ClipDataset(rows(("cat",), ("cat",), ("dog",), ("dog",)), ["cat", "dog"], pre, train=True,
                     modalities=("video", "audio"), max_pad_fraction=0.5)
    items = [ds[i] for i in range(4)]
    assert [item.get("kind") for item in items] == ["too_much_padding", "too_much_padding", None, None]
    assert "80% of the audio window" in items[0]["skipped"] and "60% of the video window" in items[1]["skipped"]
    batch = collate(items)
    assert batch["padded"] == [(2, "/data/clip2.mp4", 0.2, 0.3)] and batch["row"].tolist() == [2, 3]
    # no limit (evaluation): the same windows are used, their padding listed
    unlimited = ClipDataset(rows(("cat",), ("cat",)), ["cat", "dog"], pre, train=False, modalities=("video",))
    assert [len(b) for b in collate([unlimited[0], unlimited[1]])["padded"]] == [4, 4]

    log = ClipLog(logging.getLogger("test.cliplog"), "training clip")
    with caplog.at_level(logging.INFO, logger="test.cliplog"):
        for _ in range(3):  # three epochs of the same batch
            log.record(batch)
    assert log.take_counts() == {"skipped": {"too_much_padding": 6}, "padded": 3}
    assert log.take_counts() == {"skipped": {}, "padded": 0}  # counts restart after each take
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3  # each clip once, not once per epoch
    assert any("clip2.mp4" in m and "20% of the video window and 30% of the audio window" in m for m in messages)


def test_on_missing_modality_error_raises_through_loader_workers():
    from torch.utils.data import DataLoader

    ds = ClipDataset(rows(("cat",), ("dog",)), ["cat", "dog"], RecordingPreprocessor(fail={"clip1.mp4"}),
                     train=False, modalities=("video", "audio"), on_missing_modality="error")
    with pytest.raises(MediaError) as info:
        list(DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate))
    assert info.value.kind == "no_audio" and info.value.path.endswith("clip1.mp4")
