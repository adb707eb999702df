"""Samplers, losses, mixup and the schedule: the pieces the training loop wires together."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from mbt.config import MBTConfig
from mbt.engine import distributed as D
from mbt.engine.losses import classification_loss, dense_targets, mbt_loss
from mbt.engine.mixup import mixup
from mbt.engine.schedule import warmup_cosine
from mbt.model import MBTOutput


def test_shards_cover_every_index_once_per_epoch_and_are_reproducible():
    ranks = [D.DistInfo(rank=r, world_size=3) for r in range(3)]
    shards = [D.shard_indices(10, epoch=4, seed=1, info=info, shuffle=True) for info in ranks]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    assert set().union(*map(set, shards)) == set(range(10))
    assert shards == [D.shard_indices(10, 4, 1, info, shuffle=True) for info in ranks]
    assert shards[0] != D.shard_indices(10, 5, 1, ranks[0], shuffle=True)  # a new order each epoch
    single = D.shard_indices(12, 0, 1, D.DistInfo(), shuffle=True)
    two = [D.shard_indices(12, 0, 1, D.DistInfo(rank=r, world_size=2), shuffle=True) for r in range(2)]
    assert sorted(single[:4]) == sorted(two[0][:2] + two[1][:2])  # the same global batch of 4


def test_evaluation_shards_never_pad_or_repeat():
    shards = [D.eval_indices(7, D.DistInfo(rank=r, world_size=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(7))


def test_balanced_sampler_evens_out_label_skew():
    labels = [("speech",)] * 90 + [("dog",)] * 9 + [("siren",)]
    weights = D.balanced_weights(labels)
    drawn = Counter(labels[i][0] for epoch in range(20)
                    for i in D.shard_indices(100, epoch, 0, D.DistInfo(), shuffle=True, weights=weights))
    assert max(drawn.values()) / min(drawn.values()) < 1.5  # raw data: 90 to 1
    assert D.shard_indices(100, 3, 0, D.DistInfo(), shuffle=True, weights=weights) == \
        D.shard_indices(100, 3, 0, D.DistInfo(), shuffle=True, weights=weights)


def test_losses_match_their_definitions():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    single = MBTConfig.preset("mbt-tiny", num_classes=3)
    target = dense_targets(torch.tensor([0, 1]), single)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]), label_smoothing=0.3)
    assert classification_loss(logits, target, single, 0.3) == pytest.approx(expected.item(), rel=1e-6)

    multi = MBTConfig.preset("mbt-tiny", num_classes=3, multi_label=True)
    hot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    smoothed = hot * 0.7 + 0.1  # y (1 - ls) + ls / C, official
    bce = -(smoothed * torch.log(torch.sigmoid(logits)) + (1 - smoothed) * torch.log(1 - torch.sigmoid(logits)))
    assert classification_loss(logits, dense_targets(hot, multi), multi, 0.3) == \
        pytest.approx(bce.sum(1).mean().item(), rel=1e-5)  # summed over classes, averaged over clips

    epic = MBTConfig.preset("mbt-tiny", num_classes=5, class_splits=(2, 3))
    logits5 = torch.randn(2, 5)
    split_target = torch.tensor([[1, 2], [0, 0]])
    expected = (torch.nn.functional.cross_entropy(logits5[:, :2], split_target[:, 0])
                + torch.nn.functional.cross_entropy(logits5[:, 2:], split_target[:, 1])) / 2
    assert classification_loss(logits5, dense_targets(split_target, epic), epic) == pytest.approx(expected.item())


def test_token_classifier_loss_is_the_mean_of_the_modality_losses():
    cfg = MBTConfig.preset("mbt-tiny", num_classes=3)
    a, v = torch.randn(4, 3), torch.randn(4, 3)
    target = dense_targets(torch.tensor([0, 1, 2, 0]), cfg)
    out = MBTOutput((a + v) / 2, {"audio": a, "video": v})
    expected = (classification_loss(a, target, cfg) + classification_loss(v, target, cfg)) / 2
    assert mbt_loss(out, target, cfg) == pytest.approx(expected.item())


def test_mixup_pairs_each_example_with_the_reversed_batch():
    x = {"video": torch.arange(4.0).view(4, 1), "audio": torch.arange(4.0).view(4, 1) * 10}
    target = torch.eye(4)
    mixed, targets, _ = mixup(x, target, 0.5, per_modality=False, generator=torch.Generator().manual_seed(0))
    w = targets["video"][0, 0].item()
    assert 0 < w < 1 and torch.allclose(mixed["video"][:, 0], w * torch.arange(4.0) + (1 - w) * torch.arange(3.0, -1, -1))
    assert torch.equal(targets["video"], targets["audio"])  # one weight for both modalities
    _, own, _ = mixup(x, target, 0.5, per_modality=True, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(own["video"], own["audio"])  # official `mixmod`: a weight per modality
    same, untouched, _ = mixup(x, target, 0.0, per_modality=False, generator=torch.Generator())
    assert same is x and torch.equal(untouched["audio"], target)


def test_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
