"""The pieces of a training run, each readable and testable alone: `setup_run` (data, model, optimiser, schedule),
`restore` / `save_state` (checkpoints), `epoch_loader`, `batch_inputs`, `micro_step` (forward + backward of one batch),
`optimizer_step`, `validate`, `scheduled_test` and `finish`. The loop that wires them is the recipe
`mbt.recipes.train`.

Exact resume: the data order and every clip's augmentation are functions of (seed, epoch, index); the global RNG
(stochastic depth), the mixup generator, the optimiser and the position inside the epoch are checkpointed.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mbt.config import Config
from mbt.data.cache import InMemoryClips
from mbt.data.compact import read_compact_manifest
from mbt.data.datasets import ClipDataset, ClipLog, collate, loader_worker_init
from mbt.data.manifest import read_classes
from mbt.data.shard_stream import ShardStream, batch_sizes
from mbt.data.shards import is_shard_source
from mbt.data.window import fit_window, probe_durations
from mbt.engine import distributed as D
from mbt.engine.checkpoint import (
    Resumable,
    list_checkpoints,
    newest_verified,
    save_checkpoint,
    verify_checkpoint,
)
from mbt.engine.data_fit import resolve_data_settings
from mbt.engine.evaluate import evaluate_dataset
from mbt.engine.losses import dense_targets, mbt_loss
from mbt.engine.memory import TRAINING_BYTES_PER_PARAMETER, check_model_fits
from mbt.engine.mixup import mixup
from mbt.engine.modality_dropout import drop_modalities
from mbt.engine.resume import check_resume_config, prepare_new_run
from mbt.engine.schedule import warmup_cosine
from mbt.errors import ConfigError, DataError, OutputError
from mbt.fileio import check_writable_dir, describe_os_error, dumps, write_text
from mbt.media.preprocess import Preprocessor
from mbt.media.transforms import finish_video
from mbt.model import MBT
from mbt.model.fusion import describe_fusion

log = logging.getLogger("mbt.train")

RUN_CONFIG = "train_config.yaml"
METRICS_LOG = "metrics.jsonl"
RUN_LOG = "train.log"


def resolve_classes(cfg: Config) -> list[str]:
    """The classes file decides the number of classes; a config that disagrees is corrected with a note."""
    if not cfg.data.classes:
        raise ValueError("data.classes: a classes file (one class name a line) is needed to train")
    names = read_classes(cfg.data.classes)
    if cfg.model.num_classes != len(names):
        log.info("model.num_classes set to %d from %s", len(names), cfg.data.classes)
        cfg.model.num_classes = len(names)  # validated on assignment
    return names


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    # no weight decay on biases, norms, embeddings and tokens (the usual ViT practice)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "pos_embed" in name or "cls_token" in name or "bottleneck" in name
         else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum)
    return torch.optim.AdamW(groups, lr=cfg.train.lr)


SMALL_SET_CLIPS = 5000  # below this, a from-scratch run is pointed to the small-data recipe
SCRATCH = "scratch"  # train.init_from: start from random weights, said explicitly
INIT_FILES = ("a from_pretrained directory, or an ImageNet-21k ViT-B/16: Google's ViT-B_16.npz (vit_jax), an augreg "
              ".npz (big_vision) or a timm-named .safetensors / .pth")


def check_init_from(cfg: Config) -> None:
    """`train.init_required` (the paper recipes) refuses a run without `train.init_from`; 'scratch' is logged as
    what it is."""
    tc = cfg.train
    if tc.init_required and not tc.init_from:
        raise ConfigError(f"train.init_from: this recipe fine-tunes a pretrained ViT as the paper does; give "
                          f"{INIT_FILES} (or 'scratch' for random weights, not the paper's setting)")
    if tc.init_from == SCRATCH:
        log.warning("train.init_from: scratch: random initial weights, not the paper's setting (the paper "
                    "fine-tunes an ImageNet-21k ViT; a ViT-B from scratch on a small set such as AS-mini loses most "
                    "of its mAP)")


def initialise(model: MBT, source: str, *, audio_cls: str = "copy") -> None:
    """`train.init_from`: a from_pretrained directory (e.g. a converted official checkpoint) or 2-D ViT weights;
    `audio_cls` ('zero' | 'copy') is the ViT init's audio CLS token (`train.init_audio_cls`)."""
    path = Path(source)
    if path.is_dir():
        pretrained = MBT.from_pretrained(path)
        state = pretrained.state_dict()
        own = model.state_dict()
        # a new label set keeps the fresh (zero) head
        loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        dropped = sorted(set(own) - set(loadable))
        model.load_state_dict(loadable, strict=False)
        log.info("initialised from %s (%d tensors; not loaded: %s)", path, len(loadable), dropped or "none")
        return
    from mbt.interop.vit import init_from_vit

    report = init_from_vit(model, path, audio_cls=audio_cls)
    log.info("initialised from ViT weights %s: %s", path, report)


