"""Mixup as the official train step: one Beta(alpha, alpha) weight per batch, each example paired with the
reversed batch; the same weight for every modality, or one per modality (official `mixmod`)."""

from __future__ import annotations

import numpy as np
import torch


def mixup(inputs: dict[str, torch.Tensor], target: torch.Tensor, alpha: float, *, per_modality: bool,
          generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Returns mixed inputs and the matching soft targets per modality. `generator` makes it resumable."""
    if alpha <= 0:
        return inputs, {m: target for m in inputs}
    # numpy draws the Beta sample, seeded from the explicit torch generator (torch's Beta uses the global RNG)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    weight = float(rng.beta(alpha, alpha))
    mixed, targets = {}, {}
    for m, x in inputs.items():
        if per_modality and mixed:
            weight = float(rng.beta(alpha, alpha))
        mixed[m] = weight * x + (1 - weight) * x.flip(0)
        targets[m] = weight * target + (1 - weight) * target.flip(0)
    return mixed, targets
