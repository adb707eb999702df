"""Prediction on media files, shared by `mbt predict` and `mbt.Classifier`: labels with scores per file, or per
window of a long recording (a timeline).

Per file, N evenly spaced clips x M crops are decoded and their raw logits averaged, the views `mbt evaluate`
uses (`eval_positions` / `eval_crops`), so a file's prediction is the score evaluate would have given it. A file
lacking one of the model's streams is predicted from the streams it has and says which it lacked (`missing`);
a file that cannot be decoded is a skip with its reason, never a guess. Files are decoded by data-loader workers
and predicted in input order, so results can be streamed to a file as they come.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mbt.bars import bar as progress_bar
from mbt.data.datasets import CENTRE_CROP, eval_crops, eval_positions
from mbt.media.decode import MediaError, probe_tracks
from mbt.media.preprocess import Preprocessor
from mbt.model import MBT

log = logging.getLogger("mbt.predict")

SCORE_DIGITS = 6  # scores in JSON: enough to rank 527 classes, short lines


@dataclass
class Prediction:
    path: str
    labels: list[dict] = field(default_factory=list)  # [{"label", "score"}] best first; per split "split" too
    modality_labels: dict[str, list[dict]] = field(default_factory=dict)  # each stream's own head (token classifier)
    modalities: list[str] = field(default_factory=list)  # the streams the prediction used
    missing: list[str] = field(default_factory=list)  # the model's streams the file lacks
    warnings: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the file could not be predicted ("kind: reason")
    num_views: int = 0  # clips x crops averaged
    scores: np.ndarray | None = field(default=None, repr=False)  # every class's score (not in the JSON)
    error: MediaError | None = field(default=None, repr=False)  # the decoding error behind `skipped`

    def to_dict(self) -> dict:
        return {"path": self.path, "labels": self.labels, "modality_labels": self.modality_labels,
                "modalities": self.modalities, "missing": self.missing, "warnings": self.warnings,
                "skipped": self.skipped, "views": self.num_views}


def scores_from_logits(logits: torch.Tensor, model: MBT) -> list[tuple[str | None, torch.Tensor, int]]:
    """(split name, scores, offset into the class list) per head: sigmoid for multi-label, softmax otherwise."""
    cfg = model.config
    if cfg.multi_label:
        return [(None, torch.sigmoid(logits), 0)]
    if cfg.class_splits is None:
        return [(None, torch.softmax(logits, dim=-1), 0)]
    heads, offset = [], 0
    for j, size in enumerate(cfg.class_splits):
        heads.append((f"split{j}", torch.softmax(logits[..., offset:offset + size], dim=-1), offset))
        offset += size
    return heads


def class_scores(logits: torch.Tensor, model: MBT) -> torch.Tensor:
    """Scores of every class in class-list order (per-head softmaxes side by side for `class_splits`)."""
    return torch.cat([scores for _, scores, _ in scores_from_logits(logits, model)], dim=-1)


def top_labels(logits: torch.Tensor, model: MBT, class_names: Sequence[str], top_k: int) -> list[dict]:
    """[{"label", "score"(, "split")}] of the `top_k` best classes of one clip's (C,) logits, per head."""
    entries = []
    for split, scores, offset in scores_from_logits(logits.float(), model):
        values, indices = scores.topk(min(top_k, scores.numel()))
        for value, index in zip(values.tolist(), indices.tolist()):
            entry = {"label": class_names[offset + index], "score": round(value, SCORE_DIGITS)}
            if split is not None:
                entry["split"] = split
            entries.append(entry)
    return entries


def class_names_of(model: MBT, preprocessor: Preprocessor) -> list[str]:
    return list(preprocessor.cfg.class_names or [str(i) for i in range(model.config.num_classes)])


# ==================================================================== requests: what to decode, in workers
@dataclass(frozen=True)
class Request:
    """One result to compute: the views (clip position, crop index) of a span of a file, logits averaged.

    `modalities` None: the file is probed for the model's streams (in the worker, beside the decoding)."""

    path: str
    views: tuple[tuple[float, int], ...]
    start: float | None = None
    end: float | None = None
    modalities: tuple[str, ...] | None = None


def file_views(num_clips: int, num_crops: int) -> tuple[tuple[float, int], ...]:
    """The evaluation views of a file: every (clip position, crop), as `mbt evaluate` takes them."""
    return tuple((position, crop) for position in eval_positions(num_clips) for crop in eval_crops(num_crops))


