"""Losses on soft targets, so that label smoothing, mixup and class splits share one path.

Targets are dense (B, num_classes) floats: a one-hot per class split for single-label and multi-head sets,
a multi-hot vector for multi-label sets; mixup mixes them like the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mbt.model import MBTOutput
from mbt.model.config import MBTConfig


def dense_targets(target: torch.Tensor, cfg: MBTConfig) -> torch.Tensor:
    """Dataset targets -> (B, num_classes) float: class index, per-split indices, or multi-hot."""
    if cfg.multi_label:
        return target.float()
    if cfg.class_splits is None:
        return F.one_hot(target.long(), cfg.num_classes).float()
    return torch.cat([F.one_hot(target[:, j].long(), n).float() for j, n in enumerate(cfg.class_splits)], dim=1)


def _smooth(target: torch.Tensor, smoothing: float) -> torch.Tensor:
    # official: y * (1 - ls) + ls / C
    return target * (1.0 - smoothing) + smoothing / target.shape[-1] if smoothing else target


def classification_loss(logits: torch.Tensor, target: torch.Tensor, cfg: MBTConfig, smoothing: float = 0.0, *,
                        per_sample: bool = False) -> torch.Tensor:
    """The batch's loss, or with `per_sample` the (B,) losses whose mean it is."""
    logits = logits.float()
    if cfg.multi_label:
        # official: sigmoid BCE summed over classes, averaged over the batch
        bce = F.binary_cross_entropy_with_logits(logits, _smooth(target, smoothing), reduction="none")
        return bce.sum(dim=1) if per_sample else bce.sum(dim=1).mean()
    splits = cfg.class_splits or (cfg.num_classes,)
    losses = [
        -(_smooth(t, smoothing) * F.log_softmax(lg, dim=-1)).sum(dim=-1)
        for lg, t in zip(logits.split(splits, dim=1), target.split(splits, dim=1))
    ]
    if per_sample:
        return torch.stack(losses).mean(dim=0)
    return torch.stack([loss.mean() for loss in losses]).mean()  # one softmax per class split, averaged (Epic)


def mbt_loss(out: MBTOutput, targets: dict[str, torch.Tensor] | torch.Tensor, cfg: MBTConfig,
             smoothing: float = 0.0) -> torch.Tensor:
    """With per-stream logits (the token classifier, or `pool_per_stream`): the mean of the per-modality losses
    (official). `targets` may differ per modality (mixup with one weight per modality). With a modality mask
    (`out.modality_mask`) each sample's loss is the mean over the streams it has: a masked stream's logits are no
    prediction and never reach the loss."""
    def target_for(m: str) -> torch.Tensor:
        return targets[m] if isinstance(targets, dict) else targets

    if out.modality_logits and out.modality_mask:
        total = count = 0
        for m, lg in out.modality_logits.items():
            loss = classification_loss(lg, target_for(m), cfg, smoothing, per_sample=True)
            present = out.modality_mask.get(m)
            if present is None:
                total, count = total + loss, count + 1
            else:
                total = total + torch.where(present, loss, torch.zeros_like(loss))
                count = count + present.to(loss.dtype)
        return (total / count).mean()
    if out.modality_logits:
        losses = [classification_loss(lg, target_for(m), cfg, smoothing) for m, lg in out.modality_logits.items()]
        return torch.stack(losses).mean()
    target = target_for(next(iter(targets))) if isinstance(targets, dict) else targets
    return classification_loss(out.logits, target, cfg, smoothing)