class MetricsLog:
    """JSON lines (always) and TensorBoard (when installed), written by rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / METRICS_LOG
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed: metrics go to %s only", self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a") as handle:
                handle.write(dumps(record) + "\n")  # strict JSON: a missing value is null, never NaN
        except OSError as e:
            raise OutputError(f"{self.path}: cannot append metrics: {describe_os_error(e, self.path)}") from None
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(tensorboard_tag(key), value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def tensorboard_tag(key: str) -> str:
    """Grouped TensorBoard tags: val_top1 -> val/top1, test_mAP -> test/mAP, loss -> train/loss."""
    for split in ("val", "test"):
        if key.startswith(f"{split}_"):
            return f"{split}/{key[len(split) + 1:]}"
    return f"train/{key}"


class RunLogFile:
    """The run's own `train.log` (rank 0): every log line of the package from the start of the run, appended
    across resumes, so a run folder tells its own story without a terminal's scroll-back."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.handler: logging.Handler | None = None
        if enabled:
            try:
                self.handler = logging.FileHandler(out_dir / RUN_LOG, encoding="utf-8")
            except OSError as e:
                raise OutputError(f"{out_dir / RUN_LOG}: cannot write the run log: "
                                  f"{describe_os_error(e, out_dir)}") from None
            self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            self.handler.setLevel(logging.INFO)
            package = logging.getLogger("mbt")
            package.addHandler(self.handler)
            if package.getEffectiveLevel() > logging.INFO:
                package.setLevel(logging.INFO)

    def close(self) -> None:
        if self.handler is not None:
            logging.getLogger("mbt").removeHandler(self.handler)
            self.handler.close()
            self.handler = None


def parameter_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def epoch_batches(indices: list[int], batch_size: int, drop_last: bool) -> list[list[int]]:
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


@dataclass
class TrainState:
    """Where a run stands. The first five fields are checkpointed (with the model, optimiser and RNG states); the
    rest describe the accumulation window and the epoch in progress."""

    step: int = 0  # optimiser steps taken (real updates only)
    epoch: int = 0  # the epoch being trained
    batch_in_epoch: int = 0  # the next batch of that epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation
    skipped: int = 0  # unusable training clips so far
    last_loss: float | None = None
    bad_steps: int = 0  # consecutive accumulation windows with a non-finite loss
    window_clips: int = 0  # clips whose gradients the current window holds
    window_bad: bool = False  # a micro-batch of the current window had a non-finite loss
    window_synced: bool = False  # DDP has all-reduced the window's gradients
    epoch_clips: int = 0  # clips trained on in this epoch (this process)
    epoch_skips: Counter = field(default_factory=Counter)  # unusable clips of this epoch by kind (this process)
    epoch_bad_losses: int = 0