class RequestDataset(Dataset):
    """Request i -> {"index", "inputs": {stream: (views, ...)}, "present", "missing", "warnings"}, or
    {"index", "error": MediaError, "missing"} when the file cannot give the model anything."""

    def __init__(self, requests: Sequence[Request], preprocessor: Preprocessor, modalities: Sequence[str]):
        self.requests = list(requests)
        self.preprocessor = preprocessor
        self.modalities = tuple(modalities)

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, index: int) -> dict[str, Any]:
        request = self.requests[index]
        missing: tuple[str, ...] = ()
        try:
            if request.modalities is None:
                tracks = probe_tracks(request.path, self.modalities)
                present, missing = tracks.present, tracks.missing
            else:
                present = request.modalities
                missing = tuple(m for m in self.modalities if m not in present)
            if not present:
                raise MediaError("unreadable", request.path,
                                 f"the file has none of the model's streams ({', '.join(self.modalities)})")
            samples = [self.preprocessor(request.path, position=position, crop=crop, start=request.start,
                                         end=request.end, modalities=present) for position, crop in request.views]
        except MediaError as e:
            return {"index": index, "error": e, "missing": missing}
        warnings = [f"no {m} track: predicted from {', '.join(present)} alone" for m in missing]
        for sample in samples:  # the views of a short file repeat the same padding warning
            warnings += [w for w in sample.warnings if w not in warnings]
        return {"index": index, "inputs": {m: torch.stack([s.inputs[m] for s in samples]) for m in present},
                "present": present, "missing": missing, "warnings": warnings}


@dataclass
class Outcome:
    """The model's view-averaged output for one request."""

    index: int
    logits: torch.Tensor | None  # (C,) float32 on the CPU
    modality_logits: dict[str, torch.Tensor]
    present: tuple[str, ...]
    missing: tuple[str, ...]
    warnings: list[str]
    num_views: int
    error: MediaError | None = None


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items  # files may have different streams: they are stacked per group of streams in `run_requests`


@torch.no_grad()
def run_requests(model: MBT, preprocessor: Preprocessor, requests: Sequence[Request], *, batch_size: int = 8,
                 num_workers: int = 0, progress: bool = False, desc: str = "predicting",
                 fuse: bool = True) -> Iterator[Outcome]:
    """The outcome of every request, in order. `batch_size` requests (each with all its views) per forward pass;
    requests whose files have the same streams share a pass. Raw logits are averaged over each request's views.
    `fuse=False` runs every layer with the streams apart (the official `test_with_bottlenecks=False`)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"number of workers must be >= 0, got {num_workers}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dataset = RequestDataset(requests, preprocessor, model.config.modalities)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    try:
        with progress_bar(total=len(dataset), desc=desc, enabled=progress, leave=False) as bar:
            for items in loader:
                yield from _forward(model, device, items, fuse)
                bar.update(len(items))
    finally:
        if was_training:
            model.train()


def _forward(model: MBT, device: torch.device, items: list[dict[str, Any]], fuse: bool = True) -> list[Outcome]:
    outcomes: dict[int, Outcome] = {}
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for item in items:
        if "error" in item:
            outcomes[item["index"]] = Outcome(item["index"], None, {}, (), tuple(item["missing"]), [], 0,
                                              item["error"])
        else:
            groups.setdefault(tuple(item["present"]), []).append(item)
    for present, group in groups.items():
        inputs = {m: torch.cat([item["inputs"][m] for item in group]).to(device) for m in present}
        out = model(**inputs, fuse=fuse)
        sizes = [len(item["inputs"][present[0]]) for item in group]
        logits = out.logits.float().cpu().split(sizes)
        per_stream = {m: x.float().cpu().split(sizes) for m, x in out.modality_logits.items()}
        for j, item in enumerate(group):
            outcomes[item["index"]] = Outcome(
                item["index"], logits[j].mean(dim=0), {m: x[j].mean(dim=0) for m, x in per_stream.items()},
                tuple(present), tuple(item["missing"]), item["warnings"], sizes[j])
    return [outcomes[item["index"]] for item in items]


# ==================================================================== files
def predict_files(model: MBT, preprocessor: Preprocessor, paths: Sequence[str | Path], *, top_k: int = 5,
                  num_clips: int = 4, num_crops: int = 1, spans: Sequence[tuple[float | None, float | None]] | None
                  = None, batch_size: int = 8, num_workers: int = 0, progress: bool = False,
                  fuse: bool = True) -> Iterator[Prediction]:
    """A Prediction per path, in order. `spans` (one (start, end) per path, None for the whole file) restricts
    each file to a segment, as a manifest's start / end columns do."""
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    views = file_views(num_clips, num_crops)
    spans = list(spans) if spans is not None else [(None, None)] * len(paths)
    if len(spans) != len(paths):
        raise ValueError(f"{len(spans)} spans for {len(paths)} paths")
    requests = [Request(str(path), views, start, end) for path, (start, end) in zip(paths, spans)]
    names = class_names_of(model, preprocessor)
    for outcome in run_requests(model, preprocessor, requests, batch_size=batch_size, num_workers=num_workers,
                                progress=progress, fuse=fuse):
        prediction = Prediction(requests[outcome.index].path, missing=list(outcome.missing),
                                warnings=list(outcome.warnings), num_views=outcome.num_views)
        if outcome.error is None and not bool(torch.isfinite(outcome.logits).all()):
            outcome.error = MediaError("non_finite", requests[outcome.index].path,
                                       "the model's logits for this file are not finite (damaged weights?)")
        if outcome.error is not None:
            prediction.skipped = f"{outcome.error.kind}: {outcome.error.reason}"
            prediction.error = outcome.error
        else:
            prediction.modalities = list(outcome.present)
            prediction.labels = top_labels(outcome.logits, model, names, top_k)
            prediction.modality_labels = {m: top_labels(x, model, names, top_k)
                                          for m, x in outcome.modality_logits.items()}
            prediction.scores = class_scores(outcome.logits, model).numpy()
        yield prediction


