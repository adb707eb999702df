"""Clip datasets for training and evaluation, and the collate function that goes with them.

Training gives one randomly placed, augmented clip per manifest row; its randomness is a function of
(seed, epoch, row index) only, so a resumed run sees exactly the clips it would have seen, with any number of
data-loader workers. Evaluation gives `num_clips` evenly spaced clips x `num_crops` crops per row ("views"),
flattened as `row * views_per_row + view`; the engine averages the logits of a row's views.

A clip that cannot be used (missing file, corrupt, lacking a modality the model needs, NaN samples, a training
window mostly padding) is never turned into a zero tensor with a label: the item is a skip marker that the collate
function lists in `batch["skipped"]`, so the count survives worker processes and the engine can report it; padded
clips are listed in `batch["padded"]`. The dataset itself logs neither (it runs in workers, once per epoch): the
consumer does, once per clip, with `ClipLog`. With `on_missing_modality="mask"` a clip lacking one stream is used
with the others: the missing stream's input is zeros and the item lists it in `missing`; the collate function turns
that into `batch["modality_mask"]`, which the model uses so that those zeros reach nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mbt.data.compact import CompactManifest, compact_label_indices
from mbt.data.manifest import ManifestError, ManifestRow
from mbt.media import transforms
from mbt.media.decode import MediaError
from mbt.media.preprocess import Preprocessor
from mbt.media.settings import PreprocessorConfig

log = logging.getLogger("mbt.data")

CENTRE_CROP = 1  # crop index of the Preprocessor: 0 left/top, 1 centre, 2 right/bottom
ON_MISSING_MODALITY = ("skip", "mask", "error")
_MISSING_STREAM = {"no_video": "video", "no_audio": "audio"}  # MediaError kinds that name one absent stream


def eval_positions(num_clips: int) -> list[float]:
    """Relative clip positions in [0, 1] of the evaluation clips: evenly spaced, ends included; one -> middle."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if num_clips == 1:
        return [0.5]
    return [i / (num_clips - 1) for i in range(num_clips)]


def eval_crops(num_crops: int) -> list[int]:
    """Crop indices of the evaluation crops: the centre, or left / centre / right."""
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 (centre) or 3 (left/centre/right), got {num_crops}")
    return [CENTRE_CROP] if num_crops == 1 else [0, 1, 2]