@dataclass
class Run:
    """What `setup_run` builds: the components of one training run, wired and on their device."""

    cfg: Config
    out_dir: Path
    info: D.DistInfo
    model: MBT
    ddp_model: torch.nn.Module  # the model itself, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    dataset: Any  # ClipDataset, InMemoryClips with data.cache, or ShardStream (shards)
    val_dataset: Any
    sample_weights: torch.Tensor | None
    local_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    mix_generator: torch.Generator
    metrics_log: MetricsLog
    progress: bool
    resume_from: Resumable | None = None  # the verified checkpoint `restore` continues from
    log_file: RunLogFile | None = None
    # each skipped / padded training clip logged once per run (padded ones counted: take_counts())
    clip_log: ClipLog = field(default_factory=lambda: ClipLog(log, "training clip"))
    test_dataset: Any = None  # data.test with data.eval_clips x eval_crops views (see `scheduled_test`)

    @property
    def num_workers(self) -> int:
        return 0 if self.cfg.data.cache else self.cfg.train.num_workers  # cached items need no decoding processes

    def autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return nullcontext()


def _datasets(cfg: Config, class_names: list[str], preprocessor: Preprocessor, progress: bool):
    if any(is_shard_source(s) for s in (cfg.data.train, cfg.data.val, cfg.data.test)):
        return _shard_datasets(cfg, class_names, preprocessor)
    tc, model_cfg = cfg.train, cfg.model
    rows = read_compact_manifest(cfg.data.train) if cfg.data.train else None
    if not rows:
        raise ValueError("data.train: a training manifest with at least one row is needed")
    dataset = ClipDataset(rows, class_names, preprocessor, train=not cfg.data.cache,
                          modalities=model_cfg.modalities, multi_label=model_cfg.multi_label,
                          class_splits=model_cfg.class_splits, on_missing_modality=cfg.data.on_missing_modality,
                          seed=tc.seed, max_pad_fraction=cfg.data.max_pad_fraction, deferred_video=True)
    # evaluation skips a clip it cannot use, unless its missing streams are to be masked
    eval_missing = "mask" if cfg.data.on_missing_modality == "mask" else "skip"
    val_dataset = test_dataset = None
    if cfg.data.val:
        val_dataset = ClipDataset(read_compact_manifest(cfg.data.val), class_names, preprocessor, train=False,
                                  modalities=model_cfg.modalities, multi_label=model_cfg.multi_label,
                                  class_splits=model_cfg.class_splits, num_clips=1, num_crops=1,
                                  on_missing_modality=eval_missing)
    if cfg.data.test:  # official: the test split with 4 clips every few epochs and at the end
        test_dataset = ClipDataset(read_compact_manifest(cfg.data.test), class_names, preprocessor, train=False,
                                   modalities=model_cfg.modalities, multi_label=model_cfg.multi_label,
                                   class_splits=model_cfg.class_splits, num_clips=cfg.data.eval_clips,
                                   num_crops=cfg.data.eval_crops, on_missing_modality=eval_missing)
    if cfg.data.cache:
        dataset = InMemoryClips(dataset, num_workers=tc.num_workers, progress=progress)
        if val_dataset is not None:
            val_dataset = InMemoryClips(val_dataset, num_workers=tc.num_workers, progress=progress)
        if test_dataset is not None:
            test_dataset = InMemoryClips(test_dataset, num_workers=tc.num_workers, progress=progress)
    weights = D.balanced_weights([r.labels for r in rows]) if tc.balanced_sampler else None
    return dataset, val_dataset, test_dataset, weights


