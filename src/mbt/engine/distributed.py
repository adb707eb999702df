"""Processes started by torchrun (one node or many, the same command): set-up, samplers, gathering.

Samplers are pure functions of (seed, epoch): resuming needs only the epoch and the number of batches done, and
every rank computes the same permutation without talking to the others.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed() -> DistInfo:
    """Reads torchrun's environment; gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, device)


def shard_indices(num_items: int, epoch: int, seed: int, info: DistInfo, *, shuffle: bool,
                  weights: torch.Tensor | None = None) -> list[int]:
    """This rank's training indices for an epoch: the same global order on every rank, padded by wrapping so that
    every rank takes the same number of steps, then strided over ranks."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if weights is not None:
        order = torch.multinomial(weights, num_items, replacement=True, generator=g).tolist()
    elif shuffle:
        order = torch.randperm(num_items, generator=g).tolist()
    else:
        order = list(range(num_items))
    per_rank = -(-num_items // info.world_size)
    order += order[: per_rank * info.world_size - num_items]
    return order[info.rank:: info.world_size]


def balanced_weights(label_lists: list[tuple[str, ...]]) -> torch.Tensor:
    """Per-example sampling weights for label-skewed sets (AudioSet): each clip weighs as its rarest label,
    1 / frequency, so rare classes are seen about as often as frequent ones."""
    counts = Counter(label for labels in label_lists for label in labels)
    weights = [max((1.0 / counts[label] for label in labels), default=0.0) for labels in label_lists]
    return torch.tensor(weights, dtype=torch.double)


def eval_indices(num_items: int, info: DistInfo) -> list[int]:
    """Evaluation shard: strided, no padding, so every item is evaluated exactly once over all ranks."""
    return list(range(info.rank, num_items, info.world_size))


def gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)  # NCCL reduces device tensors only
    dist.all_reduce(t)
    return float(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def clip_gradients(model: torch.nn.Module, max_norm: float, scope: str, info: DistInfo) -> float | None:
    """Clip (max_norm > 0) and, where the gradients are still per process, average them; returns the gradient
    norm before clipping (with 'process': the mean over the processes of each one's own norm).

    'global': the gradients are already averaged (DDP's all-reduce in the backward pass): clip their norm.
    'process': the backward ran without DDP's all-reduce (no_sync); each process clips its own gradient, then the
    gradients are averaged, as the official trainer clips per device before `pmean`.
    """
    if scope not in ("global", "process"):
        raise ValueError(f"train.grad_clip_scope must be 'global' or 'process', got {scope!r}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm) if max_norm > 0 else None
    if scope == "process" and info.enabled:
        average_gradients(model, info)
        if norm is not None:
            return all_reduce_sum(float(norm), info) / info.world_size
    return None if norm is None else float(norm)


def average_gradients(model: torch.nn.Module, info: DistInfo, bucket_bytes: int = 25 * 2**20) -> None:
    """All-reduce (mean) the gradients DDP did not: those accumulated under `no_sync` (grad_clip_scope 'process',
    or a window whose synchronising micro-batch every process skipped). In flattened buckets of about
    `bucket_bytes` (DDP's default bucket size): a few large all-reduces, no copy of the whole gradient at once."""
    if not info.enabled:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    buckets: list[list[torch.Tensor]] = [[]]
    size = 0
    for grad in (p.grad for p in model.parameters() if p.grad is not None):
        if buckets[-1] and (size >= bucket_bytes or grad.dtype != buckets[-1][0].dtype
                            or grad.device != buckets[-1][0].device):
            buckets.append([])
            size = 0
        buckets[-1].append(grad)
        size += grad.numel() * grad.element_size()
    for bucket in (b for b in buckets if b):
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat)
        flat.div_(info.world_size)
        for grad, averaged in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            grad.copy_(averaged)
