"""Training and evaluation streamed from WebDataset shards (`mbt data shard`), the same items as `ClipDataset`.

The plan of an epoch is a pure function of (seed, epoch, world size, rank, loader workers) and the index's sample
counts, so every process computes its own part without talking to the others:

1. The shards are put in an order drawn from (seed, epoch) and their samples concatenated: positions 0..N-1,
   N the index's sample count.
2. Rank r takes positions [r * P, (r + 1) * P) with P = ceil(N / world size), wrapping round to the start for the
   last rank, so every rank has P samples (the manifests' padding rule, `shard_indices`); its batches are those of
   `epoch_batches` over P (the last incomplete one dropped). So every sample is seen once an epoch (but for the
   padding and the dropped tail) and every rank takes the same number of steps.
3. A rank's batch k comes from loader worker k % W (the order in which a DataLoader collects them); worker w reads
   the contiguous part of the rank's positions its batches need. A part is a list of segments (shard, first
   sample, count): a shard split between two workers or ranks is read by both, each keeping its own samples.
4. Each segment passes through a shuffle buffer of `data.shuffle_buffer` samples seeded by (seed, epoch, shard,
   first sample), emptied at the segment's end (the shuffle never crosses a segment). Together with the shard
   order per epoch and the shuffled row order `mbt data shard` writes, this mixes the set.

The augmentation of a clip is drawn from (seed, epoch, sample position in the index), as with manifests.

Resume is exact: a run resumed at batch k of an epoch sees the same batches k, k+1, ... with the same clips and
augmentations as an uninterrupted run. Each worker skips the segments its first batches used without opening them
and replays the one it was in (reading its samples and shuffling them again, without decoding media), so a resume
costs at most one shard's read per worker. (The DataLoader hands the first batch after a resume to worker 0, so
worker w plays the part of the original worker (w + k) % W.) Not bit-exact: a run continued with another number
of processes or loader workers, or after the shards were rewritten.

A sample that cannot be used (media FFmpeg cannot decode, JSON that does not parse, a label the classes file does
not know) is a skip marker as in `ClipDataset`, counted by the engine; so is every sample a shard failed to
deliver (a truncated or unreadable shard: kind `bad_shard`), so that the epoch keeps its number of batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mbt.data.datasets import ClipDataset, collate, epoch_seed
from mbt.data.manifest import ManifestError, ManifestRow
from mbt.data.shards import ShardSet, resolve_shards
from mbt.media.decode import MediaBytes
from mbt.media.preprocess import Preprocessor

log = logging.getLogger("mbt.data")

DEFAULT_SHUFFLE_BUFFER = 512
_META_FIELDS = {"__key__", "__url__", "__local_path__", "json"}


@dataclass(frozen=True)
class Segment:
    """Samples [first, first + count) of shard `shard` (an index into the ShardSet's lists)."""

    shard: int
    first: int
    count: int


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    if not shuffle:
        return list(range(num_shards))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # the formula of `shard_indices`
    return torch.randperm(num_shards, generator=g).tolist()


def segments(order: Sequence[int], counts: Sequence[int], begin: int, end: int) -> list[Segment]:
    """The segments of positions [begin, end) of the shards concatenated in `order` (wrapping past the end)."""
    total = sum(counts[s] for s in order)
    out: list[Segment] = []
    while begin < end:
        at, offset = begin % total, 0
        for s in order:
            if offset <= at < offset + counts[s]:
                take = min(offset + counts[s] - at, end - begin)
                out.append(Segment(s, at - offset, take))
                begin += take
                break
            offset += counts[s]
    return out


def batch_sizes(per_rank: int, batch_size: int) -> list[int]:
    """Sizes of a rank's batches over `per_rank` samples: `epoch_batches` with drop_last."""
    sizes = [min(batch_size, per_rank - i) for i in range(0, per_rank, batch_size)]
    if len(sizes) > 1 and sizes[-1] < batch_size:
        sizes.pop()
    return sizes


def train_plan(counts: Sequence[int], *, seed: int, epoch: int, rank: int, world: int, worker: int,
               workers: int, batch_size: int, num_batches: int | None = None) -> tuple[list[Segment], list[int]]:
    """(segments, batch sizes) of worker `worker` of rank `rank` in a training epoch (see the module docstring).
    `num_batches` caps the rank's batches (the engine's steps_per_epoch x grad_accum)."""
    total = sum(counts)
    per_rank = -(-total // world)
    sizes = batch_sizes(per_rank, batch_size)[:num_batches]
    mine = sizes[worker::workers]
    before = sum(sum(sizes[w::workers]) for w in range(worker))
    begin = rank * per_rank + before
    order = shard_order(len(counts), seed, epoch, shuffle=True)
    return segments(order, counts, begin, begin + sum(mine)), mine


def eval_plan(counts: Sequence[int], *, rank: int, world: int, worker: int, workers: int) -> list[Segment]:
    """Worker `worker` of rank `rank`'s segments in evaluation: every sample once over all, in index order."""
    total = sum(counts)
    begin, end = total * rank // world, total * (rank + 1) // world
    lo, hi = begin + (end - begin) * worker // workers, begin + (end - begin) * (worker + 1) // workers
    return segments(range(len(counts)), counts, lo, hi)


class ShardRows(Sequence):
    """`rows[i]` of a shard set: a row naming sample i ("shard:position") for messages (labels are in the
    shards, not known before reading them)."""

    def __init__(self, shards: ShardSet):
        self.names = shards.names
        self.offsets = np.concatenate([[0], np.cumsum(shards.counts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        index = int(index) % len(self)
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return ManifestRow(Path(f"{self.names[shard]}:{index - int(self.offsets[shard])}"), ())


class ShardStream:
    """A shard set read as a training or evaluation dataset: `len()` is the index's sample count (what the engine
    sizes an epoch by), `rows` names samples, `loader(...)` gives one epoch's batches.

    `template` is a `ClipDataset` without rows that turns each sample into its item(s), with the same targets,
    skips, padding rules and augmentation as a manifest's row.
    """

    def __init__(self, source: str, class_names: list[str], preprocessor: Preprocessor, *, train: bool,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, **dataset_options: Any):
        self.shards = resolve_shards(source)
        self.template = ClipDataset([], class_names, preprocessor, train=train, **dataset_options)
        self.class_names = self.template.class_names
        self.train = train
        self.shuffle_buffer = shuffle_buffer
        self.seed = self.template.seed
        self.epoch = 0
        self.rows = ShardRows(self.shards)
        self._check_classes()

    def _check_classes(self) -> None:
        # the index lists the labels its samples carry: an unknown one is refused now, not at the first batch
        # (with class splits, which split a label belongs to is checked per sample)
        known = set(self.class_names)
        unknown = [label for label in self.shards.classes if label not in known]
        if unknown:
            raise ManifestError(f"{self.shards.index}: label {unknown[0]!r} of the shards is not in the classes file")

    @property
    def views_per_row(self) -> int:
        return self.template.views_per_row

    def __len__(self) -> int:
        return self.shards.samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def loader(self, *, epoch: int, first_batch: int, batch_size: int, rank: int, world: int, num_workers: int,
               num_batches: int | None = None) -> DataLoader:
        """One training epoch's batches of this rank from `first_batch` on (see the module docstring)."""
        epoch_data = _Epoch(self, epoch=epoch, first_batch=first_batch, batch_size=batch_size, rank=rank,
                            world=world, workers=max(num_workers, 1), num_batches=num_batches)
        return DataLoader(epoch_data, batch_size=None, num_workers=num_workers)

    def eval_loader(self, *, batch_size: int, rank: int, world: int, num_workers: int) -> DataLoader:
        """Evaluation batches (every view of every sample once over all ranks and workers)."""
        data = _Evaluation(self, batch_size=batch_size, rank=rank, world=world, workers=max(num_workers, 1))
        return DataLoader(data, batch_size=None, num_workers=num_workers)

    # ---------------------------------------------------------------- reading
    def samples(self, segment: Segment) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
        """(position in the index, the sample's fields or None, why not) of each sample of `segment`, in shard
        order. A shard that fails part-way gives None for each sample it did not deliver."""
        from webdataset.tariterators import tarfile_samples

        shards = self.shards
        base = int(self.rows.offsets[segment.shard])
        failure: list[BaseException] = []

        def stop(error: BaseException) -> bool:
            failure.append(error)
            return False  # the rest of this shard cannot be trusted: stop reading it

        at = 0
        try:
            for sample in tarfile_samples([{"url": shards.urls[segment.shard]}], handler=stop):
                if at >= segment.first + segment.count:
                    break
                if at >= segment.first:
                    yield base + at, sample, None
                at += 1
        except Exception as e:  # a pipe that failed, a tar header that did not parse
            failure.append(e)
        if at < segment.first + segment.count:
            why = (f"{type(failure[0]).__name__}: {' '.join(str(failure[0]).split())[:200]}" if failure
                   else f"the shard ended after {at} of the {shards.counts[segment.shard]} samples its index lists")
            for missing in range(max(at, segment.first), segment.first + segment.count):
                yield base + missing, None, why

    def shuffled(self, segment: Segment, epoch: int) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
        """`samples(segment)` through the shuffle buffer of (seed, epoch, shard, first sample)."""
        if self.shuffle_buffer <= 1:
            yield from self.samples(segment)
            return
        rng = np.random.default_rng(epoch_seed(self.seed, epoch, segment.shard * 1_000_003 + segment.first))
        buffer: list = []
        for sample in self.samples(segment):
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], sample = sample, buffer[j]
            yield sample
        order = rng.permutation(len(buffer))
        for j in order:
            yield buffer[j]

    def items(self, position: int, sample: dict[str, Any] | None, why: str | None) -> list[dict[str, Any]]:
        """The items (views) of one sample; one skip marker when it cannot be used."""
        name = self.rows[position].path.as_posix()
        if sample is None:
            return [{"skipped": f"not delivered by its shard: {why}", "kind": "bad_shard", "row": position,
                     "path": name}]
        try:
            meta = json.loads(sample["json"].decode("utf-8")) if "json" in sample else None
            if not isinstance(meta, dict):
                raise ValueError("no JSON object with the sample's labels")
            media = [k for k in sample if k not in _META_FIELDS]
            if len(media) != 1:
                raise ValueError(f"expected one media member, found {media or 'none'}")
            labels = meta.get("labels")
            if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
                raise ValueError(f"'labels' must be a list of names, got {labels!r}")
            start, end = meta.get("start"), meta.get("end")
            for value in (start, end):
                if value is not None and (not isinstance(value, (int, float)) or not value >= 0):
                    raise ValueError(f"start/end must be seconds or null, got {start!r}, {end!r}")
            if meta.get("path"):
                name = f"{name} ({meta['path']})"
            row = ManifestRow(MediaBytes(name, bytes(sample[media[0]])), tuple(labels),  # type: ignore[arg-type]
                              None if start is None else float(start), None if end is None else float(end),
                              int(meta.get("line", 0) or 0))
            target = self.template.target_of(row)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, ManifestError) as e:
            return [{"skipped": f"bad sample: {' '.join(str(e).split())[:300]}", "kind": "bad_sample",
                     "row": position, "path": name}]
        return [self.template.item(row, position, view, target) for view in range(self.views_per_row)]


class _Epoch(IterableDataset):
    """One training epoch of one rank: each loader worker yields its collated batches."""

    def __init__(self, stream: ShardStream, *, epoch: int, first_batch: int, batch_size: int, rank: int,
                 world: int, workers: int, num_batches: int | None):
        self.stream, self.epoch, self.first_batch = stream, epoch, first_batch
        self.batch_size, self.rank, self.world, self.workers = batch_size, rank, world, workers
        self.num_batches = num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        here = info.id if info is not None else 0
        # after a resume at batch k, the DataLoader asks worker 0 first: it plays the worker batch k came from
        worker = (here + self.first_batch) % self.workers
        stream = self.stream
        stream.template.set_epoch(self.epoch)
        plan, sizes = train_plan(stream.shards.counts, seed=stream.seed, epoch=self.epoch, rank=self.rank,
                                 world=self.world, worker=worker, workers=self.workers, batch_size=self.batch_size,
                                 num_batches=self.num_batches)
        done = len(range(worker, self.first_batch, self.workers))  # this worker's batches before the resume
        skip = sum(sizes[:done])
        pending, batch_index = [], done
        for segment in plan:
            if skip >= segment.count:  # used before the resume: not even opened
                skip -= segment.count
                continue
            for position, sample, why in stream.shuffled(segment, self.epoch):
                if skip:  # replayed for the shuffle's sake, not decoded
                    skip -= 1
                    continue
                pending += stream.items(position, sample, why)
                if batch_index < len(sizes) and len(pending) == sizes[batch_index]:
                    yield collate(pending)
                    pending, batch_index = [], batch_index + 1


class _Evaluation(IterableDataset):
    def __init__(self, stream: ShardStream, *, batch_size: int, rank: int, world: int, workers: int):
        self.stream, self.batch_size, self.rank, self.world, self.workers = stream, batch_size, rank, world, workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        pending: list[dict[str, Any]] = []
        for segment in eval_plan(self.stream.shards.counts, rank=self.rank, world=self.world, worker=worker,
                                 workers=self.workers):
            for position, sample, why in self.stream.samples(segment):
                pending += self.stream.items(position, sample, why)
                while len(pending) >= self.batch_size:
                    yield collate(pending[:self.batch_size])
                    pending = pending[self.batch_size:]
        if pending:
            yield collate(pending)