def log_data_fit(cfg: Config, rows, window) -> None:
    """Before a new run: how the input windows fit the clips (a 2 s clip sampled as 0.64 s of video and an audio
    window half padding is worth knowing before hours of training), and the small-data recipe for a from-scratch
    run on a small set."""
    fit = fit_window(window, probe_durations(rows, seed=cfg.train.seed), cfg.model.spec_patch[0])
    if fit is not None:
        (log.warning if fit.needs_note else log.info)("input windows: %s", fit.describe())
    from_scratch = not cfg.train.init_from or cfg.train.init_from == SCRATCH
    # the small-data recipe's settings: a model that starts as a small CNN, windows and statistics of the clips
    small_data_model = cfg.model.stem == "conv" and cfg.model.weight_init == "trunc_normal"
    fitted = cfg.data.fit_windows and cfg.data.normalisation == "dataset"
    if from_scratch and not (fitted and small_data_model) and len(rows) < SMALL_SET_CLIPS:
        log.warning("training from scratch on %d clips (< %d): the small-data recipe (`mbt train small-data`) starts "
                    "the model as a small CNN (conv stem, max readout, trunc-normal init) and fits the windows and "
                    "statistics to your clips; README 'Training on a few hundred clips' says what it reaches",
                    len(rows), SMALL_SET_CLIPS)


def _shard_datasets(cfg: Config, class_names: list[str], preprocessor: Preprocessor):
    """data.train / val / test as `ShardStream`s (a split given as a manifest is read as usual)."""
    tc, model_cfg, dc = cfg.train, cfg.model, cfg.data
    if dc.cache or tc.balanced_sampler:
        key = "data.cache" if dc.cache else "train.balanced_sampler"
        raise ConfigError(f"{key}: not available when the data are shards (they are streamed in order, not indexed)")
    common = dict(modalities=model_cfg.modalities, multi_label=model_cfg.multi_label,
                  class_splits=model_cfg.class_splits)
    eval_missing = "mask" if dc.on_missing_modality == "mask" else "skip"

    def split(source: str | None, *, train: bool, **options: Any):
        if not source:
            return None
        if not is_shard_source(source):
            return ClipDataset(read_compact_manifest(source), class_names, preprocessor, train=train, **common,
                               **options)
        return ShardStream(source, class_names, preprocessor, train=train, shuffle_buffer=dc.shuffle_buffer,
                           **common, **options)

    dataset = split(dc.train, train=True, on_missing_modality=dc.on_missing_modality, seed=tc.seed,
                    max_pad_fraction=dc.max_pad_fraction)
    if dataset is None or not len(dataset):
        raise ValueError("data.train: a training manifest (or shards) with at least one row is needed")
    val = split(dc.val, train=False, num_clips=1, num_crops=1, on_missing_modality=eval_missing)
    test = split(dc.test, train=False, num_clips=dc.eval_clips, num_crops=dc.eval_crops,
                 on_missing_modality=eval_missing)
    return dataset, val, test, None


def _resumable(cfg: Config, out_dir: Path) -> Resumable | None:
    """The newest checkpoint that verifies, its config compared with `cfg`; None for a run with no checkpoint."""
    found = list_checkpoints(out_dir)
    resumable = newest_verified(out_dir)
    if resumable is None:
        if found:
            raise DataError(f"--resume: none of the {len(found)} checkpoints in {out_dir / 'checkpoints'} verifies "
                            f"(the newest, {found[-1].name}: {verify_checkpoint(found[-1])[1]})")
        log.warning("--resume: no checkpoint in %s; starting from scratch", out_dir / "checkpoints")
        return None
    for path, why in resumable.skipped:
        log.warning("--resume: skipped checkpoint %s: %s", path, why)
    check_resume_config(resumable.state.get("config"), cfg.to_dict(), resumable.path)
    return resumable


