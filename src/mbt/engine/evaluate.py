"""Evaluation the way the paper reports it: N evenly spaced clips x M crops per video, raw logits averaged per
video, then the metrics over videos. Under torchrun every process evaluates a strided shard and the logits of every
clip are gathered before the metrics: no clip dropped or counted twice."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mbt.bars import bar
from mbt.data.compact import read_compact_manifest
from mbt.data.datasets import ClipDataset, collate, loader_worker_init
from mbt.data.shard_stream import ShardStream
from mbt.data.shards import is_shard_source
from mbt.engine import distributed as D
from mbt.engine.metrics import classification_metrics, write_per_class_ap
from mbt.media.preprocess import Preprocessor
from mbt.model import MBT

log = logging.getLogger("mbt.evaluate")


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    logits: np.ndarray  # (videos evaluated, C): per-video averaged logits (rank 0; empty elsewhere)
    targets: np.ndarray
    rows: np.ndarray  # manifest row index of each evaluated video
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, kind, reason) of unusable videos


def _dense_targets(dataset: ClipDataset, rows: np.ndarray) -> np.ndarray:
    targets = torch.stack([dataset.targets[r] for r in rows.tolist()]) if len(rows) else torch.zeros(0)
    return targets.numpy()


@torch.no_grad()
def evaluate_dataset(model: MBT, dataset: ClipDataset, *, batch_size: int = 8, num_workers: int = 0,
                     info: D.DistInfo | None = None, modalities: tuple[str, ...] | None = None,
                     progress: bool = True, fuse: bool = True) -> EvalResult:
    """Per-video averaged logits and the metrics. `fuse=False`: every layer runs the streams apart (the official
    `test_with_bottlenecks=False`). Clips lacking a stream (a dataset with on_missing_modality='mask') are run
    with the streams they have, through the model's modality mask."""
    info = info or D.DistInfo()
    was_training = model.training
    model.eval()
    modalities = tuple(modalities or model.config.modalities)
    streamed = isinstance(dataset, ShardStream)  # its targets are known once read: they come with the logits
    if streamed:
        loader = dataset.eval_loader(batch_size=batch_size, rank=info.rank, world=info.world_size,
                                     num_workers=num_workers)
    else:
        indices = D.eval_indices(len(dataset), info)
        batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                            worker_init_fn=loader_worker_init)
    device = next(model.parameters()).device
    local_rows, local_logits, local_skipped, local_targets = [], [], [], []
    for batch in bar(loader, enabled=progress and info.is_main, desc="evaluating", leave=False):
        local_skipped += [(row, path, kind, reason) for row, path, kind, reason in batch["skipped"]]
        if batch["target"] is None:
            continue
        inputs = {m: batch["inputs"][m].to(device) for m in modalities}
        mask = {m: v.to(device) for m, v in batch.get("modality_mask", {}).items() if m in modalities} or None
        logits = model(**inputs, modality_mask=mask, fuse=fuse).logits.float().cpu()
        finite = torch.isfinite(logits).all(dim=1)
        for i in (~finite).nonzero()[:, 0].tolist():  # a clip that drives the model to NaN is named and left out
            row = int(batch["row"][i])
            local_skipped.append((row, str(dataset.rows[row].path), "non_finite_output",
                                  "the model's logits for this clip are not finite"))
        local_rows.append(batch["row"][finite].numpy())
        local_logits.append(logits[finite].numpy())
        if streamed:
            local_targets.append(batch["target"][finite].numpy())
    if was_training:
        model.train()

    gathered = D.gather_objects((local_rows, local_logits, local_skipped, local_targets), info)
    if not info.is_main:
        return EvalResult({}, np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
    num_classes = model.config.num_classes
    sums = np.zeros((len(dataset.rows), num_classes), dtype=np.float64)
    views = np.zeros(len(dataset.rows), dtype=np.int64)
    skipped_rows: dict[int, tuple[str, str, str]] = {}
    row_targets: dict[int, np.ndarray] = {}
    for rows_list, logits_list, skipped, targets_list in gathered:
        for rows, targets in zip(rows_list, targets_list):
            row_targets.update(zip(rows.tolist(), targets))
        for rows, logits in zip(rows_list, logits_list):
            np.add.at(sums, rows, logits)
            np.add.at(views, rows, 1)
        for row, path, kind, reason in skipped:
            skipped_rows.setdefault(row, (path, kind, reason))
    evaluated = np.flatnonzero(views > 0)
    partial = [r for r in skipped_rows if views[r] > 0]
    if partial:
        log.warning("%d videos had some unusable views; their other views were averaged", len(partial))
    logits = (sums[evaluated] / views[evaluated, None]).astype(np.float32)
    targets = (np.stack([row_targets[r] for r in evaluated.tolist()]) if streamed and len(evaluated)
               else _dense_targets(dataset, evaluated))
    skipped = [skipped_rows[r] for r in sorted(skipped_rows) if views[r] == 0]
    for path, kind, reason in skipped:
        log.warning("not evaluated: %s (%s): %s", path, kind, reason)
    metrics: dict[str, Any] = {}
    if len(evaluated):
        metrics = classification_metrics(logits, targets, multi_label=model.config.multi_label,
                                         class_splits=model.config.class_splits, class_names=dataset.class_names)
    metrics["num_clips"] = int(views.sum())  # clips (views) evaluated: num_videos x clips x crops, less skips
    metrics["num_videos"] = int(len(evaluated))
    metrics["num_skipped"] = len(skipped)
    return EvalResult(metrics, logits, targets, evaluated, skipped)


def load_for_inference(checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[MBT, Preprocessor]:
    """A `from_pretrained` directory -> model + the preprocessing it was trained with (preprocessor.json)."""
    model = MBT.from_pretrained(checkpoint, map_location=device).eval()
    if model.preprocessing is None:
        raise FileNotFoundError(f"{checkpoint}: no preprocessor.json; the model's input preprocessing is unknown "
                                "(re-save it with `save_pretrained(dir, preprocessing=...)`)")
    return model, Preprocessor(model.preprocessing)


def evaluate_checkpoint(checkpoint: str | Path, manifest: str | Path, *, num_clips: int = 4, num_crops: int = 1,
                        modalities: tuple[str, ...] | None = None, batch_size: int = 8, num_workers: int = 0,
                        per_class_csv: str | Path | None = None, progress: bool = True, fuse: bool = True,
                        on_missing_modality: str = "skip") -> EvalResult:
    info = D.setup_distributed()
    model, preprocessor = load_for_inference(checkpoint, info.device)
    class_names = preprocessor.cfg.class_names
    if not class_names:
        raise ValueError(f"{checkpoint}: preprocessor.json has no class_names")
    modalities = tuple(modalities or model.config.modalities)
    unknown = [m for m in modalities if m not in model.config.modalities]
    if unknown:
        raise ValueError(f"--modalities: {unknown[0]!r} is not a modality of this model {model.config.modalities}")
    options = dict(modalities=modalities, multi_label=model.config.multi_label,
                   class_splits=model.config.class_splits, num_clips=num_clips, num_crops=num_crops,
                   on_missing_modality=on_missing_modality)
    if is_shard_source(manifest):  # shards of `mbt data shard`: read in index order, each sample once
        dataset = ShardStream(str(manifest), class_names, preprocessor, train=False, **options)
    else:
        dataset = ClipDataset(read_compact_manifest(manifest), class_names, preprocessor, train=False, **options)
    result = evaluate_dataset(model, dataset, batch_size=batch_size, num_workers=num_workers, info=info,
                              modalities=modalities, progress=progress, fuse=fuse)
    D.cleanup(info)
    if per_class_csv and info.is_main and model.config.multi_label and len(result.rows):
        from mbt.engine.metrics import average_precision

        write_per_class_ap(per_class_csv, average_precision(result.logits, result.targets), class_names,
                           num_positives=result.targets.sum(axis=0))
    return result