# ==================================================================== timeline
@dataclass
class Timeline:
    """Scores of every class over time: window i spans [starts[i], ends[i]] seconds; scores (windows, classes)."""

    path: str
    duration: float
    window: float
    hop: float
    class_names: list[str]
    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    modalities: list[str]
    missing: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # windows that could not be decoded: {start, end, reason}
    warnings: list[str] = field(default_factory=list)

    def top_classes(self, k: int = 5) -> list[int]:
        """Indices of the `k` classes with the highest peak score over the recording, best first."""
        if not len(self.scores):
            return []
        peak = self.scores.max(axis=0)
        return [int(i) for i in np.argsort(-peak, kind="stable")[:k]]

    def to_dict(self) -> dict:
        return {"path": self.path, "duration": round(self.duration, 3), "window": self.window, "hop": self.hop,
                "modalities": self.modalities, "missing": self.missing, "labels": self.class_names,
                "start": [round(float(t), 3) for t in self.starts], "end": [round(float(t), 3) for t in self.ends],
                "scores": np.round(self.scores, SCORE_DIGITS).tolist(), "skipped": self.skipped,
                "warnings": self.warnings}


def default_window(preprocessor: Preprocessor, modalities: Sequence[str]) -> float:
    """The longest input window of the streams used (8.015 s of audio for the paper's models): one clip then covers
    a window exactly."""
    cfg = preprocessor.cfg
    lengths = {"video": cfg.num_frames * cfg.frame_stride / cfg.fps, "audio": cfg.audio_seconds}
    return max(lengths[m] for m in modalities if m in lengths)


def window_spans(duration: float, window: float, hop: float) -> list[tuple[float, float]]:
    """[start, end] of windows `hop` apart covering [0, duration]; the last one ends at the end of the recording.
    A recording shorter than a window is one window."""
    if not window > 0 or not hop > 0:
        raise ValueError(f"--window and --hop must be > 0 seconds, got {window:g} and {hop:g}")
    if duration <= window:
        return [(0.0, duration)]
    count = math.ceil((duration - window) / hop - 1e-9) + 1
    starts = [min(i * hop, duration - window) for i in range(count)]
    return [(s, s + window) for s in starts]


def predict_timeline(model: MBT, preprocessor: Preprocessor, path: str | Path, *, window: float | None = None,
                     hop: float | None = None, batch_size: int = 8, num_workers: int = 0,
                     progress: bool = False, fuse: bool = True) -> Timeline:
    """Class scores of windows sliding over a recording: one centred clip per window (a window shorter than the
    model's input window gives the model its full input window, centred on it). Default window: the model's
    longest input window; default hop: half the window. Raises MediaError when the file cannot be read or has
    none of the model's streams."""
    tracks = probe_tracks(path, model.config.modalities)
    if not tracks.present:
        raise MediaError("unreadable", path, f"the file has none of the model's streams "
                                             f"({', '.join(model.config.modalities)})")
    window = float(window) if window is not None else default_window(preprocessor, tracks.present)
    hop = float(hop) if hop is not None else window / 2
    spans = window_spans(tracks.info.duration, window, hop)
    requests = [Request(str(path), ((0.5, CENTRE_CROP),), start, end, tracks.present) for start, end in spans]
    names = class_names_of(model, preprocessor)
    kept, rows, skipped, warnings = [], [], [], [f"no {m} track: predicted from {', '.join(tracks.present)} alone"
                                                 for m in tracks.missing]
    for outcome in run_requests(model, preprocessor, requests, batch_size=batch_size, num_workers=num_workers,
                                progress=progress, desc="timeline", fuse=fuse):
        start, end = spans[outcome.index]
        if outcome.error is not None:
            skipped.append({"start": round(start, 3), "end": round(end, 3),
                            "reason": f"{outcome.error.kind}: {outcome.error.reason}"})
            continue
        kept.append((start, end))
        rows.append(class_scores(outcome.logits, model).numpy())
        warnings += [w for w in outcome.warnings if w not in warnings]
    spans_kept = np.asarray(kept, dtype=np.float64).reshape(-1, 2)
    scores = np.stack(rows) if rows else np.zeros((0, len(names)), np.float32)
    return Timeline(str(path), tracks.info.duration, window, hop, names, spans_kept[:, 0], spans_kept[:, 1], scores,
                    list(tracks.present), list(tracks.missing), skipped, warnings)
