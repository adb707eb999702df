"""Classification metrics as the papers report them, in numpy/torch only (scikit-learn is the tests' reference).

- Multi-label (AudioSet): per-class average precision with scikit-learn's definition (a step function over the
  distinct score thresholds, no interpolation, tied scores forming one threshold), mAP = mean over the classes that
  have positives (scenic: `nanmean` of sklearn's per-class AP), ROC AUC per class, and d' = √2·Φ⁻¹(mean AUC) as
  the AudioSet papers (and AST) compute it.
- Single-label (VGGSound): top-1 / top-5 accuracy.
- Multi-head (Epic-Kitchens, `class_splits`): top-1 / top-5 per head, and the action accuracy: the argmax of
  softmax(verb) ⊗ softmax(noun) must be the (verb, noun) pair (ViViT's `joint_accuracy`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm, rankdata

ArrayLike = np.ndarray | torch.Tensor | Sequence

# Rows of the verb x noun score table built at once for the joint top-k: 512 x (97 x 300) floats is about 60 MB.
_JOINT_CHUNK = 512


def _numpy(values: ArrayLike, name: str, allow_nan: bool = False) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    bad = np.isinf(array) if allow_nan else ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{name} contain {'NaN' if np.isnan(array).any() else 'infinite'} values")
    return array


def _scores_and_targets(scores: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float scores and (N, C) boolean targets; targets may also be (N,) class indices."""
    scores = _numpy(scores, "scores")
    if scores.ndim != 2:
        raise ValueError(f"scores must be (clips, classes), got shape {scores.shape}")
    targets = _numpy(targets, "targets")
    if targets.ndim == 1:
        targets = _one_hot(targets, scores.shape[1])
    if targets.shape != scores.shape:
        raise ValueError(f"targets of shape {targets.shape} do not match scores of shape {scores.shape}")
    return scores, targets > 0.5


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = _labels(labels, num_classes, "labels")
    one_hot = np.zeros((len(labels), num_classes))
    one_hot[np.arange(len(labels)), labels] = 1
    return one_hot