def epoch_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one item of one epoch (SeedSequence: nearby inputs give unrelated streams)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class ClipDataset(Dataset):
    """Manifest rows -> model inputs and targets.

    Targets: single-label -> int64 class index; multi-label -> float32 multi-hot (num_classes); with
    `class_splits` (e.g. Epic-Kitchens verb 97 / noun 300, the classes listing the first split's names then the
    second's) -> int64 (num_splits,), label j of a row being looked up among split j's names. Labels are checked
    when the dataset is built: an unknown label is a ManifestError naming the manifest line.

    An unusable clip (a MediaError: missing, unreadable, corrupt, non-finite, lacking one of `modalities`...) is
    returned as a skip marker with `on_missing_modality="skip"`; with "error" the MediaError is raised (in the
    main process too: a worker's MediaError is rebuilt from its message); with "mask" a clip lacking one stream
    (but not all) is used with the streams it has (see the module docstring). A window whose padding (either
    modality) is more than `max_pad_fraction` is a skip of kind `too_much_padding` in either mode; None accepts any
    padding (evaluation: every view of a short clip is padded alike).

    `deferred_video` (training only): an item's video is its uint8 (T, S, S, 3) crop and `item["colour"]` its colour
    draws; `transforms.finish_video(batch video, batch["colour"])` on the training device makes the model inputs
    (what the engine does: the loader's CPU time then goes to decoding, not to floats).

    `set_epoch` must reach the dataset the workers use: the engine calls it before creating each epoch's iterator
    (non-persistent workers copy the dataset then).
    """

    def __init__(self, rows: list[ManifestRow], class_names: list[str], preprocessor: Preprocessor, *,
                 train: bool, modalities: tuple[str, ...], multi_label: bool = False,
                 class_splits: tuple[int, ...] | None = None, num_clips: int = 1, num_crops: int = 1,
                 on_missing_modality: str = "skip", seed: int = 0, max_pad_fraction: float | None = None,
                 deferred_video: bool = False):
        if on_missing_modality not in ON_MISSING_MODALITY:
            raise ValueError(f"on_missing_modality must be one of {ON_MISSING_MODALITY}, got {on_missing_modality!r}")
        if class_splits is not None and multi_label:
            raise ValueError("class_splits are softmax heads; they cannot be multi-label")
        if class_splits is not None and sum(class_splits) != len(class_names):
            raise ValueError(f"class_splits {tuple(class_splits)} do not sum to the {len(class_names)} classes")
        # a CompactManifest stays as it is: its arrays are what forked workers share (see data/compact.py)
        self.rows = rows if isinstance(rows, CompactManifest) else list(rows)
        self.class_names = list(class_names)
        self.preprocessor = preprocessor
        self.train = train
        self.modalities = tuple(modalities)
        self.multi_label = multi_label
        self.class_splits = tuple(class_splits) if class_splits is not None else None
        self.on_missing_modality = on_missing_modality
        self.max_pad_fraction = max_pad_fraction
        self.seed = seed
        self.epoch = 0
        self.deferred_video = deferred_video and train
        # training samples one random clip per row; evaluation enumerates the views
        self.positions = eval_positions(1 if train else num_clips)
        self.crops = eval_crops(1 if train else num_crops)
        # Label indices of all rows in two flat arrays (row r: labels[offsets[r]:offsets[r + 1]]): checked now,
        # compact for millions of rows, and shared copy-on-write by forked workers (lists of tensors are not).
        if isinstance(self.rows, CompactManifest) and self.class_splits is None:
            self._labels, self._offsets = compact_label_indices(self.rows, self.class_names,
                                                                multi_label=self.multi_label)
        else:
            self._labels, self._offsets = self._flat_label_indices()

    def _flat_label_indices(self) -> tuple[np.ndarray, np.ndarray]:
        lookups = self._split_indices()
        indices: list[int] = []
        offsets = [0]
        for row in self.rows:
            indices += self._label_indices(row, lookups)
            offsets.append(len(indices))
        return np.asarray(indices, dtype=np.int64), np.asarray(offsets, dtype=np.int64)

    # ---------------------------------------------------------------- targets
    def _split_indices(self) -> list[dict[str, int]]:
        if self.class_splits is None:
            return [{name: i for i, name in enumerate(self.class_names)}]
        lookups, offset = [], 0
        for size in self.class_splits:
            lookups.append({name: i for i, name in enumerate(self.class_names[offset:offset + size])})
            offset += size
        return lookups

    def _label_indices(self, row: ManifestRow, lookups: list[dict[str, int]]) -> list[int]:
        where = f"manifest line {row.line} ({row.path})"
        if self.class_splits is not None:
            if len(row.labels) != len(self.class_splits):
                raise ManifestError(f"{where}: {len(row.labels)} label(s) {list(row.labels)}, but the "
                                    f"{len(self.class_splits)} class splits need one each, separated by ';'")
            for j, (label, lookup) in enumerate(zip(row.labels, lookups)):
                if label not in lookup:
                    raise ManifestError(f"{where}: label {label!r} is not among class split {j}'s "
                                        f"{len(lookup)} names in the classes file")
            return [lookup[label] for label, lookup in zip(row.labels, lookups)]
        unknown = [label for label in row.labels if label not in lookups[0]]
        if unknown:
            raise ManifestError(f"{where}: label {unknown[0]!r} is not in the classes file")
        if not self.multi_label and len(row.labels) != 1:
            raise ManifestError(f"{where}: a single-label dataset needs exactly one label, got {list(row.labels)}")
        return [lookups[0][label] for label in row.labels]

    def target_of(self, row: ManifestRow) -> torch.Tensor:
        """The target of a row that is not in `rows` (a shard's sample); a ManifestError for a label the classes
        (or class splits) do not know."""
        indices = torch.tensor(self._label_indices(row, self._split_indices()), dtype=torch.int64)
        if self.multi_label:
            target = torch.zeros(len(self.class_names), dtype=torch.float32)
            target[indices] = 1.0
            return target
        return indices if self.class_splits is not None else indices[0]

    @property
    def targets(self) -> Sequence[torch.Tensor]:
        """`targets[row]`: the row's target, built when asked (see the class docstring for its form)."""
        return _RowTargets(self)

    def _target(self, row_index: int) -> torch.Tensor:
        indices = torch.from_numpy(self._labels[self._offsets[row_index]:self._offsets[row_index + 1]].copy())
        if self.multi_label:
            target = torch.zeros(len(self.class_names), dtype=torch.float32)
            target[indices] = 1.0
            return target
        return indices if self.class_splits is not None else indices[0]

    # ---------------------------------------------------------------- views
    @property
    def views_per_row(self) -> int:
        return len(self.positions) * len(self.crops)

    def view(self, index: int) -> tuple[int, float, int]:
        """(row index, clip position, crop index) of a dataset index."""
        row, view = divmod(index, self.views_per_row)
        clip, crop = divmod(view, len(self.crops))
        return row, self.positions[clip], self.crops[crop]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows) * self.views_per_row

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        row_index = index // self.views_per_row
        return self.item(self.rows[row_index], row_index, index % self.views_per_row, self._target(row_index))

    def item(self, row: ManifestRow, row_index: int, view: int, target: torch.Tensor) -> dict[str, Any]:
        """The item of view `view` of `row` (a skip marker when unusable), `row_index` seeding its augmentation.
        `__getitem__` calls it with the manifest's rows; the shard stream with rows whose path is `MediaBytes`."""
        _, position, crop = self.view(row_index * self.views_per_row + view)
        missing: tuple[str, ...] = ()
        try:
            try:
                sample = self._sample(row, row_index, position, crop, self.modalities)
            except MediaError as e:
                lacking = _MISSING_STREAM.get(e.kind)
                if self.on_missing_modality != "mask" or lacking not in self.modalities or len(self.modalities) < 2:
                    raise
                missing = (lacking,)
                sample = self._sample(row, row_index, position, crop,
                                      tuple(m for m in self.modalities if m != lacking))
                log.debug("%s: no %s; masked", row.path, lacking)
        except MediaError as e:
            if self.on_missing_modality == "error":
                raise
            return {"skipped": e.reason, "kind": e.kind, "row": row_index, "path": str(row.path)}
        pads = {"video": sample.video_pad_fraction, "audio": sample.audio_pad_fraction}
        worst = max(pads, key=pads.get)
        if self.max_pad_fraction is not None and pads[worst] > self.max_pad_fraction:
            reason = (f"{pads[worst]:.0%} of the {worst} window would be padding (data.max_pad_fraction "
                      f"{self.max_pad_fraction:g}): the file is shorter than the window, cut off or damaged")
            return {"skipped": reason, "kind": "too_much_padding", "row": row_index, "path": str(row.path)}
        for warning in sample.warnings:
            log.debug("%s: %s", row.path, warning)
        inputs = {m: sample.inputs[m] if m not in missing else
                  blank_input(self.preprocessor.cfg, m, deferred=self.deferred_video) for m in self.modalities}
        item = {"inputs": inputs, "target": target, "row": row_index, "view": view, "missing": missing}
        if self.deferred_video and "video" in inputs:
            item["colour"] = (sample.colour if sample.colour is not None
                              else torch.tensor(transforms.IDENTITY_COLOUR, dtype=torch.float32))
        if sample.video_padded or sample.audio_padded:
            item["padded"] = (str(row.path), sample.video_pad_fraction if sample.video_padded else 0.0,
                              sample.audio_pad_fraction if sample.audio_padded else 0.0)
        return item

    def _sample(self, row: ManifestRow, row_index: int, position: float, crop: int, modalities: tuple[str, ...]):
        if self.train:  # the same generator for a retry without a missing stream: still a function of the item
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, row_index))
            return self.preprocessor(row.path, train=True, generator=generator, start=row.start, end=row.end,
                                     modalities=modalities, **({"deferred": True} if self.deferred_video else {}))
        return self.preprocessor(row.path, train=False, position=position, crop=crop, start=row.start, end=row.end,
                                 modalities=modalities)


