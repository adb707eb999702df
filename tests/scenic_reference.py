"""An independent NumPy implementation of the official scenic MBT forward pass (evaluation mode), written from the
fixture README (`shared/fixtures/scenic-mbt/README.md`) and the scenic source, not from `mbt.model`; plus what the
tests need to make official-format checkpoints: parameter trees with the official names and shapes, and a Flax
msgpack writer (ExtType 1 arrays in scenic's TrainState layout).

It is trusted because it reproduces the official saved outputs of fixture `a_bottleneck_fl2_nb4`
(tests/test_interop_scenic.py::test_numpy_reference_reproduces_the_official_outputs).

Computation in float64; channels-last convolutions; attention kernels (D, H, Dh); flax LayerNorm
(var = E[x^2] - E[x]^2, eps 1e-6); tanh GELU.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import msgpack
import numpy as np

MODALITIES = ("rgb", "spectrogram")  # scenic's _MODALITIES: the order of the context in vanilla fusion
EPS = 1e-6


# ==================================================================== layers
def layer_norm(x: np.ndarray, p: dict) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = np.maximum(0.0, (x * x).mean(-1, keepdims=True) - mean * mean)
    return (x - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def dense(x: np.ndarray, p: dict) -> np.ndarray:
    return x @ p["kernel"] + p["bias"]


def attention(x: np.ndarray, p: dict) -> np.ndarray:
    q, k, v = (np.einsum("bnd,dhk->bnhk", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
    q = q / np.sqrt(q.shape[-1])
    logits = np.einsum("bqhk,bshk->bhqs", q, k)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqs,bshk->bqhk", weights, v)
    return np.einsum("bqhk,hkd->bqd", out, p["out"]["kernel"]) + p["out"]["bias"]


def encoder_block(x: np.ndarray, p: dict) -> np.ndarray:
    x = x + attention(layer_norm(x, p["LayerNorm_0"]), p["MultiHeadDotProductAttention_0"])
    y = layer_norm(x, p["LayerNorm_1"])
    y = dense(gelu(dense(y, p["MlpBlock_0"]["Dense_0"])), p["MlpBlock_0"]["Dense_1"])
    return x + y


def patch_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """flax nn.Conv with stride == kernel size and VALID padding on channels-last input (B, *spatial, C)."""
    sizes = kernel.shape[:-2]
    n = len(sizes)
    counts = [x.shape[1 + i] // s for i, s in enumerate(sizes)]
    x = x[(slice(None),) + tuple(slice(0, c * s) for c, s in zip(counts, sizes))]
    split = [x.shape[0]] + [d for c, s in zip(counts, sizes) for d in (c, s)] + [x.shape[-1]]
    x = x.reshape(split)
    # (B, n1, k1, n2, k2, ..., C) -> (B, n1, n2, ..., k1, k2, ..., C)
    order = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [2 * n + 1]
    x = x.transpose(order)
    return np.tensordot(x, kernel, axes=n + 1) + bias


# ==================================================================== model
def mbt_forward(params: dict, inputs: dict[str, np.ndarray], *, fusion_layer: int,
                modality_fusion: tuple[str, ...] = ("spectrogram", "rgb"), share_encoder: bool = False,
                classifier: str = "token", n_sampled_frames: int | None = None,
                test_with_bottlenecks: bool = True) -> dict[str, Any]:
    """Official MBT.apply(train=False) on {"rgb": (B,T,H,W,3), "spectrogram": (B,time,mel,C)}.

    `use_bottleneck` follows from the tree (a `bottleneck` leaf), `representation_size` too (a `pre_logits` leaf:
    Dense + tanh before the head). `classifier` is 'token', 'gap', 'gmp' or 'gsp'. `n_sampled_frames` selects the
    official 'temporal_sampling' rgb encoding (2-D `embedding` kernel) instead of '3d_conv'.
    `test_with_bottlenecks=False` runs every layer of a bottleneck model unimodal (official `use_bottlenecks`).
    Returns the logits, the per-modality logits and prelogits, `encoded`, and intermediates keyed as the fixture's
    intermediates.npz.
    """
    p = _float64(params)
    calls: dict[str, int] = defaultdict(int)
    inter: dict[str, np.ndarray] = {}

    def record(name: str, value: np.ndarray) -> np.ndarray:
        inter[f"{name}/call{calls[name]}"] = value
        calls[name] += 1
        return value

    x: dict[str, np.ndarray] = {}
    for m in modality_fusion:
        data = np.asarray(inputs[m], np.float64)
        if m == "spectrogram":
            tokens = record("embedding_spectrogram", patch_conv(data, **_conv(p["embedding_spectrogram"])))
        elif n_sampled_frames is not None:
            tokens = record("embedding", patch_conv(_sample_frames(data, n_sampled_frames), **_conv(p["embedding"])))
        else:
            tokens = record("embedding", patch_conv(data, **_conv(p["embedding"])))
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
        if classifier == "token":
            name = "cls" if m == "rgb" or len(modality_fusion) == 1 else f"cls{m}"
            tokens = np.concatenate([np.broadcast_to(p[name], (tokens.shape[0], 1, tokens.shape[-1])), tokens], 1)
        x[m] = tokens
    t = p["Transformer"]
    for m in modality_fusion:
        name = "posembed_input" if m == "rgb" else f"posembed_input_{m}"
        x[m] = record(f"Transformer/{name}", x[m] + t[name]["pos_embedding"])

    def block(layer: int, m: str, tokens: np.ndarray) -> np.ndarray:
        name = f"encoderblock_{layer}" if m == "rgb" or share_encoder else f"encoderblock_{layer}_{m}"
        return record(f"Transformer/{name}", encoder_block(tokens, t[name]))

    use_bottleneck = "bottleneck" in p
    batch = next(iter(x.values())).shape[0]
    bottleneck = np.broadcast_to(p["bottleneck"], (batch,) + p["bottleneck"].shape[1:]) if use_bottleneck else None
    joint = None
    depth = len({k.split("_")[1] for k in t if k.startswith("encoderblock_")})
    for layer in range(depth):
        # official Encoder: `lyr < fusion_layer or len(modality_fusion) == 1 or (use_bottleneck and not
        # use_bottlenecks)` runs every modality alone
        if layer < fusion_layer or len(modality_fusion) == 1 or (use_bottleneck and not test_with_bottlenecks):
            x = {m: block(layer, m, x[m]) for m in modality_fusion}
        elif use_bottleneck:
            updates = []
            for m in modality_fusion:  # every modality reads the same bottleneck
                n = x[m].shape[1]
                out = block(layer, m, np.concatenate([x[m], bottleneck], 1))
                x[m] = out[:, :n]
                updates.append(out[:, n:])
            bottleneck = np.mean(np.stack(updates, -1), -1)
        elif not share_encoder:
            new = {}
            for m in modality_fusion:  # block over [context in scenic's _MODALITIES order; own], keep own
                context = [x[o] for o in MODALITIES if o != m and o in modality_fusion]
                new[m] = block(layer, m, np.concatenate(context + [x[m]], 1))[:, -x[m].shape[1]:]
            x = new
        else:
            if joint is None:
                joint = np.concatenate([x[m] for m in modality_fusion], 1)
            joint = record(f"Transformer/encoderblock_{layer}", encoder_block(joint, t[f"encoderblock_{layer}"]))
    if joint is None:
        joint = np.concatenate([x[m] for m in modality_fusion], 1)
    encoded = record("Transformer/encoder_norm", layer_norm(joint, t["encoder_norm"]))

    out: dict[str, Any] = {"encoded": encoded, "intermediates": inter}

    def pre_logits(features: np.ndarray) -> np.ndarray:  # official: Dense + tanh only with representation_size
        return np.tanh(dense(features, p["pre_logits"])) if "pre_logits" in p else features

    if classifier == "token":
        start, logits = 0, []
        for m in modality_fusion:
            out[f"prelogits_{m}"] = pre_logits(encoded[:, start])
            out[f"logits_{m}"] = dense(out[f"prelogits_{m}"], p["output_projection"])
            logits.append(out[f"logits_{m}"])
            start += x[m].shape[1]
        out["logits"] = sum(logits) / len(logits)
    else:
        pooled = {"gap": np.mean, "gmp": np.max, "gsp": np.sum}[classifier](encoded, axis=1)
        out["prelogits"] = pre_logits(pooled)
        out["logits"] = dense(out["prelogits"], p["output_projection"])
    return out


def _conv(p: dict) -> dict:
    return {"kernel": p["kernel"], "bias": p["bias"]}


def _sample_frames(rgb: np.ndarray, n: int) -> np.ndarray:
    """scenic 'temporal_sampling': n frames num_frames/(n+1) apart, stacked along the height axis."""
    b, t, h, w, c = rgb.shape
    start, step = (t / (n + 1), t / (n + 1)) if n < t else (0, 1)
    idx = np.minimum(np.round(np.arange(start, t, step)).astype(int), t - 1)
    frames = rgb[:, idx]
    return frames.reshape(b, len(idx) * h, w, c)


def _float64(tree: dict) -> dict:
    return {k: _float64(v) if isinstance(v, dict) else np.asarray(v, np.float64) for k, v in tree.items()}


# ==================================================================== official parameter trees
def official_tree(rng: np.random.Generator, *, modalities: tuple[str, ...] = ("spectrogram", "rgb"), depth: int = 4,
                  width: int = 64, heads: int = 4, mlp: int = 128, classes: int = 7, bottleneck_tokens: int = 0,
                  share_encoder: bool = False, classifier: str = "token", rgb_tokens: int = 8,
                  spec_tokens: int = 8, patch: tuple[int, int, int] = (16, 16, 2), rgb_2d: bool = False,
                  representation_size: int | None = None, scale: float = 0.1) -> dict:
    """A parameter tree with the official names and shapes, random float32 values of unit-ish activations."""

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm() -> dict:
        return {"bias": normal(width), "scale": (1.0 + normal(width)).astype(np.float32)}

    def block() -> dict:
        attn = {n: {"bias": normal(heads, width // heads), "kernel": normal(width, heads, width // heads)}
                for n in ("key", "query", "value")}
        attn["out"] = {"bias": normal(width), "kernel": normal(heads, width // heads, width)}
        return {"LayerNorm_0": norm(), "LayerNorm_1": norm(),
                "MlpBlock_0": {"Dense_0": {"bias": normal(mlp), "kernel": normal(width, mlp)},
                               "Dense_1": {"bias": normal(width), "kernel": normal(mlp, width)}},
                "MultiHeadDotProductAttention_0": attn}

    fh, fw, ft = patch
    cls = 1 if classifier == "token" else 0
    transformer: dict[str, Any] = {"encoder_norm": norm()}
    head_in = representation_size or width
    tree: dict[str, Any] = {"Transformer": transformer,
                            "output_projection": {"bias": normal(classes), "kernel": normal(head_in, classes)}}
    if representation_size:
        tree["pre_logits"] = {"bias": normal(representation_size), "kernel": normal(width, representation_size)}
    for layer in range(depth):
        if "rgb" in modalities or share_encoder:
            transformer[f"encoderblock_{layer}"] = block()
        if "spectrogram" in modalities and not share_encoder:
            transformer[f"encoderblock_{layer}_spectrogram"] = block()
    if "rgb" in modalities:
        kernel = normal(fh, fw, 3, width) if rgb_2d else normal(ft, fh, fw, 3, width)
        tree["embedding"] = {"bias": normal(width), "kernel": kernel}
        transformer["posembed_input"] = {"pos_embedding": normal(1, cls + rgb_tokens, width)}
    if "spectrogram" in modalities:
        tree["embedding_spectrogram"] = {"bias": normal(width), "kernel": normal(fh, fw, 3, width)}
        transformer["posembed_input_spectrogram"] = {"pos_embedding": normal(1, cls + spec_tokens, width)}
    if cls:
        tree["cls"] = normal(1, 1, width)
        if len(modalities) > 1:
            tree["clsspectrogram"] = normal(1, 1, width)
    if bottleneck_tokens:
        tree["bottleneck"] = normal(1, bottleneck_tokens, width)
    return _sorted(tree)


def _sorted(tree: dict) -> dict:
    # jit/pmap rebuild dicts in sorted key order: that is the order in a real checkpoint
    return {k: _sorted(tree[k]) if isinstance(tree[k], dict) else tree[k] for k in sorted(tree)}


# ==================================================================== Flax msgpack writer
def _ext(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _ext(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        payload = msgpack.packb([list(value.shape), value.dtype.name, np.ascontiguousarray(value).tobytes()],
                                use_bin_type=True)
        return msgpack.ExtType(1, payload)
    return value


def flax_bytes(state: dict) -> bytes:
    """`flax.serialization.to_bytes` of a state made of dicts and NumPy arrays."""
    return msgpack.packb(_ext(state), use_bin_type=True)


def train_state(params: dict) -> dict:
    """scenic's TrainState as save_checkpoint writes it: params in optimizer.target, zero momentum beside."""
    def momentum(tree: dict) -> dict:
        return {k: momentum(v) if isinstance(v, dict) else {"momentum": np.zeros_like(v)} for k, v in tree.items()}

    zero = np.zeros((), np.int32)
    return {"global_step": zero, "optimizer": {"target": params, "state": {"step": zero,
                                                                           "param_states": momentum(params)}},
            "model_state": {}, "rng": np.array([1353695780, 2116000888], np.uint32), "accum_train_time": zero}
