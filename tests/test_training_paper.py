"""The paper's training, faithfully: recipes that need `train.init_from`, per-process gradient clipping, the test
split inside training; and beyond the paper, missing streams masked in training and evaluation, and modality
dropout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from engine_fixtures import toy_config, write_toy_set
from mbt import ConfigError
from mbt.cli import main
from mbt.config import load_config
from mbt.data.datasets import collate
from mbt.engine import distributed as D
from mbt.engine.losses import dense_targets, mbt_loss
from mbt.engine.mixup import mixup
from mbt.engine.modality_dropout import drop_modalities, sample_draw
from mbt.engine.train import (
    TrainState,
    batch_inputs,
    epoch_loader,
    micro_step,
    optimizer_step,
    scheduled_test,
    setup_run,
)
from media_factory import write_av

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    train = write_toy_set(root, 8, seconds=1.0)
    test = write_toy_set(root, 3, seconds=1.0, name="test")
    return root, train, test


def with_keys(path: Path, **sections) -> Path:
    raw = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        raw[section].update(values)
    path.write_text(yaml.safe_dump(raw))
    return path


# ==================================================================== train.init_from
@pytest.mark.parametrize("recipe", ["audioset", "vggsound", "epic-kitchens"])
def test_paper_recipes_refuse_to_start_without_init_from(recipe, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"train\.init_from: .*ViT-B_16\.npz.*\.safetensors.*scratch"):
        setup_run(load_config(recipe), tmp_path / "run", progress=False)
    assert main(["train", recipe, "--out", str(tmp_path / "cli"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.init_from" in err[0]
    assert not (tmp_path / "cli").exists()  # nothing written before the refusal


def test_scratch_is_explicit_and_logged_as_not_the_papers_setting(toy, tmp_path, caplog):
    root, train, _ = toy
    cfg = load_config(toy_config(tmp_path, train), ["train.init_required=true", "train.init_from=scratch"])
    with caplog.at_level("WARNING", logger="mbt.train"):
        run = setup_run(cfg, tmp_path / "run", progress=False)
    assert any("not" in r.getMessage() and "scratch" in r.getMessage() for r in caplog.records)
    state = TrainState()
    loader, _ = epoch_loader(run, 0, 0)
    micro_step(run, next(iter(loader)), state, sync=True)
    assert torch.isfinite(torch.tensor(optimizer_step(run, state)["loss"]))


def test_init_audio_cls_reaches_the_vit_initialisation(toy, tmp_path, monkeypatch):
    from mbt.interop import vit

    asked = {}
    monkeypatch.setattr(vit, "init_from_vit", lambda model, path, **kw: asked.update(kw) or {})
    _, train, _ = toy
    weights = tmp_path / "vit.npz"
    weights.write_bytes(b"")
    cfg = load_config(toy_config(tmp_path, train), [f"train.init_from={weights}", "train.init_audio_cls=zero"])
    setup_run(cfg, tmp_path / "run", progress=False)
    assert asked == {"audio_cls": "zero"}


# ==================================================================== gradient clipping per process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def _rank_batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(4, 6, generator=g) * (1 + 3 * rank), torch.randn(4, 3, generator=g)  # unequal norms


def _clip_worker(rank: int, port: int, out: str, max_norm: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = _tiny_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x, y = _rank_batch(rank)
    with ddp.no_sync():  # what micro_step does with grad_clip_scope 'process'
        ((ddp(x) - y) ** 2).sum().backward()
    norm = D.clip_gradients(model, max_norm, "process", D.DistInfo(rank, 2))
    torch.save({"grads": [p.grad for p in model.parameters()], "norm": norm}, f"{out}/rank{rank}.pt")
    dist.barrier()  # neither process tears gloo down while the other still talks to it (SIGABRT under load)
    dist.destroy_process_group()


def test_process_clipping_under_two_process_ddp_equals_per_process_clipping_by_hand(tmp_path):
    max_norm = 0.5
    mp.spawn(_clip_worker, args=(_free_port(), str(tmp_path), max_norm), nprocs=2, join=True)
    local, norms = [], []
    for rank in range(2):  # each process's own gradient, computed alone, clipped by hand
        model = _tiny_model()
        x, y = _rank_batch(rank)
        ((model(x) - y) ** 2).sum().backward()
        grads = [p.grad for p in model.parameters()]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        norms.append(float(norm))
        local.append([g * min(1.0, max_norm / (float(norm) + 1e-6)) for g in grads])
    assert min(norms) > max_norm  # clipping is active on both, with different factors
    expected = [(a + b) / 2 for a, b in zip(*local)]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for g, e in zip(got["grads"], expected):
            torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)
        assert got["norm"] == pytest.approx(sum(norms) / 2, rel=1e-5)
    # the other scope differs here: clipping the mean gradient
    mean = [(a + b) / 2 for a, b in zip(*[[p for p in _grads(r)] for r in range(2)])]
    mean_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in mean])))
    global_clip = [g * min(1.0, max_norm / (mean_norm + 1e-6)) for g in mean]
    assert max(float((a - b).abs().max()) for a, b in zip(global_clip, expected)) > 1e-3


def _grads(rank: int) -> list[torch.Tensor]:
    model = _tiny_model()
    x, y = _rank_batch(rank)
    ((model(x) - y) ** 2).sum().backward()
    return [p.grad for p in model.parameters()]


def test_one_process_clips_the_same_with_either_scope():
    results = {}
    for scope in ("global", "process"):
        model = _tiny_model()
        x, y = _rank_batch(1)
        ((model(x) - y) ** 2).sum().backward()
        norm = D.clip_gradients(model, 0.5, scope, D.DistInfo())
        results[scope] = (norm, [p.grad.clone() for p in model.parameters()])
    assert results["global"][0] == results["process"][0] > 0.5
    assert all(torch.equal(a, b) for a, b in zip(results["global"][1], results["process"][1]))


def _train_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mbt.cli", "train", str(config), "--out", str(out), "--no-progress", *extra]


def test_process_scope_under_torchrun_averages_like_ddp_and_keeps_the_replicas_equal(toy, tmp_path):
    _, train, _ = toy
    # no clipping: the manual bucketed all-reduce must give what DDP's all-reduce gives
    config = toy_config(tmp_path, train, None, epochs=1, optimizer="sgd", lr=0.05, batch_size=4, grad_clip=0.0,
                        grad_clip_scope="process")
    single, double = tmp_path / "single", tmp_path / "ddp"
    subprocess.run(_train_cmd(config, single), env=ENV, check=True, capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "mbt.cli", "train", str(config), "--out", str(double), "--no-progress"],
                         env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (double / "metrics.jsonl").read_text().splitlines()]
    (hashes,) = [r["rank_parameter_hashes"] for r in records if "rank_parameter_hashes" in r]
    assert hashes[0] == hashes[1]
    a, b = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4, msg=name)


# ==================================================================== the test split inside training
def test_the_test_split_is_evaluated_with_every_view_when_due(toy, tmp_path):
    root, train, test = toy
    cfg = load_config(toy_config(tmp_path, train), [f"data.test={test}", "data.eval_clips=2", "data.eval_crops=3",
                                                    "train.test_every_epochs=2", "train.epochs=3"])
    run = setup_run(cfg, tmp_path / "run", progress=False)
    assert run.test_dataset.views_per_row == 6 and len(run.test_dataset) == 3 * 6
    due = {epoch: scheduled_test(run, TrainState(epoch=epoch, step=epoch)) for epoch in range(3)}
    assert due[0] is None  # after epoch 1 of 3, test every 2
    assert due[1]["epoch"] == 2 and due[2]["epoch"] == 3  # every 2 epochs, and after the last
    assert due[2]["test_num_videos"] == 3 and due[2]["test_num_clips"] == 3 * 6 and "test_top1" in due[2]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "test_top1" in r] == [2, 3]


def test_training_writes_test_metrics_and_no_fusion_predictions(toy, tmp_path, capsys):
    root, train, test = toy
    config = with_keys(toy_config(tmp_path, train, None, epochs=1), data={"test": str(test), "eval_clips": 2})
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_num_clips"] for r in records if "test_num_clips" in r] == [3 * 2]  # after the last epoch
    capsys.readouterr()
    clip = str(root / "media" / "test_000.mp4")
    assert main(["predict", str(out), clip, "--json"]) == 0
    fused = json.loads(capsys.readouterr().out)[0]["labels"]
    assert main(["predict", str(out), clip, "--json", "--no-fusion"]) == 0
    apart = json.loads(capsys.readouterr().out)[0]["labels"]
    assert fused != apart  # bottleneck fusion from layer 1: running the streams apart changes the scores
    assert main(["evaluate", str(out), "--manifest", str(test), "--clips", "1", "--no-fusion", "--num-workers", "0",
                 "--no-progress"]) == 0


# ==================================================================== missing streams: the mask
@pytest.fixture(scope="module")
def incomplete(toy):
    """The toy set plus a clip without audio and one without video."""
    root, train, _ = toy
    write_av(root / "media" / "no_audio.mp4", fps=8, seconds=1.0, size=(64, 48), audio=False)
    write_av(root / "media" / "no_video.m4a", seconds=1.0, video=False, sample_rate=16000)
    manifest = root / "incomplete.csv"
    manifest.write_text(train.read_text() + "media/no_audio.mp4,bright\nmedia/no_video.m4a,dark\n")
    return root, manifest


def test_masked_training_uses_incomplete_clips_and_their_placeholders_reach_nothing(incomplete, tmp_path):
    root, manifest = incomplete
    cfg = load_config(toy_config(tmp_path, manifest), ["data.on_missing_modality=mask", "train.batch_size=10"])
    run = setup_run(cfg, tmp_path / "run", progress=False)
    items = [run.dataset[i] for i in range(len(run.dataset))]
    assert [item["missing"] for item in items[-2:]] == [("audio",), ("video",)]
    assert all("skipped" not in item for item in items)
    batch = collate(items)
    assert batch["modality_mask"]["audio"].tolist() == [True] * 8 + [False, True]
    assert batch["modality_mask"]["video"].tolist() == [True] * 9 + [False]
    model = run.model.eval()
    target = dense_targets(batch["target"], cfg.model)

    def loss_with(placeholder: float) -> torch.Tensor:
        inputs = batch_inputs(run, batch)  # the model's floats (the loader sends uint8 video crops)
        inputs["audio"][8] = placeholder
        inputs["video"][9] = placeholder
        return mbt_loss(model(**inputs, modality_mask=batch["modality_mask"]), target, cfg.model)

    with torch.no_grad():
        assert torch.equal(loss_with(0.0), loss_with(123.0))
    state = TrainState()
    run.model.train()
    assert micro_step(run, batch, state, sync=True) == 10 and state.skipped == 0
    assert torch.isfinite(torch.tensor(state.last_loss))


def test_skip_and_mask_in_evaluation(incomplete, tmp_path):
    from mbt.data.datasets import ClipDataset
    from mbt.data.manifest import read_manifest
    from mbt.engine.evaluate import evaluate_dataset

    root, manifest = incomplete
    cfg = load_config(toy_config(tmp_path, manifest))
    run = setup_run(cfg, tmp_path / "run", progress=False)
    counts = {}
    for setting in ("skip", "mask"):
        dataset = ClipDataset(read_manifest(manifest), ["bright", "dark"], run.dataset.preprocessor, train=False,
                              modalities=cfg.model.modalities, on_missing_modality=setting, num_clips=2)
        result = evaluate_dataset(run.model, dataset, batch_size=4, progress=False)
        counts[setting] = (result.metrics["num_videos"], result.metrics["num_skipped"])
    assert counts == {"skip": (8, 2), "mask": (10, 0)}


def test_mixup_keeps_a_stream_only_where_both_samples_have_it():
    x = {"audio": torch.arange(4.0).view(4, 1), "video": torch.arange(4.0).view(4, 1)}
    target = torch.eye(4)
    # sample 0 lacks audio, sample 3 lacks video: the pair (0, 3) would be left with nothing, so it is not mixed
    mask = {"audio": torch.tensor([False, True, True, True]), "video": torch.tensor([True, True, True, False])}
    mixed, targets, mixed_mask = mixup(x, target, 0.5, per_modality=False, generator=torch.Generator().manual_seed(0),
                                       mask=mask)
    assert torch.equal(mixed["audio"][[0, 3]], x["audio"][[0, 3]]) and torch.equal(targets["audio"][0], target[0])
    assert not torch.equal(mixed["audio"][1], x["audio"][1])  # the pair (1, 2) is mixed
    assert mixed_mask["audio"].tolist() == [False, True, True, True]
    mask = {"audio": torch.tensor([False, True, True, True])}  # now sample 3 has video: (0, 3) mixes
    _, _, mixed_mask = mixup(x, target, 0.5, per_modality=False, generator=torch.Generator().manual_seed(0),
                             mask=mask)
    assert mixed_mask["audio"].tolist() == [False, True, True, False]  # no mixed audio holds sample 0's zeros


# ==================================================================== modality dropout
def test_modality_dropout_drops_the_asked_fractions_and_never_a_last_stream():
    rows = torch.arange(20000)
    mask = drop_modalities({"audio": 0.3, "video": 0.2}, rows, epoch=0, seed=0, streams=("video", "audio"))
    audio, video = mask["audio"], mask["video"]
    assert abs((~audio).float().mean().item() - 0.3) < 0.015 and abs((~video).float().mean().item() - 0.2) < 0.015
    assert bool((audio | video).all())
    lacking_video = {"video": torch.arange(20000) % 2 == 0}
    mask = drop_modalities({"audio": 0.5}, rows, epoch=0, seed=0, streams=("video", "audio"), mask=lacking_video)
    assert bool((mask["audio"] | mask["video"]).all())  # a sample without video keeps its audio
    assert torch.equal(mask["video"], lacking_video["video"])


def test_modality_dropout_is_a_function_of_seed_epoch_and_row():
    rows = torch.tensor([5, 3, 9, 3])
    first = drop_modalities({"audio": 0.5}, rows, epoch=2, seed=1, streams=("video", "audio"))
    again = drop_modalities({"audio": 0.5}, rows.flip(0), epoch=2, seed=1, streams=("video", "audio"))
    assert torch.equal(first["audio"], again["audio"].flip(0))  # any batch composition: a resumed run agrees
    assert first["audio"][1] == first["audio"][3]
    assert sample_draw(1, 2, 5) != sample_draw(1, 3, 5) and sample_draw(1, 2, 5) != sample_draw(2, 2, 5)
    assert drop_modalities({}, rows, epoch=0, seed=0, streams=("video", "audio")) is None


def test_training_with_full_audio_dropout_is_training_the_video_stream_alone(toy, tmp_path):
    _, train, _ = toy
    cfg = load_config(toy_config(tmp_path, train), ["train.modality_dropout={audio: 1.0}"])
    run = setup_run(cfg, tmp_path / "run", progress=False)
    loader, _ = epoch_loader(run, 0, 0)
    batch = next(iter(loader))
    state = TrainState()
    micro_step(run, batch, state, sync=True)
    audio_grads = [p.grad for n, p in run.model.named_parameters() if n.startswith("tokenizers.audio")]
    assert all(g is not None and not g.any() for g in audio_grads)  # ran (DDP needs that), contributed nothing
    with torch.no_grad():
        alone = mbt_loss(run.model(video=batch_inputs(run, batch)["video"]), dense_targets(batch["target"], cfg.model),
                         cfg.model)
    assert state.last_loss == pytest.approx(alone.item(), rel=1e-5)
