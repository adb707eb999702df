"""Flax (scenic, big_vision, vit_jax) weight layouts -> PyTorch, shared by the scenic and ViT converters: a pool of
leaves each used exactly once, one encoder block's leaves as our `Block` state dict, and a checked copy into a
model."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from mbt.interop.msgpack_tree import CheckpointError
from mbt.model import MBT


class LeafPool:
    """The leaves of a weight file, each to be used exactly once: a missing leaf and a leaf left over are errors
    that name it."""

    def __init__(self, leaves: dict[str, np.ndarray], source: str):
        self.leaves = dict(leaves)
        self.source = source
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.leaves

    def take(self, key: str) -> np.ndarray:
        if key not in self.leaves:
            raise CheckpointError(f"{self.source}: missing leaf {key}")
        if key in self.used:
            raise CheckpointError(f"{self.source}: leaf {key} would be used twice")
        self.used.add(key)
        return self.leaves[key]

    def unused(self) -> list[str]:
        return sorted(set(self.leaves) - self.used)


def dense_weight(kernel: np.ndarray) -> np.ndarray:
    """Flax Dense kernel (in, out) -> torch Linear weight (out, in)."""
    return kernel.T


def flax_block(take: Callable[[str], np.ndarray], prefix: str, *, attention: str = "MultiHeadDotProductAttention_0",
               norms: tuple[str, str] = ("LayerNorm_0", "LayerNorm_1"), mlp: str = "MlpBlock_0") -> dict[str, np.ndarray]:
    """One Flax encoder block -> our `Block` state dict (names as timm's).

    scenic and big_vision name the sub-modules MultiHeadDotProductAttention_0 / LayerNorm_1 / MlpBlock_0; the
    original vit_jax checkpoints MultiHeadDotProductAttention_1 / LayerNorm_2 / MlpBlock_3.
    Attention kernels (D, H, Dh) become (H*Dh, D) rows, head h in rows h*Dh:(h+1)*Dh as our head split expects.
    """
    a = f"{prefix}/{attention}"
    qkv = [take(f"{a}/{n}/kernel") for n in ("query", "key", "value")]
    out = take(f"{a}/out/kernel")  # (H, Dh, D)
    return {
        "norm1.weight": take(f"{prefix}/{norms[0]}/scale"),
        "norm1.bias": take(f"{prefix}/{norms[0]}/bias"),
        "attn.qkv.weight": np.concatenate([k.reshape(k.shape[0], -1).T for k in qkv]),
        "attn.qkv.bias": np.concatenate([take(f"{a}/{n}/bias").reshape(-1) for n in ("query", "key", "value")]),
        "attn.proj.weight": out.reshape(-1, out.shape[-1]).T,
        "attn.proj.bias": take(f"{a}/out/bias"),
        "norm2.weight": take(f"{prefix}/{norms[1]}/scale"),
        "norm2.bias": take(f"{prefix}/{norms[1]}/bias"),
        "mlp.fc1.weight": dense_weight(take(f"{prefix}/{mlp}/Dense_0/kernel")),
        "mlp.fc1.bias": take(f"{prefix}/{mlp}/Dense_0/bias"),
        "mlp.fc2.weight": dense_weight(take(f"{prefix}/{mlp}/Dense_1/kernel")),
        "mlp.fc2.bias": take(f"{prefix}/{mlp}/Dense_1/bias"),
    }


def load_into(model: MBT, state: dict[str, np.ndarray | torch.Tensor], source: str,
              origins: dict[str, str] | None = None) -> None:
    """Copy `state` into `model` (a subset of its parameters), checking names, shapes and float32."""
    own = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            where = f"{source}: {origins[key]} -> {key}" if origins and key in origins else f"{source}: {key}"
            if key not in own:
                raise CheckpointError(f"{where}: the model has no parameter {key}")
            tensor = torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value
            if tuple(tensor.shape) != tuple(own[key].shape):
                raise CheckpointError(f"{where}: shape {tuple(tensor.shape)} does not fit the model's "
                                      f"{tuple(own[key].shape)}")
            if tensor.dtype != torch.float32:
                raise CheckpointError(f"{where}: dtype {tensor.dtype}, expected float32")
            if not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"{where}: {int((~torch.isfinite(tensor)).sum())} non-finite value(s): "
                                      "the weight file is damaged")
            own[key].copy_(tensor)


def squarest_split(n: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n, rows <= cols and as close as possible: 4 -> 2x2, 6 -> 2x3, 7 -> 1x7."""
    rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return rows, n // rows
