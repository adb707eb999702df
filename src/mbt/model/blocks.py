"""Transformer building blocks with the official (Flax) numerics: LayerNorm eps 1e-6, tanh-approximate GELU,
pre-LN residual blocks, and stochastic depth without the 1/(1-p) rescaling unless asked for."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYERNORM_EPS = 1e-6  # Flax's default; PyTorch's 1e-5 moves the official logits by ~1e-3


def layer_norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=LAYERNORM_EPS)


class DropPath(nn.Module):
    """Per-example stochastic depth of a residual branch.

    The official code computes `x * (1 - drop) + inputs`: a kept branch is *not* rescaled by 1/(1-p). timm's
    DropPath rescales; `rescale=True` gives that behaviour instead.
    """

    def __init__(self, rate: float = 0.0, rescale: bool = False):
        super().__init__()
        self.rate = rate
        self.rescale = rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        keep.bernoulli_(1.0 - self.rate)
        if self.rescale:
            keep.div_(1.0 - self.rate)
        return x * keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}, rescale={self.rescale}"


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")  # flax nn.gelu defaults to the tanh approximation
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class AttentionProbe(nn.Identity):
    """Passes attention probabilities (batch, heads, queries, keys) through unchanged: a place to hook them
    (timm's `attn_drop` + `AttentionExtract`, vit-pytorch's `Recorder`) without state on the attention module."""


class Attention(nn.Module):
    """Multi-head attention whose queries are `x` and whose keys/values are `[x; context]`.

    With `context=None` it is plain self-attention. Vanilla fusion with separate weights passes the other streams'
    (already normalised) tokens as context: only their keys and values are computed, with this stream's weights —
    the official outputs without running this stream's whole block over the other streams' tokens.
    """

    def __init__(self, width: int, num_heads: int, attention_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.qkv = nn.Linear(width, 3 * width)  # [q; k; v] rows, heads contiguous within each (as flax (H, Dh))
        self.proj = nn.Linear(width, width)
        self.attention_dropout = attention_dropout
        self.proj_drop = nn.Dropout(dropout)
        # False: the explicit softmax(QK^T / sqrt(d)) path, whose probabilities pass through `probe` (analysis hooks
        # it); True: the fused kernel, which never forms them.
        self.fused = True
        self.probe = AttentionProbe()

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`key_mask` (B, keys) bool over [x; context]: False keys are left out of every query's softmax (a stream
        missing from a sample, see `MBT.forward(modality_mask=...)`)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        if context is not None:
            kv_context = F.linear(context, self.qkv.weight[d:], self.qkv.bias[d:])
            k_context, v_context = kv_context.split(d, dim=-1)
            k = torch.cat([k, k_context], dim=1)
            v = torch.cat([v, v_context], dim=1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        dropout = self.attention_dropout if self.training else 0.0
        mask = None if key_mask is None else key_mask[:, None, None, :]  # broadcast over heads and queries
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            probs = self.probe(torch.softmax(scores, dim=-1))
            out = F.dropout(probs, dropout) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    """Pre-LN transformer block: x + MHA(LN0(x)), then + MLP(LN1(x)).

    `context` (other streams' tokens) goes through this block's first LayerNorm and key/value projections only.
    """

    def __init__(self, width: int, num_heads: int, mlp_dim: int, *, drop_path: float = 0.0,
                 drop_path_rescale: bool = False, dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        self.norm1 = layer_norm(width)
        self.attn = Attention(width, num_heads, attention_dropout, dropout)
        self.norm2 = layer_norm(width)
        self.mlp = Mlp(width, mlp_dim, dropout)
        # Official: independent per-example masks for the attention and the MLP branch.
        self.drop_path1 = DropPath(drop_path, drop_path_rescale)
        self.drop_path2 = DropPath(drop_path, drop_path_rescale)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        normed_context = None if context is None else self.norm1(context)
        x = x + self.drop_path1(self.attn(self.norm1(x), normed_context, key_mask))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