def setup_run(cfg: Config, out_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> Run:
    """Data, model (initialised, on its device, DDP-wrapped under torchrun), optimiser and schedule of a run.

    A folder holding a run is refused unless `resume` (continue it: the newest checkpoint that verifies, whose
    config must agree with `cfg`) or `overwrite` (the old run is moved aside)."""
    check_init_from(cfg)
    info = D.setup_distributed()
    out_dir = Path(out_dir)
    class_names = resolve_classes(cfg)
    resolved: list[str] = []  # logged once the run's log file is open
    if cfg.data.fit_windows or cfg.data.normalisation == "dataset":
        if not cfg.data.train:
            raise ValueError("data.train: a training manifest with at least one row is needed")
        if is_shard_source(cfg.data.train):
            key = "data.fit_windows" if cfg.data.fit_windows else "data.normalisation 'dataset'"
            raise ConfigError(f"{key}: resolved from a manifest's clips, not shards; give the values it would set "
                              "(`mbt data check` / `mbt data stats` on the manifest the shards were written from)")
        resolved = resolve_data_settings(cfg, read_compact_manifest(cfg.data.train))
    tc = cfg.train
    if tc.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size: {tc.batch_size} (the global batch) must be a multiple of the "
                          f"{info.world_size} processes")
    local_batch = tc.batch_size // info.world_size
    check_model_fits(cfg.model, info.device, TRAINING_BYTES_PER_PARAMETER[tc.optimizer])
    resumable = _resumable(cfg, out_dir) if resume else None
    if not resume:
        prepare_new_run(out_dir, overwrite=overwrite, is_main=info.is_main)
    D.barrier(info)  # the old run is out of the way before anyone writes
    log_file = None
    if info.is_main:
        check_writable_dir(out_dir, what="run folder")
        write_text(out_dir / RUN_CONFIG, cfg.to_yaml(), what="run config")
        log_file = RunLogFile(out_dir, enabled=True)
        log.info("%s run in %s: %s", "resuming a" if resume else "a new", out_dir,
                 describe_fusion(cfg.model))
        for line in resolved:
            log.info("%s", line)
    try:
        return _build_run(cfg, out_dir, info, class_names, local_batch, resumable, log_file, progress)
    except BaseException:
        if log_file is not None:
            log_file.close()
        raise


