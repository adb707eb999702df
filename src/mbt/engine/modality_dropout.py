"""Modality dropout (`train.modality_dropout`, beyond the paper): a fraction of the training samples lose one whole
stream, through the model's modality mask, so that a model stays good when a clip lacks its audio or its picture.

The draw of a sample is a function of (seed, epoch, manifest row) only, like its augmentation, so a resumed run
drops exactly the streams the uninterrupted run dropped, with any batch size, number of processes or workers.
One uniform number per sample decides: stream m (in modality order) is dropped when it falls in m's slice of
[0, 1), so the fractions are exact and a sample loses at most one stream. A stream is never dropped from a sample
that has no other stream left.
"""

from __future__ import annotations

import numpy as np
import torch

# Mixed into the seed so that these draws are unrelated to the same item's augmentation draws.
_STREAM_TAG = 0x6D6F64  # "mod"


def sample_draw(seed: int, epoch: int, row: int) -> float:
    """The uniform number in [0, 1) of one training sample in one epoch."""
    return float(np.random.default_rng(np.random.SeedSequence([seed, epoch, row, _STREAM_TAG])).random())


def drop_modalities(rates: dict[str, float], rows: torch.Tensor, *, epoch: int, seed: int,
                    streams: tuple[str, ...], mask: dict[str, torch.Tensor] | None = None,
                    ) -> dict[str, torch.Tensor] | None:
    """The batch's modality mask after dropout: `mask` (the samples' own missing streams, or None) with the dropped
    streams set False. `rows` are the batch's manifest rows, `streams` the batch's streams in modality order."""
    if not any(rates.get(m, 0.0) for m in streams):
        return mask
    draws = torch.tensor([sample_draw(seed, epoch, row) for row in rows.tolist()], dtype=torch.float64)
    present = {m: (mask[m].cpu() if mask and m in mask else torch.ones(len(draws), dtype=torch.bool))
               for m in streams}
    low = 0.0
    dropped = {}
    for m in streams:
        high = low + rates.get(m, 0.0)
        dropped[m] = (draws >= low) & (draws < high)
        low = high
    out = dict(mask or {})
    for m in streams:
        others = torch.stack([present[n] for n in streams if n != m]).any(dim=0)
        drop = dropped[m] & others  # never a sample's last stream
        if drop.any() or m in out:
            device = mask[m].device if mask and m in mask else rows.device
            out[m] = (present[m] & ~drop).to(device)
    return out or None
