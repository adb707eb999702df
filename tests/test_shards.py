"""WebDataset shards (`mbt data shard`) and training / evaluation streamed from them.

The split of an epoch over ranks and loader workers is checked as arithmetic (every sample once, the same count on
every rank, a function of (seed, epoch)); the rest end to end through the CLI on generated clips: writing shards
(resumably), training from them (a resumed run ends bit-identical to an uninterrupted one), a bad sample inside a
shard (a counted skip), and evaluation from shards (the same metrics as from the manifest)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from engine_fixtures import toy_config, write_toy_set
from mbt import MBT
from mbt.cli import main
from mbt.config import load_config
from mbt.data.shard_stream import Segment, ShardStream, eval_plan, train_plan
from mbt.data.shards import INDEX_NAME, is_shard_source, parse_size, resolve_shards, write_shards
from mbt.media.preprocess import Preprocessor
from mbt.media.settings import PreprocessorConfig
from mbt.recipes.train import train


def _positions(plan: list[Segment], counts: list[int]) -> list[int]:
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return [int(offsets[s.shard]) + s.first + i for s in plan for i in range(s.count)]


def _rank_positions(counts, *, seed=0, epoch=0, rank, world, workers, batch_size):
    out = []
    for worker in range(workers):
        plan, sizes = train_plan(counts, seed=seed, epoch=epoch, rank=rank, world=world, worker=worker,
                                 workers=workers, batch_size=batch_size)
        positions = _positions(plan, counts)
        assert len(positions) == sum(sizes)
        out.append(positions)
    return out


# ------------------------------------------------------------------------------------------------ the plan

@pytest.mark.parametrize("world,workers", [(1, 1), (2, 3), (4, 2), (3, 1)])
def test_every_sample_once_per_epoch_and_the_same_count_on_every_rank(world, workers):
    counts = [7, 3, 5, 9, 1, 11, 4, 8]  # 48 samples, shards of unequal sizes split between ranks and workers
    batch_size = 48 // world // 4  # P = 48 / world divides into 4 whole batches: nothing padded or dropped
    per_rank = [sum(map(len, _rank_positions(counts, rank=r, world=world, workers=workers,
                                              batch_size=batch_size))) for r in range(world)]
    assert per_rank == [48 // world] * world
    everything = [p for r in range(world) for w in _rank_positions(counts, rank=r, world=world, workers=workers,
                                                                    batch_size=batch_size) for p in w]
    assert sorted(everything) == list(range(48))


def test_an_uneven_epoch_pads_like_manifests_and_keeps_the_ranks_in_step():
    counts = [7, 3, 5, 9, 1]  # 25 samples over 3 ranks: P = 9 each (2 repeated), batches of 4 (1 dropped per rank)
    seen = Counter()
    for rank in range(3):
        positions = [p for w in _rank_positions(counts, rank=rank, world=3, workers=2, batch_size=4) for p in w]
        assert len(positions) == 8  # two whole batches on every rank
        assert len(set(positions)) == 8
        seen.update(positions)
    assert max(seen.values()) <= 2 and len(seen) >= 25 - 3  # at most the dropped tails are missing


def test_the_plan_is_a_function_of_seed_and_epoch():
    counts = [5] * 12

    def order(seed, epoch):
        return _rank_positions(counts, seed=seed, epoch=epoch, rank=0, world=1, workers=1, batch_size=4)[0]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == sorted(order(1, 0)) == list(range(60))


def test_evaluation_reads_every_sample_once_in_index_order():
    counts = [7, 3, 5, 9]
    got = [p for r in range(3) for w in range(2)
           for p in _positions(eval_plan(counts, rank=r, world=3, worker=w, workers=2), counts)]
    assert got == list(range(24))


def test_sizes_parse_and_nonsense_is_refused():
    assert parse_size("1GB") == 10**9 and parse_size("256MiB") == 256 * 2**20 and parse_size("1500") == 1500
    for bad in ("big", "1 PB", "-3MB", "0"):
        with pytest.raises(ValueError, match="--shard-size"):
            parse_size(bad)


# ------------------------------------------------------------------------------------------------ writing

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    train_csv = write_toy_set(root, 12, seconds=1.0)
    val_csv = write_toy_set(root, 6, seconds=1.0, name="val")
    shards = root / "train-shards"
    assert main(["data", "shard", str(train_csv), "--out", str(shards), "--shard-size", "40KB"]) == 0
    assert main(["data", "shard", str(val_csv), "--out", str(root / "val-shards"), "--shard-size", "40KB"]) == 0
    return root, train_csv, val_csv, shards


def _index(folder: Path) -> dict:
    return json.loads((folder / INDEX_NAME).read_text())


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shards_hold_each_row_once_with_its_labels_and_an_index(toy):
    root, train_csv, _, shards = toy
    index = _index(shards)
    assert index["complete"] and index["samples"] == 12 and index["rows"] == 12
    assert len(index["shards"]) > 2  # 40 KB shards: several, so that ranks and workers have some to split
    assert sorted(index["classes"]) == ["bright", "dark"]
    assert sum(s["samples"] for s in index["shards"]) == 12
    manifest = {line.split(",")[0]: line.split(",")[1] for line in train_csv.read_text().splitlines()[1:]}
    seen = {}
    for entry in index["shards"]:
        members = _members(shards / entry["name"])
        assert len(members) == 2 * entry["samples"]
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                media = members[name.replace(".json", ".mp4")]
                assert media == (root / meta["path"]).read_bytes()  # the bytes as stored
                seen[meta["path"]] = meta["labels"]
    assert seen == {path: [label] for path, label in manifest.items()}
    lines = [json.loads(d)["line"] for e in index["shards"] for n, d in _members(shards / e["name"]).items()
             if n.endswith(".json")]
    assert lines != sorted(lines)  # written shuffled, so that a shard mixes the classes


def test_an_interrupted_run_continues_and_ends_with_the_same_shards(toy, tmp_path, monkeypatch):
    root, train_csv, _, shards = toy
    import mbt.data.shards as shards_module

    real, calls = shards_module.atomic_write, []

    def failing(path, write, **kw):
        if Path(path).suffix == ".tar" and len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing the third shard
        calls.append(path)
        return real(path, write, **kw)

    out = tmp_path / "again"
    monkeypatch.setattr(shards_module, "atomic_write", failing)
    with pytest.raises(KeyboardInterrupt):
        write_shards(train_csv, out, shard_size=40_000, progress=False)
    monkeypatch.setattr(shards_module, "atomic_write", real)
    partial = _index(out)
    assert not partial["complete"] and len(partial["shards"]) == 2
    assert not list(out.glob(".*.tar.tmp"))  # the half-written shard never shows under its name
    report = write_shards(train_csv, out, shard_size=40_000, progress=False)
    assert report.written == len(_index(shards)["shards"]) - 2
    for entry in _index(shards)["shards"]:  # byte-identical to the uninterrupted run's shards
        assert (out / entry["name"]).read_bytes() == (shards / entry["name"]).read_bytes()
    assert {k: v for k, v in _index(out).items() if k != "manifest"} == \
        {k: v for k, v in _index(shards).items() if k != "manifest"}
    # a different manifest is refused: exit 2, one line
    other = root / "other.csv"
    other.write_text(train_csv.read_text().replace("bright", "dark", 1))
    assert main(["data", "shard", str(other), "--out", str(out)]) == 2


def test_missing_files_are_left_out_and_listed(tmp_path, capsys):
    train_csv = write_toy_set(tmp_path, 3, seconds=1.0)
    train_csv.write_text(train_csv.read_text() + "media/gone.mp4,dark\n")
    assert main(["data", "shard", str(train_csv), "--out", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out
    assert "gone.mp4" in out and "missing" in out
    index = _index(tmp_path / "s")
    assert index["samples"] == 3 and [s["kind"] for s in index["skipped"]] == ["missing"]


def test_transcoded_shards_hold_mp4s_the_decoder_reads(tmp_path):
    train_csv = write_toy_set(tmp_path, 2, seconds=1.0)
    out = tmp_path / "t"
    assert main(["data", "shard", str(train_csv), "--out", str(out), "--transcode", "--short-side", "32",
                 "--jobs", "1"]) == 0
    import av

    members = _members(out / _index(out)["shards"][0]["name"])
    media = [d for n, d in members.items() if n.endswith(".mp4")]
    assert len(media) == 2
    with av.open(io.BytesIO(media[0])) as container:
        stream = container.streams.video[0]
        assert min(stream.codec_context.width, stream.codec_context.height) == 32  # re-encoded, scaled
        assert container.streams.audio[0].codec_context.sample_rate == 16000


def test_folders_lists_patterns_and_pipe_commands_name_the_same_shards(toy, tmp_path):
    _, _, _, shards = toy
    names = [s["name"] for s in _index(shards)["shards"]]
    last = len(names) - 1
    listing = shards / "train.shards"
    listing.write_text("\n".join(names) + "\n")
    pattern = str(shards / f"train-{{000000..{last:06d}}}.tar")
    forms = [str(shards), str(shards / INDEX_NAME), str(listing), pattern, f"pipe:cat {pattern}"]
    assert all(is_shard_source(form) for form in forms) and not is_shard_source(str(shards.parent / "train.csv"))
    sets = [resolve_shards(form) for form in forms]
    assert all(s.names == names and s.counts == sets[0].counts for s in sets)
    part = resolve_shards(str(shards / "train-{000000..000001}.tar"))  # a subset: its epoch is its samples
    assert part.samples == sum(s["samples"] for s in _index(shards)["shards"][:2])
    # the pipe: command streams the same samples as the file
    stream = ShardStream(f"pipe:cat {pattern}", ["bright", "dark"], Preprocessor(PreprocessorConfig(spec_mean=0.0, spec_std=1.0)),
                         train=False, modalities=("audio",))
    piped = [sample["json"] for _, sample, _ in stream.samples(Segment(0, 0, sets[0].counts[0]))]
    direct = [d for n, d in sorted(_members(shards / names[0]).items()) if n.endswith(".json")]
    assert piped == direct


def test_the_shuffle_buffer_is_a_function_of_seed_and_epoch(toy):
    _, _, _, shards = toy
    index = _index(shards)
    big = max(range(len(index["shards"])), key=lambda i: index["shards"][i]["samples"])
    count = index["shards"][big]["samples"]

    def order(seed, epoch, buffer=2):
        stream = ShardStream(str(shards), ["bright", "dark"], Preprocessor(PreprocessorConfig(spec_mean=0.0, spec_std=1.0)), train=True,
                             modalities=("audio",), seed=seed, shuffle_buffer=buffer)
        return [p for p, _, _ in stream.shuffled(Segment(big, 0, count), epoch)]

    assert order(0, 0) == order(0, 0)
    assert sorted(order(0, 0)) == order(0, 0, buffer=0)  # a permutation of the shard's samples
    assert len({tuple(order(0, e)) for e in range(6)}) > 1


# ------------------------------------------------------------------------------------------------ training

def _config(root: Path, name: str, train_source: Path, val_source: Path | None = None, **train_overrides) -> Path:
    path = toy_config(root, train_source, val_source, **train_overrides)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["classes"] = str(root / "classes.txt")
    target = root / f"{name}.yaml"
    target.write_text(yaml.safe_dump(raw))
    path.unlink()
    return target


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_from_shards_resumes_bit_identically(toy):
    root, _, _, shards = toy
    config = _config(root, "resume", shards, epochs=2, batch_size=2, num_workers=2, checkpoint_every=1)
    full = root / "full"
    assert main(["train", str(config), "--out", str(full), "--no-progress"]) == 0
    epochs = [m for m in _metrics(full) if "clips_trained" in m]
    assert [m["clips_trained"] for m in epochs] == [12, 12] and all(m["skipped"] == 0 for m in epochs)
    # stopped at step 3 (batch 3 of 6: an odd batch, so the workers' parts rotate), then resumed by the CLI
    part = root / "part"
    train(load_config(str(config)), part, progress=False, stop_after_steps=3)
    assert main(["train", str(config), "--out", str(part), "--no-progress", "--resume"]) == 0
    a, b = MBT.from_pretrained(full).state_dict(), MBT.from_pretrained(part).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = {m["step"]: m["loss"] for m in _metrics(full) if "loss" in m}
    resumed = {m["step"]: m["loss"] for m in _metrics(part) if "loss" in m}
    assert resumed == losses


def _rewrite_shard(path: Path, change) -> None:
    members = _members(path)
    with tarfile.open(path, "w") as tar:
        for name, data in sorted(members.items()):
            data = change(name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_samples_inside_a_shard_are_counted_skips(toy, tmp_path):
    root, train_csv, _, _ = toy
    junk = root / "media" / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x07" * 3000)  # an mp4 signature, then nothing usable
    manifest = root / "with_junk.csv"
    manifest.write_text(train_csv.read_text() + "media/junk.mp4,dark\n")
    shards = tmp_path / "bad-shards"
    assert main(["data", "shard", str(manifest), "--out", str(shards), "--shard-size", "40KB"]) == 0
    entries = _index(shards)["shards"]
    # a sample whose JSON does not parse, in a shard without the junk media
    target = next(e for e in entries if not any(b"junk" in d for d in _members(shards / e["name"]).values()))
    first_json = sorted(n for n in _members(shards / target["name"]) if n.endswith(".json"))[0]
    _rewrite_shard(shards / target["name"], lambda n, d: b"{labels: oops" if n == first_json else d)
    config = _config(root, "bad", shards, epochs=1, batch_size=13, num_workers=0)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--no-progress"]) == 0
    epoch = next(m for m in _metrics(run) if "clips_trained" in m)
    assert epoch["clips_trained"] == 11 and epoch["skipped"] == 2
    assert epoch["skipped_by_kind"] == {"bad_sample": 1, "corrupt": 1}
    log = (run / "train.log").read_text()
    assert "junk.mp4" in log and "bad sample" in log


def test_a_cut_off_shard_skips_its_missing_samples_and_keeps_the_epoch(toy, tmp_path):
    root, _, _, shards = toy
    copy = tmp_path / "cut"
    copy.mkdir()
    for path in shards.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    entry = max(_index(copy)["shards"], key=lambda e: e["samples"])
    data = (copy / entry["name"]).read_bytes()
    (copy / entry["name"]).write_bytes(data[:len(data) // 3])
    config = _config(root, "cut", copy, epochs=1, batch_size=4, num_workers=0)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--no-progress"]) == 0
    epoch = next(m for m in _metrics(run) if "clips_trained" in m)
    assert epoch["clips_trained"] + epoch["skipped"] == 12  # the epoch keeps its 3 batches
    assert epoch["skipped_by_kind"].get("bad_shard", 0) >= entry["samples"] - 1


def test_shards_with_a_label_the_classes_file_lacks_are_refused(toy, tmp_path, capsys):
    root, _, _, shards = toy
    classes = tmp_path / "classes.txt"
    classes.write_text("bright\nmedium\n")
    config = _config(root, "labels", shards)
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", f"data.classes={classes}"]) == 2
    assert "'dark'" in capsys.readouterr().err


def test_evaluation_from_shards_matches_the_manifest(toy, tmp_path):
    root, _, val_csv, _ = toy
    config = _config(root, "eval", root / "train-shards", root / "val-shards", epochs=1, batch_size=4)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--no-progress"]) == 0
    assert any(m.get("val_num_videos") == 6 for m in _metrics(run))  # validated from shards during training
    results = {}
    for name, source in (("csv", val_csv), ("shards", root / "val-shards")):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", str(run), "--manifest", str(source), "--clips", "2", "--num-workers", "2",
                     "--no-progress", "--json", str(out)]) == 0
        results[name] = json.loads(out.read_text())
    assert results["shards"]["num_videos"] == 6 and results["shards"]["num_clips"] == 12
    assert results["shards"] == pytest.approx(results["csv"])
