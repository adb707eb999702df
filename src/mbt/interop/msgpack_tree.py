"""Read Flax msgpack checkpoints (`flax.serialization.to_bytes`, as scenic's `save_checkpoint` writes them) with
`msgpack` and NumPy only: no JAX, no pickle.

Flax stores every array as msgpack extension type 1 whose payload is `packb([shape, dtype_name, raw_bytes])`
(C order, little endian); type 3 is a NumPy scalar with the same payload; arrays over 2**30 bytes are split into
`{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {...}}` (tuples become dicts keyed "0", "1", ...).
"""

from __future__ import annotations

import lzma
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

XZ_MAGIC = b"\xfd7zXZ\x00"
_ARRAY, _NATIVE_COMPLEX, _SCALAR = 1, 2, 3
_CHUNKED = "__msgpack_chunked_array__"


class CheckpointError(ValueError):
    """A checkpoint or weight file that cannot be converted; the message names the file and the leaf."""


class UnsupportedLeaf:
    """An array whose dtype NumPy cannot represent (e.g. bfloat16 without ml_dtypes), kept so that the error can
    name the leaf's path once the tree is walked."""

    def __init__(self, dtype: str, shape: tuple[int, ...]):
        self.dtype, self.shape = dtype, shape

    def __repr__(self) -> str:
        return f"UnsupportedLeaf(dtype={self.dtype!r}, shape={self.shape})"


def _ext_hook(code: int, data: bytes) -> Any:
    if code in (_ARRAY, _SCALAR):
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
        name = dtype_name.decode()
        try:
            dtype = np.dtype(name)
        except TypeError:
            return UnsupportedLeaf(name, tuple(shape))
        array = np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(shape)
        return array if code == _ARRAY else array[()]
    if code == _NATIVE_COMPLEX:
        real, imag = msgpack.unpackb(data, raw=True)
        return complex(real, imag)
    return msgpack.ExtType(code, data)


def _unchunk(tree: Any) -> Any:
    if isinstance(tree, dict):
        if tree.get(_CHUNKED) is True:
            shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
            chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
            return np.concatenate(chunks).reshape(shape)
        return {k: _unchunk(v) for k, v in tree.items()}
    return tree


def checkpoint_bytes(path: str | Path) -> bytes:
    """The msgpack bytes of a checkpoint file, decompressed if it is xz (the bytes Flax wrote)."""
    raw = Path(path).read_bytes()
    if raw[:6] == XZ_MAGIC:
        try:
            raw = lzma.decompress(raw)
        except lzma.LZMAError as e:
            raise CheckpointError(f"{path}: damaged xz file ({e})") from None
    return raw


def unpack_state(raw: bytes, source: str = "checkpoint") -> Any:
    """A Flax msgpack state as nested dicts of arrays (read-only views of `raw`: copy before handing to torch)."""
    try:
        state = msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as e:
        raise CheckpointError(f"{source}: not a Flax msgpack checkpoint ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: expected a msgpack map at the top level, got {type(state).__name__}")
    return _unchunk(state)


def read_msgpack(path: str | Path) -> Any:
    """The whole serialized state of a Flax msgpack file (xz-compressed or not) as nested dicts of arrays."""
    return unpack_state(checkpoint_bytes(path), str(path))


def params_subtree(state: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """The parameters inside a saved state, as scenic's `restore_pretrained_checkpoint` finds them:
    `optimizer.target` (flax.optim TrainState), else `params` (optax-era TrainState), else the tree itself.
    A lone `params` key left over (pre-Linen / `{"params": ...}` variables) is unwrapped too."""
    tree: Any = state
    if isinstance(tree.get("optimizer"), dict) and "target" in tree["optimizer"]:
        tree = tree["optimizer"]["target"]
    elif isinstance(tree.get("params"), dict):
        tree = tree["params"]
    while isinstance(tree, dict) and set(tree) == {"params"} and isinstance(tree["params"], dict):
        tree = tree["params"]
    if not isinstance(tree, dict) or not tree:
        raise CheckpointError(f"{source}: no parameter tree found (looked for optimizer.target, params, or a "
                              "bare tree)")
    return tree


def flatten(tree: dict[str, Any], source: str = "checkpoint", prefix: str = "") -> dict[str, np.ndarray]:
    """`{"a": {"b": x}}` -> `{"a/b": x}`; every leaf must be a NumPy array (a leaf of another kind is an error
    naming its path)."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, source, f"{path}/"))
        elif isinstance(value, np.ndarray):
            flat[path] = value
        elif isinstance(value, UnsupportedLeaf):
            raise CheckpointError(f"{source}: leaf {path} has dtype {value.dtype}, which NumPy cannot read; "
                                  "expected float32")
        else:
            raise CheckpointError(f"{source}: leaf {path} is a {type(value).__name__}, not an array")
    return flat


def load_flax_params(path: str | Path) -> dict[str, np.ndarray]:
    """The flattened parameter tree (`"Transformer/encoder_norm/scale"` -> array) of a Flax msgpack file."""
    return flatten(params_subtree(read_msgpack(path), str(path)), str(path))
