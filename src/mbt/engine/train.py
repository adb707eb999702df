"""The training recipe: a readable loop that wires the components (datasets, model, losses, mixup, optimiser,
schedule, checkpoints, distributed samplers). Runs the same under `python`, `mbt train` and `torchrun`.

Exact resume: the data order and every clip's augmentation are functions of (seed, epoch, index); the global RNG
(stochastic depth), the mixup generator, the optimiser and the position inside the epoch are checkpointed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mbt.config import Config
from mbt.data.cache import InMemoryClips
from mbt.data.datasets import ClipDataset, ClipLog, collate
from mbt.data.manifest import read_classes, read_manifest
from mbt.engine import distributed as D
from mbt.engine.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from mbt.engine.evaluate import evaluate_dataset
from mbt.engine.losses import dense_targets, mbt_loss
from mbt.engine.mixup import mixup
from mbt.engine.schedule import warmup_cosine
from mbt.media.preprocess import Preprocessor, PreprocessorConfig
from mbt.model import MBT

log = logging.getLogger("mbt.train")

RUN_CONFIG = "train_config.yaml"
METRICS_LOG = "metrics.jsonl"


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation
    skipped: int = 0
    seconds: float = 0.0
    clips_per_second: float = 0.0


def resolve_classes(cfg: Config) -> list[str]:
    """The classes file decides the number of classes; a config that disagrees is corrected with a note."""
    if not cfg.data.classes:
        raise ValueError("data.classes: a classes file (one class name a line) is needed to train")
    names = read_classes(cfg.data.classes)
    if cfg.model.num_classes != len(names):
        log.info("model.num_classes set to %d from %s", len(names), cfg.data.classes)
        cfg.model.num_classes = len(names)
        cfg.model.validate()
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


def initialise(model: MBT, source: str) -> None:
    """`train.init_from`: a from_pretrained directory (e.g. a converted official checkpoint) or 2-D ViT weights."""
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

    report = init_from_vit(model, path)
    log.info("initialised from ViT weights %s: %s", path, report)


def _batches(indices: list[int], batch_size: int, drop_last: bool) -> list[list[int]]:
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


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
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def parameter_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          stop_after_steps: int | None = None) -> TrainResult:
    """Train `cfg` into `out_dir`, which ends up a `from_pretrained` directory plus `checkpoints/`.

    `stop_after_steps` ends the run early, after a checkpoint, as an interruption would (tests use it).
    """
    info = D.setup_distributed()
    out_dir = Path(out_dir)
    class_names = resolve_classes(cfg)
    tc = cfg.train
    if tc.batch_size % info.world_size:
        raise ValueError(f"train.batch_size {tc.batch_size} (the global batch) must be a multiple of the "
                         f"{info.world_size} processes")
    local_batch = tc.batch_size // info.world_size
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / RUN_CONFIG)

    prep_cfg = PreprocessorConfig.from_config(cfg, class_names)
    preprocessor = Preprocessor(prep_cfg)
    model_cfg = cfg.model
    rows = read_manifest(cfg.data.train) if cfg.data.train else None
    if not rows:
        raise ValueError("data.train: a training manifest with at least one row is needed")
    dataset = ClipDataset(rows, class_names, preprocessor, train=not cfg.data.cache,
                          modalities=model_cfg.modalities, multi_label=model_cfg.multi_label,
                          class_splits=model_cfg.class_splits, on_missing_modality=cfg.data.on_missing_modality,
                          seed=tc.seed, max_pad_fraction=cfg.data.max_pad_fraction)
    val_dataset = None
    if cfg.data.val:
        val_dataset = ClipDataset(read_manifest(cfg.data.val), class_names, preprocessor, train=False,
                                  modalities=model_cfg.modalities, multi_label=model_cfg.multi_label,
                                  class_splits=model_cfg.class_splits, num_clips=1, num_crops=1,
                                  on_missing_modality="skip")
    if cfg.data.cache:
        dataset = InMemoryClips(dataset, num_workers=tc.num_workers, progress=progress and info.is_main)
        if val_dataset is not None:
            val_dataset = InMemoryClips(val_dataset, num_workers=tc.num_workers, progress=progress and info.is_main)
    sample_weights = D.balanced_weights([r.labels for r in rows]) if tc.balanced_sampler else None

    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    model = MBT(model_cfg)
    if tc.init_from:
        initialise(model, tc.init_from)
    model.preprocessing = prep_cfg.to_dict()
    model.to(info.device)
    ddp_model = model
    if info.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)
    optimizer = make_optimizer(model, cfg)

    batches_per_epoch = len(_batches(D.shard_indices(len(dataset), 0, tc.seed, info, shuffle=True),
                                     local_batch, drop_last=True))
    steps_per_epoch = max(batches_per_epoch // tc.grad_accum, 1)
    total_steps = steps_per_epoch * tc.epochs
    warmup_steps = round(tc.warmup_epochs * steps_per_epoch)
    mix_generator = torch.Generator().manual_seed(tc.seed + 7919 * (info.rank + 1))
    torch.manual_seed(tc.seed + info.rank)  # stochastic depth differs per rank

    step, start_epoch, start_batch = 0, 0, 0
    history: list[dict[str, Any]] = []
    skipped_total = 0
    if resume:
        found = list_checkpoints(out_dir)
        if not found:
            log.warning("--resume: no checkpoint in %s; starting from scratch", out_dir / "checkpoints")
        else:
            state = load_checkpoint(found[-1])
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step, start_epoch, start_batch = state["step"], state["epoch"], state["batch_in_epoch"]
            history, skipped_total = state["history"], state["skipped"]
            torch.set_rng_state(state["rng"][info.rank])
            mix_generator.set_state(state["mix_rng"][info.rank])
            log.info("resumed from %s (step %d, epoch %d, batch %d)", found[-1], step, start_epoch, start_batch)

    metrics_log = MetricsLog(out_dir, info.is_main)
    autocast = (torch.autocast(info.device.type, dtype=torch.bfloat16) if tc.precision == "bf16" else nullcontext())
    started, clips_seen = time.time(), 0
    stopped_early = False
    last_loss = float("nan")

    def checkpoint(epoch: int, batch_in_epoch: int) -> None:
        rng = D.gather_objects(torch.get_rng_state(), info)
        mix_rng = D.gather_objects(mix_generator.get_state(), info)
        if info.is_main:
            save_checkpoint(out_dir, step, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "rng": rng, "mix_rng": mix_rng, "history": history,
                "skipped": skipped_total, "config": cfg.to_dict(),
            }, keep=tc.keep_checkpoints)
        D.barrier(info)

    clip_log = ClipLog(log, "training clip")
    for epoch in range(start_epoch, tc.epochs):
        dataset.set_epoch(epoch)
        indices = D.shard_indices(len(dataset), epoch, tc.seed, info, shuffle=True, weights=sample_weights)
        batches = _batches(indices, local_batch, drop_last=True)[: steps_per_epoch * tc.grad_accum]
        first = start_batch if epoch == start_epoch else 0
        workers = 0 if cfg.data.cache else tc.num_workers  # cached items need no decoding processes
        # its own generator: a DataLoader would otherwise draw its worker seed from the global RNG, which would
        # then differ between an uninterrupted and a resumed run (items draw their randomness from the epoch)
        loader = DataLoader(dataset, batch_sampler=batches[first:], num_workers=workers, collate_fn=collate,
                            generator=torch.Generator().manual_seed(tc.seed))
        model.train()
        bar = tqdm(loader, total=len(batches) - first, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not (progress and info.is_main), leave=False, dynamic_ncols=True)
        for batch_index, batch in enumerate(bar, start=first):
            clip_log.record(batch)  # each skipped / padded clip logged once per run, counted by kind
            skipped_total += len(batch["skipped"])
            last_micro = (batch_index + 1) % tc.grad_accum == 0
            usable = batch["target"] is not None
            if info.enabled:  # every process must join the same all-reduces: skip a batch together
                usable = D.all_reduce_sum(0.0 if usable else 1.0, info) == 0
            if usable:
                inputs = {m: x.to(info.device, non_blocking=True) for m, x in batch["inputs"].items()}
                target = dense_targets(batch["target"], model_cfg).to(info.device)
                inputs, targets = mixup(inputs, target, tc.mixup_alpha, per_modality=tc.mixup_per_modality,
                                        generator=mix_generator)
                sync = ddp_model.no_sync() if info.enabled and not last_micro else nullcontext()
                with sync:
                    with autocast:
                        loss = mbt_loss(ddp_model(**inputs), targets, model_cfg, tc.label_smoothing)
                    if not torch.isfinite(loss):
                        names = [str(dataset.rows[r].path) for r in batch["row"].tolist()]
                        raise FloatingPointError(
                            f"non-finite loss {loss.item()} at step {step} (epoch {epoch + 1}, batch "
                            f"{batch_index}); clips: {names[:8]}")
                    (loss / tc.grad_accum).backward()
                last_loss = loss.item()
                clips_seen += len(batch["row"]) * info.world_size
            elif batch["target"] is not None:
                log.warning("batch %d dropped: another process had no usable clip in it", batch_index)
            if not last_micro:
                continue
            lr = tc.lr * warmup_cosine(step, total_steps, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip > 0
                         else None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            rate = clips_seen / max(time.time() - started, 1e-9)
            bar.set_postfix(loss=f"{last_loss:.4f}", clips_s=f"{rate:.1f}")
            record = {"step": step, "epoch": epoch + 1, "loss": last_loss, "lr": lr, "clips_per_s": rate}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            metrics_log.write(record)
            end_of_epoch = batch_index == len(batches) - 1
            if step % tc.checkpoint_every == 0 and not end_of_epoch:
                checkpoint(epoch, batch_index + 1)
            if stop_after_steps is not None and step >= stop_after_steps:
                stopped_early = True
                break
        bar.close()
        if stopped_early:
            checkpoint(epoch, batch_index + 1)
            break
        if val_dataset is not None and ((epoch + 1) % tc.eval_every_epochs == 0 or epoch + 1 == tc.epochs):
            result = evaluate_dataset(model, val_dataset, batch_size=local_batch, num_workers=workers,
                                      info=info, progress=progress)
            entry = {"step": step, "epoch": epoch + 1, **{f"val_{k}": v for k, v in result.metrics.items()
                                                          if isinstance(v, (int, float))}}
            history.append(entry)
            metrics_log.write(entry)
            if info.is_main:
                log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in entry.items()
                                                             if isinstance(v, float)))
        checkpoint(epoch + 1, 0)

    if info.enabled:  # a cheap guard against silently diverged replicas
        hashes = D.gather_objects(parameter_digest(model), info)
        metrics_log.write({"step": step, "rank_parameter_hashes": hashes})
        if len(set(hashes)) > 1:
            raise RuntimeError(f"the {info.world_size} processes ended with different parameters: {hashes}")
    if info.is_main and not stopped_early:
        model.save_pretrained(out_dir)
    D.barrier(info)
    D.cleanup(info)
    metrics_log.close()
    seconds = time.time() - started
    return TrainResult(out_dir, step, history, skipped_total, seconds, clips_seen / max(seconds, 1e-9))
