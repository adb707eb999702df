"""`mbt.Classifier`: a trained model with its preprocessing and class names, from media files to labels.

    clf = Classifier.from_pretrained("runs/my-run")
    clf("clip.mp4", top_k=5)                       # [("dog", 0.91), ("cat", 0.04), ...]
    clf.predict(paths, batch_size=8, num_workers=4)  # one Prediction per path, unusable files marked as skipped
    clf.timeline("long.mp4", window=8.0, hop=4.0)  # scores of every class over time

The work is done by `mbt.engine.predict`, which `mbt predict` uses too, so both give the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mbt.engine.evaluate import load_for_inference
from mbt.engine.predict import Prediction, Timeline, class_names_of, predict_files, predict_timeline
from mbt.media.preprocess import Preprocessor
from mbt.model import MBT


class Classifier:
    def __init__(self, model: MBT, preprocessor: Preprocessor):
        self.model = model.eval()
        self.preprocessor = preprocessor

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> Classifier:
        """A `from_pretrained` directory (output of `mbt train` / `mbt convert`) on `device`."""
        return cls(*load_for_inference(directory, device))

    @property
    def labels(self) -> list[str]:
        """The class names, in the order of the model's outputs."""
        return class_names_of(self.model, self.preprocessor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, path: str | Path, top_k: int = 5, *, clips: int = 4, crops: int = 1) -> list[tuple[str, float]]:
        """The `top_k` best labels of one file with their scores (softmax, or sigmoid for a multi-label model),
        best first; a model with class splits gives the top k of each split. A file missing one of the model's
        streams is predicted from the other; one that cannot be decoded raises MediaError."""
        (prediction,) = self.predict([path], top_k=top_k, clips=clips, crops=crops)
        if prediction.error is not None:
            raise prediction.error
        return [(entry["label"], entry["score"]) for entry in prediction.labels]

    def predict(self, paths: Sequence[str | Path], *, top_k: int = 5, batch_size: int = 8, num_workers: int = 0,
                clips: int = 4, crops: int = 1, progress: bool = False) -> list[Prediction]:
        """One Prediction per path, in order: `clips` evenly spaced clips x `crops` crops per file, logits averaged
        (as `mbt evaluate`); `batch_size` files per forward pass, decoded by `num_workers` processes. A file that
        cannot be used has `skipped` set (its reason) instead of labels; `missing` lists absent streams."""
        return list(predict_files(self.model, self.preprocessor, paths, top_k=top_k, num_clips=clips,
                                  num_crops=crops, batch_size=batch_size, num_workers=num_workers, progress=progress))

    def timeline(self, path: str | Path, *, window: float | None = None, hop: float | None = None,
                 batch_size: int = 8, num_workers: int = 0, progress: bool = False) -> Timeline:
        """Scores of every class in windows of `window` s every `hop` s (default: the model's input window and
        half of it): `.starts`, `.ends` (seconds), `.scores` (windows, classes), `.class_names`."""
        return predict_timeline(self.model, self.preprocessor, path, window=window, hop=hop, batch_size=batch_size,
                                num_workers=num_workers, progress=progress)