def _labels(labels: ArrayLike, num_classes: int, name: str) -> np.ndarray:
    labels = _numpy(labels, name)
    if labels.ndim != 1 or (labels != np.round(labels)).any():
        raise ValueError(f"{name} must be a vector of class indices, got shape {labels.shape}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(f"{name}: class index {int(bad[0])} is outside 0..{num_classes - 1}")
    return labels.astype(np.int64)


def average_precision(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Per-class AP (C,) of (N, C) scores against (N, C) 0/1 targets (or (N,) class indices); NaN where a class
    has no positive. Equal to sklearn's `average_precision_score(targets[:, c], scores[:, c])`."""
    scores, targets = _scores_and_targets(scores, targets)
    return np.array([_binary_average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])


def _binary_average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    if not positive.any():
        return math.nan
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    # One threshold per distinct score, at the last clip holding it: tied clips enter the ranking together.
    last_of_score = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(positive)[last_of_score]
    precision = true_positives / (last_of_score + 1)
    recall = true_positives / true_positives[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> float:
    """mAP over the classes that have at least one positive; NaN when none has."""
    return _nanmean(average_precision(scores, targets))


def roc_auc(scores: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Per-class ROC AUC (C,); NaN for a class without both positives and negatives. Equal to sklearn's
    `roc_auc_score` per class: the Mann-Whitney statistic, a tie between a positive and a negative counting 1/2."""
    scores, targets = _scores_and_targets(scores, targets)
    ranks = rankdata(scores, axis=0)  # tied scores share their average rank
    positives = targets.sum(axis=0)
    negatives = len(targets) - positives
    rank_sum = np.where(targets, ranks, 0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def mean_auc(scores: ArrayLike, targets: ArrayLike) -> float:
    """Mean ROC AUC over the classes that have both positives and negatives; NaN when none has."""
    return _nanmean(roc_auc(scores, targets))


def d_prime(auc: float) -> float:
    """d' = √2·Φ⁻¹(AUC): the separation of two unit-variance Gaussians that would give this AUC."""
    return float(math.sqrt(2.0) * norm.ppf(auc))


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else math.nan


def topk_accuracy(logits: ArrayLike, labels: ArrayLike, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of clips whose label is among the k highest logits, for each k (k above the number of classes
    counts every clip as correct). Tied logits rank by class index, lowest first, as scenic's argmax and
    `lax.top_k` do: all-equal logits (a zero-initialised head) are right only for class 0, never for all."""
    logits = _numpy(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"logits must be (clips, classes), got shape {logits.shape}")
    labels = _labels(labels, logits.shape[1], "labels")
    if len(labels) != len(logits):
        raise ValueError(f"{len(labels)} labels for {len(logits)} rows of logits")
    if len(labels) == 0:
        raise ValueError("top-k accuracy of zero clips")
    rank = _rank(torch.as_tensor(logits), torch.as_tensor(labels)).numpy()
    result = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"top-k needs k >= 1, got {k}")
        result[k] = float((rank < k).mean())
    return result


def joint_accuracy(verb_logits: ArrayLike, noun_logits: ArrayLike, verb_labels: ArrayLike,
                   noun_labels: ArrayLike) -> float:
    """Action accuracy: the argmax of softmax(verb) ⊗ softmax(noun) is the (verb, noun) pair."""
    return joint_topk_accuracy(verb_logits, noun_logits, verb_labels, noun_labels, ks=(1,))[1]


def joint_topk_accuracy(verb_logits: ArrayLike, noun_logits: ArrayLike, verb_labels: ArrayLike,
                        noun_labels: ArrayLike, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy over (verb, noun) pairs scored by the product of the two heads' softmax probabilities."""
    verb = torch.softmax(torch.as_tensor(_numpy(verb_logits, "verb logits")), dim=-1)
    noun = torch.softmax(torch.as_tensor(_numpy(noun_logits, "noun logits")), dim=-1)
    if verb.ndim != 2 or noun.ndim != 2 or len(verb) != len(noun):
        raise ValueError(f"verb logits {tuple(verb.shape)} and noun logits {tuple(noun.shape)} must be "
                         "(clips, classes) with the same number of clips")
    num_nouns = noun.shape[1]
    verbs = _labels(verb_labels, verb.shape[1], "verb labels")
    nouns = _labels(noun_labels, num_nouns, "noun labels")
    pair = torch.as_tensor(verbs * num_nouns + nouns)  # index of the true pair in the flattened verb x noun table
    if len(pair) != len(verb):
        raise ValueError(f"{len(pair)} labels for {len(verb)} rows of logits")
    if len(pair) == 0:
        raise ValueError("joint accuracy of zero clips")
    ranks = []
    for start in range(0, len(pair), _JOINT_CHUNK):
        rows = slice(start, start + _JOINT_CHUNK)
        table = (verb[rows, :, None] * noun[rows, None, :]).flatten(1)
        ranks.append(_rank(table, pair[rows]))
    rank = torch.cat(ranks)
    return {k: float((rank < k).double().mean()) for k in ks}


def _rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's label among its scores, ties going to the lower index (k-th place: rank k-1)."""
    true_score = scores.gather(1, labels[:, None])
    lower_index = torch.arange(scores.shape[1])[None, :] < labels[:, None]
    return ((scores > true_score) | ((scores == true_score) & lower_index)).sum(dim=1)


def classification_metrics(logits: ArrayLike, targets: ArrayLike, *, multi_label: bool,
                           class_splits: Sequence[int] | None = None,
                           class_names: Sequence[str] | None = None,
                           split_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The metrics of the evaluation JSON, as plain floats, plus `num_videos` (the rows of `logits`: one per video,
    its views' logits averaged).

    - multi-label: `mAP`, `AUC` (mean over classes), `dprime` (of the mean AUC); targets (N, C) multi-hot.
    - single-label: `top1`, and `top5` when there are at least 5 classes (with fewer it would always be 1);
      targets (N,) class indices. The same rule holds for each head's and the action's top 5 below.
    - `class_splits` (head sizes, e.g. (97, 300)): targets (N, heads) with each head's own class index;
      `<head>_top1` / `<head>_top5` per head, named by `split_names` (default verb/noun for two heads, else
      split0, split1, ...); `top1` = every head right at once, and for two heads `action_top1` / `action_top5`
      from the product of the heads' probabilities (`top5` = `action_top5`).
    `class_names`, when given, must name every column of `logits`.
    """
    scores = _numpy(logits, "logits")
    if scores.ndim != 2:
        raise ValueError(f"logits must be (clips, classes), got shape {scores.shape}")
    if class_names is not None and len(class_names) != scores.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {scores.shape[1]} logit columns")
    metrics: dict[str, Any] = {"num_videos": int(len(scores))}
    if multi_label:
        if class_splits is not None:
            raise ValueError("class_splits are softmax heads; they cannot be multi-label")
        auc = mean_auc(scores, targets)
        metrics |= {"mAP": mean_average_precision(scores, targets), "AUC": auc,
                    "dprime": d_prime(auc)}
        return metrics
    if class_splits is None:
        accuracy = topk_accuracy(scores, targets, ks=_ks(scores.shape[1]))
        return metrics | {f"top{k}": value for k, value in accuracy.items()}
    return metrics | _split_metrics(scores, _numpy(targets, "targets"), tuple(class_splits), split_names)


def _ks(num_classes: int) -> tuple[int, ...]:
    """The top-k accuracies worth reporting: top-5 needs at least 5 classes, or every clip would count as right."""
    return (1, 5) if num_classes >= 5 else (1,)


def _split_metrics(scores: np.ndarray, targets: np.ndarray, class_splits: tuple[int, ...],
                   split_names: Sequence[str] | None) -> dict[str, float]:
    if sum(class_splits) != scores.shape[1]:
        raise ValueError(f"class_splits {class_splits} do not sum to the {scores.shape[1]} logit columns")
    if targets.ndim != 2 or targets.shape != (len(scores), len(class_splits)):
        raise ValueError(f"targets of shape {targets.shape} must be (clips, {len(class_splits)}): one class index "
                         "per head")
    if split_names is None:
        split_names = ("verb", "noun") if len(class_splits) == 2 else [f"split{i}" for i in range(len(class_splits))]
    if len(split_names) != len(class_splits):
        raise ValueError(f"{len(split_names)} split names {list(split_names)} for {len(class_splits)} class splits")
    bounds = np.cumsum((0, *class_splits))
    heads = [scores[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    metrics: dict[str, float] = {}
    all_right = np.ones(len(scores), dtype=bool)
    for j, (name, head) in enumerate(zip(split_names, heads)):
        accuracy = topk_accuracy(head, targets[:, j], ks=_ks(head.shape[1]))
        metrics |= {f"{name}_top{k}": value for k, value in accuracy.items()}
        all_right &= head.argmax(axis=1) == targets[:, j]
    metrics["top1"] = float(all_right.mean())
    if len(heads) == 2:
        pairs = heads[0].shape[1] * heads[1].shape[1]
        joint = joint_topk_accuracy(heads[0], heads[1], targets[:, 0], targets[:, 1], ks=_ks(pairs))
        metrics["action_top1"] = joint[1]
        if 5 in joint:
            metrics |= {"action_top5": joint[5], "top5": joint[5]}
    return metrics


def write_per_class_ap(path: str | Path, ap: ArrayLike, class_names: Sequence[str],
                       num_positives: ArrayLike | None = None) -> None:
    """CSV `class,ap,num_positives`, one row per class in class order; `nan` AP for a class without positives,
    an empty num_positives cell when the counts are not given."""
    ap = _numpy(ap, "ap", allow_nan=True)
    if len(ap) != len(class_names):
        raise ValueError(f"{len(ap)} AP values for {len(class_names)} class names")
    counts = None if num_positives is None else _numpy(num_positives, "num_positives").astype(np.int64)
    if counts is not None and len(counts) != len(class_names):
        raise ValueError(f"{len(counts)} positive counts for {len(class_names)} class names")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "ap", "num_positives"])
        for i, name in enumerate(class_names):
            writer.writerow([name, "nan" if math.isnan(ap[i]) else f"{ap[i]:.6f}",
                             "" if counts is None else int(counts[i])])
