"""Official scenic MBT checkpoints: the msgpack reader, the NumPy reference, every variant converted to the
official numbers (layer by layer), bad trees named, round trips and the `mbt convert scenic` command."""

from __future__ import annotations

import hashlib
import json
import lzma
from collections import defaultdict
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

import scenic_reference as ref
from mbt import MBT, ConfigError
from mbt.cli import main
from mbt.interop.msgpack_tree import CheckpointError, load_flax_params, read_msgpack
from mbt.interop.scenic import convert_scenic, load_scenic, overrides_from_scenic_config
from mbt.model import fusion as fusion_module

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "scenic-mbt"
VARIANT_A = FIXTURES / "a_bottleneck_fl2_nb4"
needs_fixture = pytest.mark.skipif(not VARIANT_A.is_dir(), reason=f"official MBT fixtures not found at {FIXTURES} "
                                                                  "(expected shared/ beside the repository)")
OFFICIAL_NAME = {"video": "rgb", "audio": "spectrogram"}
# The fixture's input sizes: 4 frames of 32^2 (2 x 2 x 2 tubelets), a 64 x 32 spectrogram (4 x 2 patches).
SIZES = dict(num_frames=4, image_size=32, spec_frames=64, num_mel_bins=32)
LOGITS_ATOL, FEATURES_ATOL = 1e-5, 1e-4  # the README's tolerances (an erf GELU moves the logits by 3.5e-5)


@pytest.fixture(autouse=True)
def highest_precision():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


def random_inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.uniform(-1, 1, (2, 4, 32, 32, 3)).astype(np.float32)
    return rgb, rng.standard_normal((2, 64, 32)).astype(np.float32)


def ours(rgb: np.ndarray, mono: np.ndarray) -> dict[str, torch.Tensor]:
    return {"video": torch.from_numpy(rgb).permute(0, 4, 1, 2, 3), "audio": torch.from_numpy(mono)}


def theirs(rgb: np.ndarray, mono: np.ndarray) -> dict[str, np.ndarray]:
    return {"rgb": rgb, "spectrogram": np.repeat(mono[..., None], 3, -1)}  # the scenic pipeline tiles to 3 channels