class _RowTargets(Sequence):
    def __init__(self, dataset: ClipDataset):
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset.rows)

    def __getitem__(self, row_index: int) -> torch.Tensor:
        if not -len(self) <= row_index < len(self):
            raise IndexError(f"row {row_index} out of range for {len(self)} rows")
        return self._dataset._target(row_index % len(self))


def blank_input(cfg: PreprocessorConfig, modality: str, *, deferred: bool = False) -> torch.Tensor:
    """Zeros of a stream's input shape: the placeholder of a missing stream, which the modality mask keeps out.
    deferred: the video's uint8 (T, S, S, 3) crop shape (`finish_video` turns it into -1s, still masked out)."""
    if modality == "video" and deferred:
        return torch.zeros(cfg.num_frames, cfg.image_size, cfg.image_size, 3, dtype=torch.uint8)
    if modality == "video":
        return torch.zeros(3, cfg.num_frames, cfg.image_size, cfg.image_size)
    return torch.zeros(cfg.spec_frames, cfg.num_mel_bins)


# glibc malloc returns every freed block above 128 KB to the OS (mmap threshold), so a fresh worker re-faults the
# pages of each clip's frames, resized copies and batch (2,800 page faults a training clip, ~10 % of its CPU time).
# Raising the thresholds keeps the freed memory for the next clip; the heap stays at one clip's working set.
_MALLOC_KEEP_BYTES = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def loader_worker_init(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: keep freed memory in the worker's heap (glibc; elsewhere nothing happens)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator's defaults stay
        return
    mallopt(_M_MMAP_THRESHOLD, _MALLOC_KEEP_BYTES // 8)  # at most 32 MB: glibc's own ceiling for it
    mallopt(_M_TRIM_THRESHOLD, _MALLOC_KEEP_BYTES)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack; in a DataLoader worker straight into shared memory, as torch's default_collate does: the batch
    is then sent to the main process without a second copy of every clip (4.8 MB of uint8 video, 19 MB as floats)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(tensors)
    first = tensors[0]
    storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
    out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the usable items; `skipped` lists (row, path, kind, reason) of the others, `padded` (row, path, video
    fraction, audio fraction) of the usable items that were padded beyond the tolerance.

    A batch whose items were all skipped has empty `inputs`, `target` None and zero-length `row` / `view`.
    `modality_mask` {stream: (B,) bool} is there when some item lacks a stream (`on_missing_modality="mask"`).
    """
    usable = [item for item in items if "skipped" not in item]
    skipped = [(item["row"], item["path"], item["kind"], item["skipped"]) for item in items if "skipped" in item]
    lacking = {m for item in usable for m in item.get("missing", ())}
    batch: dict[str, Any] = {
        "inputs": {m: _stack([item["inputs"][m] for item in usable]) for m in (usable[0]["inputs"]
                                                                                if usable else ())},
        "target": torch.stack([item["target"] for item in usable]) if usable else None,
        "row": torch.tensor([item["row"] for item in usable], dtype=torch.int64),
        "view": torch.tensor([item["view"] for item in usable], dtype=torch.int64),
        "skipped": skipped,
        "padded": [(item["row"], *item["padded"]) for item in usable if "padded" in item],
    }
    if usable and "colour" in usable[0]:  # deferred video: finish_video(batch["inputs"]["video"], batch["colour"])
        batch["colour"] = torch.stack([item["colour"] for item in usable])
    if lacking:
        batch["modality_mask"] = {m: torch.tensor([m not in item.get("missing", ()) for item in usable])
                                  for m in sorted(lacking)}
    return batch


class ClipLog:
    """Logs each skipped or padded clip of a run once (not once per epoch) and counts them by kind.

    `record(batch)` after each batch of `collate`; `take_counts()` returns the counts since the last call (e.g. per
    epoch, for metrics.jsonl): {"skipped": {kind: n}, "padded": n}. A row skipped in one epoch and used in another
    (a random window of a cut-off file) is logged once for each.
    """

    def __init__(self, logger: logging.Logger, what: str = "clip"):
        self.log = logger
        self.what = what
        self._skips_logged: set[int] = set()
        self._pads_logged: set[int] = set()
        self.skipped: Counter[str] = Counter()
        self.padded = 0

    def record(self, batch: dict[str, Any]) -> None:
        for row, path, kind, reason in batch["skipped"]:
            self.skipped[kind] += 1
            if row not in self._skips_logged:
                self._skips_logged.add(row)
                self.log.warning("skipped %s %s (%s): %s", self.what, path, kind, reason)
        for row, path, video_fraction, audio_fraction in batch.get("padded", ()):
            self.padded += 1
            if row not in self._pads_logged:
                self._pads_logged.add(row)
                parts = [f"{f:.0%} of the {m} window" for m, f in (("video", video_fraction),
                                                                    ("audio", audio_fraction)) if f > 0]
                self.log.info("padded %s %s: %s filled (repeated frames / silence)", self.what, path,
                              " and ".join(parts))

    def take_counts(self) -> dict[str, Any]:
        counts = {"skipped": dict(self.skipped), "padded": self.padded}
        self.skipped, self.padded = Counter(), 0
        return counts
