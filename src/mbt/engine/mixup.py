"""Mixup as the official train step: one Beta(alpha, alpha) weight per batch, each example paired with the
reversed batch; the same weight for every modality, or one per modality (official `mixmod`)."""

from __future__ import annotations

import numpy as np
import torch


def mixup(inputs: dict[str, torch.Tensor], target: torch.Tensor, alpha: float, *, per_modality: bool,
          generator: torch.Generator, mask: dict[str, torch.Tensor] | None = None,
          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Mixed inputs, the matching soft targets per modality, and the mixed modality mask. `generator` makes it
    resumable.

    `mask` {stream: (B,) bool} (samples lacking a stream): a mixed stream is present only where both samples have
    it, so a missing stream's zeros never count as data; a pair that would be left with no stream is not mixed.
    """
    if alpha <= 0:
        return inputs, {m: target for m in inputs}, mask
    # numpy draws the Beta sample, seeded from the explicit torch generator (torch's Beta uses the global RNG)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    weight = float(rng.beta(alpha, alpha))
    mixable, mixed_mask = None, None
    if mask:
        both = {m: v & v.flip(0) for m, v in mask.items()}
        mixable = torch.ones_like(next(iter(both.values())))
        if len(both) == len(inputs):  # a stream outside the mask is present in every sample
            mixable = torch.stack(list(both.values())).any(dim=0)
        mixed_mask = {m: torch.where(mixable, both[m], v) for m, v in mask.items()}
    mixed, targets = {}, {}
    for m, x in inputs.items():
        if per_modality and mixed:
            weight = float(rng.beta(alpha, alpha))
        if mixable is None:
            mixed[m] = weight * x + (1 - weight) * x.flip(0)
            targets[m] = weight * target + (1 - weight) * target.flip(0)
            continue
        w = torch.where(mixable, torch.tensor(weight, dtype=x.dtype, device=x.device), 1.0)
        mixed[m] = _per_sample(w, x) * x + (1 - _per_sample(w, x)) * x.flip(0)
        wt = w.to(target.dtype)
        targets[m] = _per_sample(wt, target) * target + (1 - _per_sample(wt, target)) * target.flip(0)
    return mixed, targets, mixed_mask


def _per_sample(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return weights.view((-1,) + (1,) * (like.dim() - 1))