def max_diff(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    assert a.shape == b.shape, f"shape {a.shape} vs official {b.shape}"
    return float(np.abs(a.astype(np.float64) - b).max())


def check_against_official(model: MBT, x: dict[str, torch.Tensor], official: dict) -> None:
    """Logits, per-modality logits and prelogits, `encoded`, and every intermediate in the order the official
    forward computes them; a failure names the first one that diverges."""
    cfg = model.config
    present = [m for m in cfg.modalities if m in x]
    checks = []  # (name, ours, official, atol), in computation order
    with torch.no_grad():
        for m in present:
            name = "embedding" if m == "video" else "embedding_spectrogram"
            conv = official["intermediates"][f"{name}/call0"]
            checks.append((name, model.tokenizers[m](x[m]), conv.reshape(conv.shape[0], -1, conv.shape[-1]),
                           FEATURES_ATOL))
        tokens = {m: model.embed(m, x[m]) for m in present}
        for m in present:
            name = "Transformer/posembed_input" + ("_spectrogram" if m == "audio" else "")
            checks.append((name, tokens[m], official["intermediates"][f"{name}/call0"], FEATURES_ATOL))
        layers = []
        out = model.encoder(tokens, capture=lambda layer, kind, t, b: layers.append(
            (layer, kind, {m: v.clone() for m, v in t.items()}, None if b is None else b.clone())))
        checks += layer_checks(layers, official["intermediates"], cfg.share_weights)
        encoded = model.norm(torch.cat([out[m] for m in present], dim=1))
        checks.append(("encoded", encoded, official["encoded"], FEATURES_ATOL))
        result = model(**x)
    if cfg.classifier == "token":
        for m in present:
            checks.append((f"prelogits_{OFFICIAL_NAME[m]}", result.features[m],
                           official[f"prelogits_{OFFICIAL_NAME[m]}"], FEATURES_ATOL))
            checks.append((f"logits_{OFFICIAL_NAME[m]}", result.modality_logits[m],
                           official[f"logits_{OFFICIAL_NAME[m]}"], LOGITS_ATOL))
    elif "prelogits" in official:  # a pooling classifier: the pooled (and pre-logits) features
        checks.append(("prelogits", result.features["all"], official["prelogits"], FEATURES_ATOL))
    checks.append(("logits", result.logits, official["logits"], LOGITS_ATOL))
    for name, a, b, atol in checks:
        if tuple(a.shape) != b.shape:
            pytest.fail(f"first divergence from the official forward: {name} (shape {tuple(a.shape)}, official "
                        f"{b.shape})")
        diff = max_diff(a, b)
        if diff > atol:
            pytest.fail(f"first divergence from the official forward: {name} (max |Δ| {diff:.2e} > {atol})")


def layer_checks(layers: list, official: dict[str, np.ndarray], share: bool) -> list:
    """Our per-layer tokens and bottleneck next to the official EncoderBlock outputs (see the fixture README)."""
    calls: dict[str, int] = defaultdict(int)

    def call(name: str) -> np.ndarray:
        key = f"Transformer/{name}/call{calls[name]}"
        calls[name] += 1
        # a call the official forward never made: a different schedule, reported where it happens
        return official.get(key, np.full((0, 0, 0), np.nan))

    checks = []
    for layer, kind, tokens, bottleneck in layers:
        if kind == "joint":  # one block over [spectrogram; rgb]
            joint, start = call(f"encoderblock_{layer}"), 0
            for m, t in tokens.items():
                checks.append((f"encoderblock_{layer} ({m} rows)", t, joint[:, start:start + t.shape[1]],
                               FEATURES_ATOL))
                start += t.shape[1]
            continue
        updates = []
        for m, t in tokens.items():  # ("audio", "video"): the official modality_fusion order
            name = f"encoderblock_{layer}" + ("_spectrogram" if m == "audio" and not share else "")
            block_out, n = call(name), t.shape[1]
            if kind == "bottleneck" and block_out.size:
                updates.append(block_out[:, n:])
                block_out = block_out[:, :n]
            elif kind == "cross":  # the block ran over [other modality; own] and kept its own rows
                block_out = block_out[:, -n:]
            checks.append((f"{name} ({kind})", t, block_out, FEATURES_ATOL))
        if len(updates) == len(tokens) and kind == "bottleneck":
            checks.append((f"bottleneck after layer {layer}", bottleneck, np.mean(np.stack(updates, -1), -1),
                           FEATURES_ATOL))
    return checks


def write_checkpoint(path: Path, tree: dict, *, compress: bool = False) -> Path:
    data = ref.flax_bytes(ref.train_state(tree))
    path.write_bytes(lzma.compress(data) if compress else data)
    return path


# ==================================================================== the official fixture
@needs_fixture
def test_fixture_checkpoint_is_the_recorded_msgpack():
    config = json.loads((VARIANT_A / "config.json").read_text())["checkpoint"]
    raw = lzma.decompress((VARIANT_A / "checkpoint_0.xz").read_bytes())
    assert len(raw) == config["msgpack_bytes"]
    assert hashlib.sha256(raw).hexdigest() == config["msgpack_sha256"]


@needs_fixture
def test_reader_reads_scenics_train_state():
    state = read_msgpack(VARIANT_A / "checkpoint_0.xz")
    assert list(state) == ["global_step", "optimizer", "model_state", "rng", "accum_train_time"]
    assert state["global_step"].shape == () and state["global_step"].dtype == np.int32
    assert state["rng"].tolist() == [1353695780, 2116000888] and state["rng"].dtype == np.uint32
    leaves = load_flax_params(VARIANT_A / "checkpoint_0.xz")
    expected = json.loads((VARIANT_A / "config.json").read_text())["param_leaves"]
    assert {k: list(v.shape) for k, v in leaves.items()} == {k: v["shape"] for k, v in expected.items()}
    assert all(v.dtype == np.float32 for v in leaves.values())
    # the test writer is byte-exact Flax: re-serialising what was read gives the file back
    assert ref.flax_bytes(state) == lzma.decompress((VARIANT_A / "checkpoint_0.xz").read_bytes())


@needs_fixture
def test_numpy_reference_reproduces_the_official_outputs():
    """What makes tests/scenic_reference.py a trustworthy stand-in for the official code on other variants."""
    params = read_msgpack(VARIANT_A / "checkpoint_0.xz")["optimizer"]["target"]
    inputs = {m: np.load(FIXTURES / "inputs" / f"{m}.npy") for m in ("rgb", "spectrogram")}
    out = ref.mbt_forward(params, inputs, fusion_layer=2)
    for name in ("logits", "logits_rgb", "logits_spectrogram"):
        assert max_diff(out[name], np.load(VARIANT_A / f"{name}.npy")) <= LOGITS_ATOL, name
    for name in ("prelogits_rgb", "prelogits_spectrogram", "encoded"):
        assert max_diff(out[name], np.load(VARIANT_A / f"{name}.npy")) <= FEATURES_ATOL, name
    official = np.load(VARIANT_A / "intermediates.npz")
    assert sorted(out["intermediates"]) == sorted(official.files)
    for key in official.files:
        assert max_diff(out["intermediates"][key], official[key]) <= FEATURES_ATOL, key
    inputs["spectrogram"] = np.load(FIXTURES / "inputs" / "spectrogram_rand3ch.npy")
    assert max_diff(ref.mbt_forward(params, inputs, fusion_layer=2)["logits"],
                    np.load(VARIANT_A / "logits_spec_rand3ch.npy")) <= LOGITS_ATOL


@needs_fixture
def test_converted_fixture_gives_the_official_outputs(tmp_path):
    overrides = overrides_from_scenic_config(VARIANT_A / "config.json")
    assert overrides == dict(fusion_layer=2, **SIZES)
    model = MBT.from_pretrained(convert_scenic(VARIANT_A / "checkpoint_0.xz", tmp_path / "a", **overrides)).eval()
    cfg = model.config
    assert (cfg.fusion, cfg.fusion_layer, cfg.num_bottlenecks, cfg.depth, cfg.modalities) == \
        ("bottleneck", 2, 4, 4, ("audio", "video"))
    x = ours(np.load(FIXTURES / "inputs" / "rgb.npy"), np.load(FIXTURES / "inputs" / "spectrogram_mono.npy"))
    official = {name: np.load(VARIANT_A / f"{name}.npy") for name in
                ("logits", "logits_rgb", "logits_spectrogram", "prelogits_rgb", "prelogits_spectrogram", "encoded")}
    official["intermediates"] = dict(np.load(VARIANT_A / "intermediates.npz"))
    check_against_official(model, x, official)


@needs_fixture
def test_fixture_sizes_follow_from_the_token_counts_alone():
    model = load_scenic(VARIANT_A / "checkpoint_0.xz", fusion_layer=2)
    assert {k: getattr(model.config, k) for k in SIZES} == SIZES


@needs_fixture
def test_convert_command_on_the_fixture(tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["convert", "scenic", str(VARIANT_A / "checkpoint_0.xz"), "--out", str(out),
                 "--scenic-config", str(VARIANT_A / "config.json")]) == 0
    assert "bottleneck fusion at layer 2 of 4" in capsys.readouterr().out
    model = MBT.from_pretrained(out).eval()
    x = ours(np.load(FIXTURES / "inputs" / "rgb.npy"), np.load(FIXTURES / "inputs" / "spectrogram_mono.npy"))
    with torch.no_grad():
        logits = model(**x).logits
    assert max_diff(logits, np.load(VARIANT_A / "logits.npy")) <= LOGITS_ATOL
    record = json.loads((out / "conversion.json").read_text())
    assert record["msgpack_sha256"] == json.loads((VARIANT_A / "config.json").read_text())["checkpoint"][
        "msgpack_sha256"]
    assert model.preprocessing.spec_mean == 1.102 and model.preprocessing.spec_std == 2.762
    assert (model.preprocessing.fps, model.preprocessing.frame_stride) == (25.0, 2)


# ==================================================================== other variants, against the reference
VARIANTS = {
    # name: (official_tree arguments, fusion_layer, the MBTConfig facts the tree implies)
    "b_vanilla_fl2": (dict(), 2, dict(fusion="vanilla", share_weights=False)),
    "c_late_fl4": (dict(), 4, dict(fusion="vanilla", share_weights=False)),
    "d_early_bottleneck_fl0_nb2": (dict(bottleneck_tokens=3), 0, dict(fusion="bottleneck", num_bottlenecks=2)),
    "e_vanilla_shared_fl2": (dict(share_encoder=True), 2, dict(fusion="vanilla", share_weights=True)),
    "rgb_only": (dict(modalities=("rgb",)), None, dict(modalities=("video",))),
    "spectrogram_only": (dict(modalities=("spectrogram",)), None, dict(modalities=("audio",))),
    "vanilla_gap_fl1": (dict(classifier="gap"), 1, dict(classifier="gap", fusion="vanilla")),
    "rgb_temporal_sampling": (dict(modalities=("rgb",), rgb_2d=True, rgb_tokens=12), None,
                              dict(video_tokenizer="frame_sampling", sampled_frames=3)),
    # the official options beyond the released configs
    "bottleneck_shared_fl2": (dict(share_encoder=True, bottleneck_tokens=5), 2,
                              dict(fusion="bottleneck", share_weights=True, num_bottlenecks=4)),
    "bottleneck_shared_early_fl0": (dict(share_encoder=True, bottleneck_tokens=3), 0,
                                    dict(fusion="bottleneck", share_weights=True, num_bottlenecks=2)),
    "gmp_vanilla_fl1": (dict(classifier="gmp"), 1, dict(classifier="gmp", fusion="vanilla")),
    "gsp_vanilla_shared_fl2": (dict(classifier="gsp", share_encoder=True), 2,
                               dict(classifier="gsp", fusion="vanilla", share_weights=True)),
    "gmp_late_fl4": (dict(classifier="gmp"), 4, dict(classifier="gmp")),
    "token_representation_size": (dict(bottleneck_tokens=5, representation_size=16), 2,
                                  dict(representation_size=16, fusion="bottleneck")),
    "gap_representation_size": (dict(classifier="gap", representation_size=24), 1,
                                dict(classifier="gap", representation_size=24)),
    # released single-modality checkpoints carry an unused bottleneck leaf: a plain ViT all the same
    "spectrogram_only_with_bottleneck": (dict(modalities=("spectrogram",), bottleneck_tokens=5), None,
                                         dict(modalities=("audio",))),
    "rgb_only_with_bottleneck": (dict(modalities=("rgb",), bottleneck_tokens=5), None, dict(modalities=("video",))),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_converts_to_the_official_computation(variant, tmp_path):
    tree_args, fusion_layer, facts = VARIANTS[variant]
    tree = ref.official_tree(np.random.default_rng(len(variant)), **tree_args)
    path = write_checkpoint(tmp_path / "checkpoint_0", tree)
    overrides = dict(SIZES) if fusion_layer is None else dict(SIZES, fusion_layer=fusion_layer)
    if tree_args.get("classifier") in ("gmp", "gsp"):  # not in the tree: a pooling classifier has no parameters
        overrides["classifier"] = tree_args["classifier"]
    if tree_args.get("rgb_2d"):
        overrides.update(num_frames=8)  # 3 frames sampled 8/4 = 2 apart: indices 2, 4, 6
    model = load_scenic(path, **overrides)
    assert {k: getattr(model.config, k) for k in facts} == facts
    modalities = tree_args.get("modalities", ("spectrogram", "rgb"))
    rng = np.random.default_rng(1)
    rgb = rng.uniform(-1, 1, (2, model.config.num_frames, 32, 32, 3)).astype(np.float32)
    mono = rng.standard_normal((2, 64, 32)).astype(np.float32)
    x = {m: v for m, v in ours(rgb, mono).items() if OFFICIAL_NAME[m] in modalities}
    official = ref.mbt_forward(tree, {m: v for m, v in theirs(rgb, mono).items() if m in modalities},
                               fusion_layer=model.config.fusion_layer, modality_fusion=modalities,
                               share_encoder=tree_args.get("share_encoder", False),
                               classifier=tree_args.get("classifier", "token"),
                               n_sampled_frames=3 if tree_args.get("rgb_2d") else None)
    check_against_official(model, x, official)
    if "bottleneck" in tree and len(modalities) == 1:
        assert model.encoder.bottleneck is None and fusion_module.fusion_schedule(model.config) == ["separate"] * 4


def test_a_single_modality_trees_bottleneck_leaf_is_dropped_with_a_log_line(tmp_path, caplog):
    tree = ref.official_tree(np.random.default_rng(2), modalities=("spectrogram",), bottleneck_tokens=5)
    with caplog.at_level("INFO", logger="mbt.interop.scenic"):
        model = load_scenic(write_checkpoint(tmp_path / "checkpoint_0", tree), **SIZES)
    assert any("bottleneck dropped" in r.getMessage() for r in caplog.records)
    assert not any("bottleneck" in k for k in model.state_dict())


@pytest.mark.parametrize("tree_args", [dict(bottleneck_tokens=5), dict(bottleneck_tokens=3, share_encoder=True)])
def test_no_fusion_is_the_official_test_with_bottlenecks_false(tree_args, tmp_path):
    tree = ref.official_tree(np.random.default_rng(4), **tree_args)
    model = load_scenic(write_checkpoint(tmp_path / "checkpoint_0", tree), fusion_layer=1, **SIZES)
    rgb, mono = random_inputs(2)
    official = ref.mbt_forward(tree, theirs(rgb, mono), fusion_layer=1, test_with_bottlenecks=False,
                               share_encoder=tree_args.get("share_encoder", False))
    fused = ref.mbt_forward(tree, theirs(rgb, mono), fusion_layer=1, share_encoder=tree_args.get("share_encoder",
                                                                                                 False))
    with torch.no_grad():
        ours_unfused = model(**ours(rgb, mono), fuse=False)
    assert max_diff(ours_unfused.logits, official["logits"]) <= LOGITS_ATOL
    assert max_diff(ours_unfused.logits, fused["logits"]) > 1e-3  # fusion mattered: the check means something


def test_the_spectrogram_kernel_is_copied_with_its_three_channels(tmp_path):
    tree = ref.official_tree(np.random.default_rng(6), bottleneck_tokens=5)
    model = load_scenic(write_checkpoint(tmp_path / "checkpoint_0", tree), fusion_layer=2, **SIZES)
    np.testing.assert_array_equal(model.tokenizers["audio"].proj.weight.detach().numpy(),
                                  tree["embedding_spectrogram"]["kernel"].transpose(3, 2, 0, 1))


@needs_fixture
def test_a_directory_converted_with_the_former_one_channel_kernel_still_gives_the_official_logits(tmp_path):
    from safetensors.torch import load_file, save_file

    out = convert_scenic(VARIANT_A / "checkpoint_0.xz", tmp_path / "a", **overrides_from_scenic_config(
        VARIANT_A / "config.json"))
    state = load_file(str(out / "model.safetensors"))
    kernel = state["tokenizers.audio.proj.weight"]
    # what earlier versions wrote: the official kernel summed over its channels in float64
    state["tokenizers.audio.proj.weight"] = kernel.double().sum(1, keepdim=True).float()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model = MBT.from_pretrained(out).eval()
    assert model.tokenizers["audio"].proj.weight.shape[1] == 3
    x = ours(np.load(FIXTURES / "inputs" / "rgb.npy"), np.load(FIXTURES / "inputs" / "spectrogram_mono.npy"))
    with torch.no_grad():
        logits = model(**x).logits
    assert max_diff(logits, np.load(VARIANT_A / "logits.npy")) <= LOGITS_ATOL


def test_vanilla_and_late_fusion_differ_only_by_the_fusion_layer(tmp_path):
    """b and c share one checkpoint: the fusion layer alone must change the cross-modal part of the outputs."""
    path = write_checkpoint(tmp_path / "checkpoint_0", ref.official_tree(np.random.default_rng(3)))
    x = ours(*random_inputs())
    with torch.no_grad():
        mid, late = (load_scenic(path, fusion_layer=f, **SIZES)(**x) for f in (2, 4))
        late_alone = load_scenic(path, fusion_layer=4, **SIZES)(audio=x["audio"])
    assert max_diff(mid.logits, late.logits.numpy()) > 1e-3
    torch.testing.assert_close(late.modality_logits["audio"], late_alone.modality_logits["audio"])


# ==================================================================== storage formats
@pytest.mark.parametrize("layout", ["bare_tree", "params_key", "xz_train_state"])
def test_every_storage_layout_gives_the_same_model(layout, tmp_path):
    tree = ref.official_tree(np.random.default_rng(5), bottleneck_tokens=5)
    expected = load_scenic(write_checkpoint(tmp_path / "train_state", tree), fusion_layer=2, **SIZES).state_dict()
    path = tmp_path / layout
    if layout == "bare_tree":
        path.write_bytes(ref.flax_bytes(tree))
    elif layout == "params_key":
        path.write_bytes(ref.flax_bytes({"step": np.zeros((), np.int32), "params": tree}))
    else:
        write_checkpoint(path, tree, compress=True)
    state = load_scenic(path, fusion_layer=2, **SIZES).state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)


def test_reader_handles_scalars_and_chunked_arrays(tmp_path):
    def ext(code: int, array: np.ndarray) -> msgpack.ExtType:
        return msgpack.ExtType(code, msgpack.packb([list(array.shape), array.dtype.name, array.tobytes()],
                                                   use_bin_type=True))

    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    flat = array.reshape(-1)
    chunked = {"__msgpack_chunked_array__": True, "shape": {"0": 2, "1": 3},
               "chunks": {"0": ext(1, flat[:4]), "1": ext(1, flat[4:])}}
    path = tmp_path / "state"
    path.write_bytes(msgpack.packb({"scalar": ext(3, np.array(2.5, np.float32)), "big": chunked},
                                   use_bin_type=True))
    state = read_msgpack(path)
    assert state["scalar"] == 2.5 and isinstance(state["scalar"], np.float32)
    np.testing.assert_array_equal(state["big"], array)


# ==================================================================== bad trees
def _tree_path(tmp_path: Path, edit) -> Path:
    tree = ref.official_tree(np.random.default_rng(7), bottleneck_tokens=5)
    edit(tree)
    return write_checkpoint(tmp_path / "checkpoint_0", tree)


def test_an_extra_leaf_is_an_error_naming_it(tmp_path):
    path = _tree_path(tmp_path, lambda t: t.update(extra_head={"bias": np.zeros(64, np.float32),
                                                               "kernel": np.zeros((64, 64), np.float32)}))
    with pytest.raises(CheckpointError, match="extra_head/bias"):
        load_scenic(path, fusion_layer=2, **SIZES)


def test_a_missing_leaf_is_an_error_naming_it(tmp_path):
    path = _tree_path(tmp_path, lambda t: t["Transformer"]["encoderblock_1_spectrogram"]["LayerNorm_1"].pop("bias"))
    with pytest.raises(CheckpointError, match="encoderblock_1_spectrogram/LayerNorm_1/bias"):
        load_scenic(path, fusion_layer=2, **SIZES)
    path = _tree_path(tmp_path, lambda t: t.pop("clsspectrogram"))
    with pytest.raises(CheckpointError, match="clsspectrogram"):
        load_scenic(path, fusion_layer=2, **SIZES)


def test_float16_leaves_are_rejected(tmp_path):
    def to_half(tree: dict) -> None:
        tree["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"] = \
            tree["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"].astype(np.float16)

    with pytest.raises(CheckpointError, match=r"encoderblock_0/MlpBlock_0/Dense_0/kernel has dtype float16"):
        load_scenic(_tree_path(tmp_path, to_half), fusion_layer=2, **SIZES)


def test_unused_bottleneck_with_late_fusion_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="bottleneck is unused"):
        load_scenic(_tree_path(tmp_path, lambda t: None), fusion_layer=4, **SIZES)