def _build_run(cfg: Config, out_dir: Path, info: D.DistInfo, class_names: list[str], local_batch: int,
               resumable: Resumable | None, log_file: RunLogFile | None, progress: bool) -> Run:
    tc = cfg.train
    prep_cfg = cfg.preprocessor(class_names)
    dataset, val_dataset, test_dataset, sample_weights = _datasets(cfg, class_names, Preprocessor(prep_cfg),
                                                                   progress and info.is_main)
    if info.is_main and resumable is None and hasattr(dataset, "rows"):  # a manifest (shards: no random access)
        log_data_fit(cfg, dataset.rows, prep_cfg)

    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    model = MBT(cfg.model)
    if tc.init_from and tc.init_from != SCRATCH:
        initialise(model, tc.init_from, audio_cls=tc.init_audio_cls)
    model.preprocessing = prep_cfg
    model.to(info.device)
    # Compiled, the training forward runs inductor's kernels over the same parameters; state dicts, evaluation
    # and checkpoints keep using `model` itself (no `_orig_mod.` prefix).
    ddp_model = torch.compile(model) if tc.compile else model
    if info.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            ddp_model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    optimizer = make_optimizer(model, cfg)

    batches_per_epoch = len(epoch_batches(D.shard_indices(len(dataset), 0, tc.seed, info, shuffle=True),
                                          local_batch, drop_last=True))
    steps_per_epoch = max(batches_per_epoch // tc.grad_accum, 1)
    mix_generator = torch.Generator().manual_seed(tc.seed + 7919 * (info.rank + 1))
    torch.manual_seed(tc.seed + info.rank)  # stochastic depth differs per rank
    return Run(cfg=cfg, out_dir=out_dir, info=info, model=model, ddp_model=ddp_model, optimizer=optimizer,
               dataset=dataset, val_dataset=val_dataset, sample_weights=sample_weights, local_batch=local_batch,
               steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * tc.epochs,
               warmup_steps=round(tc.warmup_epochs * steps_per_epoch), mix_generator=mix_generator,
               metrics_log=MetricsLog(out_dir, info.is_main), progress=progress, resume_from=resumable,
               log_file=log_file, test_dataset=test_dataset)


def restore(run: Run) -> TrainState:
    """The state of the checkpoint `setup_run` verified, loaded into the run (a fresh state when there is none)."""
    if run.resume_from is None:
        return TrainState()
    saved = run.resume_from.state
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"][run.info.rank])
    run.mix_generator.set_state(saved["mix_rng"][run.info.rank])
    state = TrainState(step=saved["step"], epoch=saved["epoch"], batch_in_epoch=saved["batch_in_epoch"],
                       history=saved["history"], skipped=saved["skipped"])
    log.info("resumed from %s (step %d, epoch %d, batch %d)", run.resume_from.path, state.step, state.epoch,
             state.batch_in_epoch)
    run.resume_from = None  # its tensors are in the model now
    return state


def save_state(run: Run, state: TrainState) -> None:
    """A checkpoint of everything exact resume needs (every rank's RNG states, gathered on rank 0)."""
    rng = D.gather_objects(torch.get_rng_state(), run.info)
    mix_rng = D.gather_objects(run.mix_generator.get_state(), run.info)
    if run.info.is_main:
        save_checkpoint(run.out_dir, state.step, {
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "step": state.step,
            "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "rng": rng, "mix_rng": mix_rng,
            "history": state.history, "skipped": state.skipped, "config": run.cfg.to_dict(),
        }, keep=run.cfg.train.keep_checkpoints)
    D.barrier(run.info)


def epoch_loader(run: Run, epoch: int, first_batch: int) -> tuple[DataLoader, int]:
    """The epoch's batches from `first_batch` on, and the epoch's number of batches."""
    tc = run.cfg.train
    run.dataset.set_epoch(epoch)
    if isinstance(run.dataset, ShardStream):  # streamed: the same number of batches, planned per rank and worker
        per_rank = -(-len(run.dataset) // run.info.world_size)
        num_batches = min(len(batch_sizes(per_rank, run.local_batch)), run.steps_per_epoch * tc.grad_accum)
        loader = run.dataset.loader(epoch=epoch, first_batch=first_batch, batch_size=run.local_batch,
                                    rank=run.info.rank, world=run.info.world_size, num_workers=run.num_workers,
                                    num_batches=num_batches)
        return loader, num_batches
    indices = D.shard_indices(len(run.dataset), epoch, tc.seed, run.info, shuffle=True, weights=run.sample_weights)
    batches = epoch_batches(indices, run.local_batch, drop_last=True)[: run.steps_per_epoch * tc.grad_accum]
    # its own generator: a DataLoader would otherwise draw its worker seed from the global RNG, which would
    # then differ between an uninterrupted and a resumed run (items draw their randomness from the epoch)
    loader = DataLoader(run.dataset, batch_sampler=batches[first_batch:], num_workers=run.num_workers,
                        collate_fn=collate, generator=torch.Generator().manual_seed(tc.seed),
                        pin_memory=run.info.device.type == "cuda",  # pinned: the copies overlap the step
                        worker_init_fn=loader_worker_init)
    return loader, len(batches)


def batch_inputs(run: Run, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A training batch's model inputs on the run's device. The loader sends video as uint8 crops with each clip's
    colour draws (`batch["colour"]`): the floats and the colour are made here, on the device (`finish_video`)."""
    device = run.info.device
    inputs = {m: x.to(device, non_blocking=True) for m, x in batch["inputs"].items()}
    if "colour" in batch:
        inputs["video"] = finish_video(inputs["video"], batch["colour"].to(device),
                                       run.dataset.preprocessor.cfg.value_range)
        lacking = batch.get("modality_mask", {}).get("video")
        if lacking is not None:  # a missing stream's placeholder is zeros, as in evaluation
            inputs["video"][~lacking.to(device)] = 0.0
    return inputs


def micro_step(run: Run, batch: dict[str, Any], state: TrainState, *, sync: bool) -> int:
    """Forward and backward of one (micro-)batch, gradients scaled for accumulation; returns the clips used.

    Unusable clips are logged and counted. Under DDP every process must join the same all-reduces, so a batch
    that some process cannot use is skipped by all. `sync=False` accumulates without the all-reduce.
    """
    tc, info = run.cfg.train, run.info
    run.clip_log.record(batch)  # logs each skipped / padded clip once per run, not once per epoch
    for _row, _path, kind, _reason in batch["skipped"]:
        state.epoch_skips[kind] += 1
    state.skipped += len(batch["skipped"])
    usable = batch["target"] is not None
    if info.enabled:
        usable = D.all_reduce_sum(0.0 if usable else 1.0, info) == 0
        if not usable and batch["target"] is not None:
            log.warning("batch dropped: another process had no usable clip in it")
    if not usable:
        return 0
    inputs = batch_inputs(run, batch)
    target = dense_targets(batch["target"], run.cfg.model).to(info.device)
    # issue 18: the clips' missing streams, then modality dropout (the mask keeps a dropped stream out)
    mask = drop_modalities(tc.modality_dropout, batch["row"], epoch=state.epoch, seed=tc.seed, streams=tuple(inputs),
                           mask={m: v.to(info.device) for m, v in batch.get("modality_mask", {}).items()} or None)
    inputs, targets, mask = mixup(inputs, target, tc.mixup_alpha, per_modality=tc.mixup_per_modality,
                                  generator=run.mix_generator, mask=mask)
    # grad_clip_scope 'process' all-reduces in optimizer_step, after each process clipped its own gradient
    local = info.enabled and (not sync or tc.grad_clip_scope == "process")
    with run.ddp_model.no_sync() if local else nullcontext():
        with run.autocast():
            loss = mbt_loss(run.ddp_model(**inputs, modality_mask=mask), targets, run.cfg.model, tc.label_smoothing)
        finite = bool(torch.isfinite(loss))
        if info.enabled:  # every process skips the backward, or none does (DDP all-reduces inside it)
            finite = D.all_reduce_sum(0.0 if finite else 1.0, info) == 0
        if not finite:
            names = [str(run.dataset.rows[r].path) for r in batch["row"].tolist()]
            log.warning("non-finite loss at step %d (epoch %d): this update is skipped; clips: %s%s", state.step,
                        state.epoch + 1, ", ".join(names[:8]), " ..." if len(names) > 8 else "")
            state.window_bad = True
            state.epoch_bad_losses += 1
            return 0
        (loss / tc.grad_accum).backward()
    state.window_synced = (sync and not local) or not info.enabled
    state.last_loss = loss.item()
    used = len(batch["row"])
    state.window_clips += used
    state.epoch_clips += used
    return used * info.world_size


def optimizer_step(run: Run, state: TrainState) -> dict[str, Any] | None:
    """Schedule, clip, step; returns the step's metrics record. A window with no usable clip, or with a non-finite
    loss, makes no update (None); `train.max_bad_steps` such windows in a row end the run with a DataError."""
    tc = run.cfg.train
    bad, empty = state.window_bad, state.window_clips == 0
    if run.info.enabled:  # every process must agree on whether to step
        empty = D.all_reduce_sum(float(state.window_clips), run.info) == 0
    synced = state.window_synced
    state.window_clips, state.window_bad, state.window_synced = 0, False, False
    if bad or empty:
        run.optimizer.zero_grad(set_to_none=True)
        if bad:
            state.bad_steps += 1
            if state.bad_steps >= tc.max_bad_steps:
                raise DataError(f"training stopped: {state.bad_steps} updates in a row had a non-finite loss "
                                f"(train.max_bad_steps = {tc.max_bad_steps}); the clips are named in the log above")
        return None
    state.bad_steps = 0
    if not synced and tc.grad_clip_scope == "global":
        # the window's last micro-batch was skipped, so DDP never all-reduced its gradients ('process' scope:
        # clip_gradients averages them, after each process clipped its own)
        D.average_gradients(run.model, run.info)
    lr = tc.lr * warmup_cosine(state.step, run.total_steps, run.warmup_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    grad_norm = D.clip_gradients(run.model, tc.grad_clip, tc.grad_clip_scope, run.info)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    record: dict[str, Any] = {"step": state.step, "epoch": state.epoch + 1, "loss": state.last_loss, "lr": lr}
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    return record


def close_epoch(run: Run, state: TrainState) -> dict[str, Any]:
    """The epoch's skips by kind (all processes) into the metrics log; an epoch with no usable clip is an error."""
    padded_here = run.clip_log.take_counts()["padded"]
    gathered = D.gather_objects((state.epoch_clips, dict(state.epoch_skips), state.epoch_bad_losses, padded_here),
                                run.info)
    clips = sum(g[0] for g in gathered)
    skips: Counter = Counter()
    for g in gathered:
        skips.update(g[1])
    record = {"step": state.step, "epoch": state.epoch + 1, "clips_trained": clips,
              "skipped": sum(skips.values()), "skipped_by_kind": dict(sorted(skips.items())),
              "padded": sum(g[3] for g in gathered), "non_finite_losses": sum(g[2] for g in gathered)}
    run.metrics_log.write(record)
    state.epoch_clips, state.epoch_skips, state.epoch_bad_losses = 0, Counter(), 0
    if clips == 0:
        kinds = ", ".join(f"{n} {k}" for k, n in skips.most_common()) or "no clip at all"
        raise DataError(f"epoch {state.epoch + 1}: no usable training clip (skipped: {kinds}); "
                        "`mbt data check` lists each file's problem")
    return record


def validate(run: Run, state: TrainState) -> dict[str, Any]:
    """data.val with one centre clip; the entry joins the history and the metrics log."""
    result = evaluate_dataset(run.model, run.val_dataset, batch_size=run.local_batch, num_workers=run.num_workers,
                              info=run.info, progress=run.progress)
    entry = {"step": state.step, "epoch": state.epoch + 1,
             **{f"val_{k}": v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
    state.history.append(entry)
    run.metrics_log.write(entry)
    if run.info.is_main:
        log.info("epoch %d: %s", state.epoch + 1,
                 ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float)))
    return entry


def scheduled_test(run: Run, state: TrainState) -> dict[str, Any] | None:
    """data.test with data.eval_clips x eval_crops views (official: 4 clips), after the epoch `state.epoch` when
    it is a multiple of train.test_every_epochs and after the last; the entry (test_* metrics) joins the history
    and the metrics log (metrics.jsonl, TensorBoard)."""
    tc = run.cfg.train
    epoch = state.epoch + 1
    due = epoch == tc.epochs or (tc.test_every_epochs > 0 and epoch % tc.test_every_epochs == 0)
    if run.test_dataset is None or not due:
        return None
    result = evaluate_dataset(run.model, run.test_dataset, batch_size=run.local_batch, num_workers=run.num_workers,
                              info=run.info, progress=run.progress)
    entry = {"step": state.step, "epoch": epoch,
             **{f"test_{k}": v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
    state.history.append(entry)
    run.metrics_log.write(entry)
    if run.info.is_main:
        log.info("epoch %d test (%d clips x %d crops): %s", epoch, run.cfg.data.eval_clips, run.cfg.data.eval_crops,
                 ", ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float)))
    return entry


def finish(run: Run, state: TrainState, *, save_model: bool) -> None:
    """Checks the replicas agree (DDP), writes the from_pretrained files, releases the process group."""
    info = run.info
    if info.enabled:  # a cheap guard against silently diverged replicas
        hashes = D.gather_objects(parameter_digest(run.model), info)
        run.metrics_log.write({"step": state.step, "rank_parameter_hashes": hashes})
        if len(set(hashes)) > 1:
            raise RuntimeError(f"the {info.world_size} processes ended with different parameters: {hashes}")
    if info.is_main and save_model:
        run.model.save_pretrained(run.out_dir)
    D.barrier(info)
    D.cleanup(info)
    run.metrics_log.close()
    if run.log_file is not None:
        run.log_file.close()
