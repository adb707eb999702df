"""The pieces of a training run, each on its own (the recipe loop that wires them is tested in test_engine.py)."""

from __future__ import annotations

import pytest
import torch

from engine_fixtures import toy_config, write_toy_set
from mbt.config import load_config
from mbt.engine.train import (
    TrainState,
    epoch_loader,
    micro_step,
    optimizer_step,
    restore,
    save_state,
    setup_run,
)
from mbt.media.settings import PreprocessorConfig


@pytest.fixture(scope="module")
def toy_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("pieces")
    train = write_toy_set(root, num_clips=8, seconds=1.0)
    return load_config(toy_config(root, train, epochs=2, warmup_epochs=0.0))


def test_setup_run_wires_model_data_and_schedule(toy_cfg, tmp_path):
    run = setup_run(toy_cfg, tmp_path / "run", progress=False)
    assert run.steps_per_epoch == 2 and run.total_steps == 4  # 8 clips, batches of 4
    assert isinstance(run.model.preprocessing, PreprocessorConfig)
    assert run.model.preprocessing.class_names == ["bright", "dark"]
    assert (tmp_path / "run" / "train_config.yaml").is_file()


def test_one_step_moves_the_weights_and_reports_a_finite_loss(toy_cfg, tmp_path):
    run = setup_run(toy_cfg, tmp_path / "run", progress=False)
    state = TrainState()
    loader, num_batches = epoch_loader(run, 0, 0)
    assert num_batches == 2
    before = [p.detach().clone() for p in run.model.parameters()]
    used = micro_step(run, next(iter(loader)), state, sync=True)
    record = optimizer_step(run, state)
    assert used == 4 and state.step == 1 and record["step"] == 1
    assert torch.isfinite(torch.tensor(record["loss"])) and record["lr"] == pytest.approx(toy_cfg.train.lr)
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))


def test_save_state_and_restore_round_trip(toy_cfg, tmp_path):
    run = setup_run(toy_cfg, tmp_path / "run", progress=False)
    state = TrainState()
    loader, _ = epoch_loader(run, 0, 0)
    micro_step(run, next(iter(loader)), state, sync=True)
    optimizer_step(run, state)
    state.batch_in_epoch = 1
    save_state(run, state)
    again = setup_run(toy_cfg, tmp_path / "run", resume=True, progress=False)
    restored = restore(again)
    assert (restored.step, restored.epoch, restored.batch_in_epoch) == (1, 0, 1)
    for a, b in zip(run.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(again.mix_generator.get_state(), run.mix_generator.get_state())


def test_without_a_terminal_progress_is_plain_lines_and_the_run_keeps_its_log(toy_cfg, tmp_path, caplog):
    import logging

    from mbt.recipes.train import train

    caplog.set_level(logging.INFO)
    toy_cfg = toy_cfg.model_copy(update={"train": toy_cfg.train.model_copy(update={"log_every": 1})})
    train(toy_cfg, tmp_path / "run", progress=True)  # pytest's stderr is not a terminal: lines, not a bar
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert lines[0].startswith("epoch 1/2 step 1/4 (25%): loss ") and "clips/s, ETA" in lines[0]
    assert len([line for line in lines if " step " in line]) == 4
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert "step 4/4 (100%)" in log_text and "a new run in" in log_text


def test_tensorboard_tags_are_grouped():
    from mbt.engine.train import tensorboard_tag

    assert [tensorboard_tag(k) for k in ("loss", "lr", "val_top1", "test_mAP")] == [
        "train/loss", "train/lr", "val/top1", "test/mAP"]
