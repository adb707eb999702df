"""Prediction on single files: top-k labels with scores. A file lacking the audio (or video) track is predicted
from the other stream, with a warning."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mbt.media.decode import MediaError, probe
from mbt.media.preprocess import Preprocessor
from mbt.model import MBT

log = logging.getLogger("mbt.predict")


@dataclass
class Prediction:
    path: str
    labels: list[dict] = field(default_factory=list)  # [{"label", "score"}] best first; per split "split" too
    modalities: list[str] = field(default_factory=list)  # the streams the prediction used
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "labels": self.labels, "modalities": self.modalities,
                "warnings": self.warnings, "error": self.error}


def scores_from_logits(logits: torch.Tensor, model: MBT) -> list[tuple[str | None, torch.Tensor, int]]:
    """(split name, scores, offset into the class list) per head: sigmoid for multi-label, softmax otherwise."""
    cfg = model.config
    if cfg.multi_label:
        return [(None, torch.sigmoid(logits), 0)]
    if cfg.class_splits is None:
        return [(None, torch.softmax(logits, dim=-1), 0)]
    heads, offset = [], 0
    for j, size in enumerate(cfg.class_splits):
        heads.append((f"split{j}", torch.softmax(logits[offset:offset + size], dim=-1), offset))
        offset += size
    return heads


@torch.no_grad()
def predict_file(model: MBT, preprocessor: Preprocessor, path: str | Path, top_k: int = 5, *,
                 fuse: bool = True) -> Prediction:
    """Top-k labels of the centre clip; `fuse=False` runs the streams apart (official test_with_bottlenecks=False)."""
    prediction = Prediction(str(path))
    class_names = preprocessor.cfg.class_names or [str(i) for i in range(model.config.num_classes)]
    try:
        info = probe(path)
    except MediaError as e:
        prediction.error = f"{e.kind}: {e.reason}"
        return prediction
    available = {"video": info.has_video, "audio": info.has_audio}
    wanted = [m for m in model.config.modalities if available.get(m, False)]
    for m in model.config.modalities:
        if not available.get(m, False):
            prediction.warnings.append(f"no {m} track: predicted from {', '.join(wanted) or 'nothing'} alone")
    if not wanted:
        prediction.error = "the file has none of the model's modalities"
        return prediction
    try:
        sample = preprocessor(path, train=False, modalities=tuple(wanted))
    except MediaError as e:
        prediction.error = f"{e.kind}: {e.reason}"
        return prediction
    prediction.warnings += sample.warnings
    device = next(model.parameters()).device
    out = model(**{m: x.unsqueeze(0).to(device) for m, x in sample.inputs.items()}, fuse=fuse)
    prediction.modalities = wanted
    for split, scores, offset in scores_from_logits(out.logits[0].float().cpu(), model):
        values, indices = scores.topk(min(top_k, scores.numel()))
        for value, index in zip(values.tolist(), indices.tolist()):
            entry = {"label": class_names[offset + index], "score": round(value, 6)}
            if split is not None:
                entry["split"] = split
            prediction.labels.append(entry)
    for warning in prediction.warnings:
        log.warning("%s: %s", path, warning)
    return prediction
