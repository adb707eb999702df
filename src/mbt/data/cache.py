"""Decode-once datasets for small sets (the demo, quick experiments): every item of a dataset is decoded a single
time, in parallel, and kept in memory. There is no per-epoch augmentation: the items are the dataset's evaluation
views (centre crop, middle window). Runs in one process reuse each other's decoding (same manifest rows and
preprocessing)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from mbt.bars import bar
from mbt.data.datasets import ClipDataset
from mbt.fileio import dumps as strict_dumps

_MEMO: dict[str, list[dict[str, Any]]] = {}


def _key(dataset: ClipDataset) -> str:
    rows = [(str(r.path), r.labels, r.start, r.end) for r in dataset.rows]
    return strict_dumps([rows, dataset.preprocessor.cfg.to_dict(), dataset.modalities, dataset.views_per_row,
                         dataset.class_names, dataset.on_missing_modality], default=str)


class InMemoryClips(Dataset):
    def __init__(self, dataset: ClipDataset, *, num_workers: int = 0, progress: bool = True):
        if dataset.train:
            raise ValueError("InMemoryClips keeps evaluation views; build the dataset with train=False")
        self.rows, self.targets, self.class_names = dataset.rows, dataset.targets, dataset.class_names
        self.views_per_row = dataset.views_per_row
        key = _key(dataset)
        if key not in _MEMO:
            loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
            _MEMO[key] = list(bar(loader, enabled=progress, total=len(dataset), desc="decoding once",
                                   leave=False))
        self.items = _MEMO[key]

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the items do not change between epochs."""

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]