def test_overrides_that_contradict_the_tree_or_are_missing_name_the_key(tmp_path):
    path = _tree_path(tmp_path, lambda t: None)
    with pytest.raises(ConfigError, match="model.num_bottlenecks"):
        load_scenic(path, fusion_layer=2, num_bottlenecks=8, **SIZES)
    with pytest.raises(ConfigError, match="model.fusion_layer"):
        load_scenic(path, **SIZES)
    with pytest.raises(CheckpointError, match="do not split"):
        load_scenic(path, fusion_layer=2, num_frames=6, spec_frames=64, num_mel_bins=32)


# ==================================================================== round trip and the command
def test_from_pretrained_save_pretrained_round_trip(tmp_path):
    path = write_checkpoint(tmp_path / "checkpoint_0", ref.official_tree(np.random.default_rng(9),
                                                                         bottleneck_tokens=5))
    first = MBT.from_pretrained(convert_scenic(path, tmp_path / "one", fusion_layer=2, **SIZES)).eval()
    second = MBT.from_pretrained(first.save_pretrained(tmp_path / "two")).eval()
    x = ours(*random_inputs())
    with torch.no_grad():
        assert torch.equal(first(**x).logits, second(**x).logits)
    assert second.config == first.config and second.preprocessing == first.preprocessing


def test_convert_scenic_command_with_flags(tmp_path, capsys):
    path = write_checkpoint(tmp_path / "checkpoint_0", ref.official_tree(np.random.default_rng(11)), compress=True)
    out = tmp_path / "out"
    args = ["convert", "scenic", str(path), "--out", str(out), "--num-frames", "4", "--image-size", "32",
            "--spec-frames", "64", "--num-mel-bins", "32"]
    assert main(args) == 2  # no --fusion-layer for a 4-layer model
    assert "fusion_layer" in capsys.readouterr().err
    assert main(args + ["--fusion-layer", "3", "--set", "model.multi_label=true"]) == 0
    cfg = MBT.from_pretrained(out).config
    assert (cfg.fusion, cfg.fusion_layer, cfg.multi_label, cfg.spec_frames) == ("vanilla", 3, True, 64)


@pytest.mark.parametrize("source", ["scenic", "vit"])
def test_convert_help(source, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", source, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: mbt convert {source}" in text and "--out" in text
