"""Initialisation from a 2-D ViT: Google .npz and timm-named files, kernel inflation, positional-embedding
surgery, bottleneck and CLS initialisation, and `mbt convert vit`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage
import torch
from safetensors.torch import save_file

from mbt import MBT, MBTConfig
from mbt.cli import main
from mbt.interop.msgpack_tree import CheckpointError
from mbt.interop.vit import init_from_vit

# ViT-Ti/16 at 224 (width 192, 3 heads, MLP 768, 14 x 14 grid) with 3 of its 12 blocks, to stay fast.
WIDTH, HEADS, MLP, PATCH, SIDE, BLOCKS = 192, 3, 768, 16, 14, 3
# The model: 4 frames of 224^2 (2 x 14 x 14 tubelets), a 128 x 64 spectrogram (8 x 4 patches), 4 bottlenecks.
MODEL = dict(depth=BLOCKS, width=WIDTH, num_heads=HEADS, mlp_dim=MLP, num_frames=4, image_size=224, tubelet_size=2,
             spec_frames=128, num_mel_bins=64, fusion="bottleneck", fusion_layer=1, num_bottlenecks=4, num_classes=5)


def timm_vit(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    state = {"cls_token": r(1, 1, WIDTH), "pos_embed": r(1, 1 + SIDE * SIDE, WIDTH),
             "patch_embed.proj.weight": r(WIDTH, 3, PATCH, PATCH), "patch_embed.proj.bias": r(WIDTH),
             "norm.weight": r(WIDTH), "norm.bias": r(WIDTH), "head.weight": r(10, WIDTH), "head.bias": r(10)}
    for i in range(BLOCKS):
        state.update({f"blocks.{i}.norm1.weight": r(WIDTH), f"blocks.{i}.norm1.bias": r(WIDTH),
                      f"blocks.{i}.attn.qkv.weight": r(3 * WIDTH, WIDTH), f"blocks.{i}.attn.qkv.bias": r(3 * WIDTH),
                      f"blocks.{i}.attn.proj.weight": r(WIDTH, WIDTH), f"blocks.{i}.attn.proj.bias": r(WIDTH),
                      f"blocks.{i}.norm2.weight": r(WIDTH), f"blocks.{i}.norm2.bias": r(WIDTH),
                      f"blocks.{i}.mlp.fc1.weight": r(MLP, WIDTH), f"blocks.{i}.mlp.fc1.bias": r(MLP),
                      f"blocks.{i}.mlp.fc2.weight": r(WIDTH, MLP), f"blocks.{i}.mlp.fc2.bias": r(WIDTH)})
    return state


def google_npz(state: dict[str, torch.Tensor], naming: str) -> dict[str, np.ndarray]:
    """The same ViT as Google's Flax checkpoints store it: channels-last kernels, (D, H, Dh) attention."""
    s = {k: v.numpy() for k, v in state.items()}
    dh = WIDTH // HEADS
    prefix = {"vit_jax": "", "opt_target": "opt/target/", "big_vision": "params/"}[naming]
    attention, norm2, mlp = (("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if naming == "big_vision"
                             else ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"))
    out = {"embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # (p, p, 3, D)
           "embedding/bias": s["patch_embed.proj.bias"], "cls": s["cls_token"],
           "Transformer/encoder_norm/scale": s["norm.weight"], "Transformer/encoder_norm/bias": s["norm.bias"],
           "head/kernel": s["head.weight"].T, "head/bias": s["head.bias"]}
    out["pos_embedding" if naming == "big_vision" else "Transformer/posembed_input/pos_embedding"] = s["pos_embed"]
    for i in range(BLOCKS):
        b, t = f"Transformer/encoderblock_{i}", f"blocks.{i}."
        for j, name in enumerate(("query", "key", "value")):
            weight = s[t + "attn.qkv.weight"][j * WIDTH:(j + 1) * WIDTH]  # (out, in)
            out[f"{b}/{attention}/{name}/kernel"] = weight.T.reshape(WIDTH, HEADS, dh)
            out[f"{b}/{attention}/{name}/bias"] = s[t + "attn.qkv.bias"][j * WIDTH:(j + 1) * WIDTH].reshape(HEADS, dh)
        out[f"{b}/{attention}/out/kernel"] = s[t + "attn.proj.weight"].T.reshape(HEADS, dh, WIDTH)
        out[f"{b}/{attention}/out/bias"] = s[t + "attn.proj.bias"]
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", norm2)):
            out[f"{b}/{theirs}/scale"], out[f"{b}/{theirs}/bias"] = s[t + ours + ".weight"], s[t + ours + ".bias"]
        for r in range(2):
            out[f"{b}/{mlp}/Dense_{r}/kernel"] = s[t + f"mlp.fc{r + 1}.weight"].T
            out[f"{b}/{mlp}/Dense_{r}/bias"] = s[t + f"mlp.fc{r + 1}.bias"]
    out = {prefix + k: v for k, v in out.items()}
    if naming == "opt_target":  # optimizer state beside the target: not part of the ViT
        out["opt/state/step"] = np.zeros((), np.int32)
    return out


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> tuple[dict[str, torch.Tensor], str]:
    state = timm_vit()
    path = tmp_path_factory.mktemp("vit") / "vit_ti.safetensors"
    save_file(state, str(path))
    return state, str(path)


def initialised(path: str, **kw) -> tuple[MBT, dict]:
    options = {k: kw.pop(k) for k in ("video_kernel_init", "audio_cls") if k in kw}
    torch.manual_seed(0)
    model = MBT(MBTConfig(**{**MODEL, **kw}))
    return model, init_from_vit(model, path, **options)


def grid(state: dict[str, torch.Tensor]) -> np.ndarray:
    return state["pos_embed"][0, 1:].reshape(SIDE, SIDE, WIDTH).numpy()


# ==================================================================== formats
@pytest.mark.parametrize("naming", ["vit_jax", "opt_target", "big_vision"])
def test_google_npz_and_timm_files_give_the_same_model(naming, vit, tmp_path):
    state, timm_path = vit
    npz = tmp_path / "vit.npz"
    np.savez(npz, **google_npz(state, naming))
    from_timm, _ = initialised(timm_path)
    from_npz, report = initialised(str(npz))
    assert report["format"] == "npz"
    a, b = from_timm.state_dict(), from_npz.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert any(k.endswith("head/kernel") for k in report["ignored"])


def test_pth_is_read_without_unpickling_objects(vit, tmp_path):
    state, timm_path = vit
    pth = tmp_path / "vit.pth"
    torch.save({"model": state}, pth)
    a, b = initialised(timm_path)[0].state_dict(), initialised(str(pth))[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    pickled = tmp_path / "object.pth"
    torch.save({"model": state, "args": argparse_like()}, pickled)
    with pytest.raises(CheckpointError, match="weights_only"):
        initialised(str(pickled))


class argparse_like:  # noqa: N801 - stands for any pickled object a training script saves beside the weights
    pass


# ==================================================================== what goes where
def test_blocks_go_into_both_streams_norm_copied_head_untouched(vit):
    state, path = vit
    model, report = initialised(path)
    own = model.state_dict()
    for layer in range(BLOCKS):
        for m in ("video", "audio"):
            for key in ("norm1.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "mlp.fc2.bias"):
                assert torch.equal(own[f"encoder.streams.{m}.{layer}.{key}"], state[f"blocks.{layer}.{key}"])
    assert torch.equal(own["norm.weight"], state["norm.weight"]) and torch.equal(own["norm.bias"], state["norm.bias"])
    assert not own["head.weight"].any() and not own["head.bias"].any()  # new classes: stays zero-initialised
    assert report["left_at_init"] == ["head.bias", "head.weight"]
    assert "head.weight" in report["ignored"]


def test_shared_weights_model_gets_the_blocks_once(vit):
    state, path = vit
    model, _ = initialised(path, fusion="vanilla", share_weights=True)
    for layer in range(BLOCKS):
        assert torch.equal(model.state_dict()[f"encoder.shared.{layer}.mlp.fc1.weight"],
                           state[f"blocks.{layer}.mlp.fc1.weight"])


def test_deeper_model_keeps_its_extra_layers_and_says_so(vit):
    _, path = vit
    torch.manual_seed(0)
    reference = MBT(MBTConfig(**{**MODEL, "depth": BLOCKS + 1}))
    model, report = initialised(path, depth=BLOCKS + 1)
    extra = f"encoder.streams.video.{BLOCKS}.attn.qkv.weight"
    assert torch.equal(model.state_dict()[extra], reference.state_dict()[extra])
    assert extra in report["left_at_init"]
    assert any("left at initialisation" in note for note in report["notes"])


@pytest.mark.parametrize("method, weights", [
    ("central_frame", [0.0, 1.0]),  # the 2-D kernel at t // 2 = 1, zeros elsewhere
    ("average", [0.5, 0.5]),
    # Bilen et al. eq. 3, t = 2: alpha = 2(2 - i + 1) - 3 (H_2 - H_{i-1}) = (-1/2, 1/2), divided by t
    ("arp", [-0.25, 0.25]),
])
def test_video_kernel_inflation(method, weights, vit):
    state, path = vit
    model, _ = initialised(path, video_kernel_init=method)
    kernel = model.tokenizers["video"].proj.weight.detach()
    assert kernel.shape == (WIDTH, 3, 2, PATCH, PATCH)
    for i, w in enumerate(weights):
        torch.testing.assert_close(kernel[:, :, i], state["patch_embed.proj.weight"] * w, rtol=1e-6, atol=0)


def test_arp_inflation_over_four_frames(vit):
    state, path = vit
    model, _ = initialised(path, video_kernel_init="arp", tubelet_size=4)
    # t = 4: H = (1, 3/2, 11/6, 25/12); alpha = (8 - 125/12, 6 - 65/12, 4 - 35/12, 2 - 15/12) = (-29, 7, 13, 9) / 12
    for i, w in enumerate(np.array([-29, 7, 13, 9]) / 48):
        torch.testing.assert_close(model.tokenizers["video"].proj.weight[:, :, i].detach(),
                                   state["patch_embed.proj.weight"] * float(w), rtol=1e-6, atol=1e-7)


def test_audio_kernel_is_the_rgb_patch_kernel_as_it_is(vit):
    state, path = vit
    model, _ = initialised(path)
    kernel = state["patch_embed.proj.weight"]
    assert torch.equal(model.tokenizers["audio"].proj.weight.detach(), kernel)  # official: copied unchanged
    # what the official 3-channel conv computes on the tiled mono spectrogram
    mono = torch.randn(1, 32, 32)
    official = torch.nn.functional.conv2d(mono[:, None].repeat(1, 3, 1, 1), kernel, state["patch_embed.proj.bias"],
                                          stride=PATCH)
    torch.testing.assert_close(model.tokenizers["audio"](mono).detach(), official.flatten(2).transpose(1, 2),
                               rtol=1e-5, atol=1e-4)


def test_video_positional_embeddings_are_the_grid_tiled_over_time(vit):
    state, path = vit
    model, _ = initialised(path)
    pos = model.pos_embed["video"].detach()[0]
    assert pos.shape[0] == 1 + 2 * SIDE * SIDE
    assert torch.equal(pos[0], state["pos_embed"][0, 0])
    for t in range(2):
        assert torch.equal(pos[1 + t * SIDE * SIDE:1 + (t + 1) * SIDE * SIDE], state["pos_embed"][0, 1:])


def test_video_grid_is_resized_for_smaller_frames(vit):
    state, path = vit
    model, _ = initialised(path, image_size=112)  # 7 x 7 patches a frame
    pos = model.pos_embed["video"].detach()[0, 1:].reshape(2, 7, 7, WIDTH).numpy()
    expected = scipy.ndimage.zoom(grid(state), (7 / SIDE, 7 / SIDE, 1), order=1)
    np.testing.assert_allclose(pos[0], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(pos[1], pos[0])
    # order-1 zoom keeps the corners (align-corners sampling)
    np.testing.assert_allclose(pos[0, -1, -1], grid(state)[-1, -1], atol=1e-6)


def test_audio_positional_embeddings_are_resized_to_the_spectrogram_grid(vit):
    state, path = vit
    model, _ = initialised(path)
    pos = model.pos_embed["audio"].detach()[0]
    assert torch.equal(pos[0], state["pos_embed"][0, 0])
    audio = pos[1:].reshape(8, 4, WIDTH).numpy()  # 128 / 16 time x 64 / 16 mel patches, time-major
    np.testing.assert_allclose(audio, scipy.ndimage.zoom(grid(state), (8 / SIDE, 4 / SIDE, 1), order=1), atol=1e-6)
    for (i, j), (gi, gj) in (((0, 0), (0, 0)), ((0, 3), (0, 13)), ((7, 0), (13, 0)), ((7, 3), (13, 13))):
        np.testing.assert_allclose(audio[i, j], grid(state)[gi, gj], atol=1e-6)


@pytest.mark.parametrize("count, corners", [
    (4, [(0, 0), (0, 13), (13, 0), (13, 13)]),  # a 2 x 2 grid: the four corners of the 14 x 14 grid
    (6, [(0, 0), (0, 6.5), (0, 13), (13, 0), (13, 6.5), (13, 13)]),  # 2 x 3: rows 0 / 13, columns 0 / 6.5 / 13
])
def test_bottleneck_tokens_from_the_resized_grid_after_the_cls_embedding(count, corners, vit):
    state, path = vit
    model, _ = initialised(path, num_bottlenecks=count)
    tokens = model.encoder.bottleneck.detach()[0]
    assert tokens.shape == (count + 1, WIDTH)
    assert torch.equal(tokens[0], state["pos_embed"][0, 0])
    g = grid(state)
    for token, (i, j) in zip(tokens[1:].numpy(), corners):
        expected = (g[i, int(j)] + g[i, int(j) + 1]) / 2 if j % 1 else g[i, int(j)]
        np.testing.assert_allclose(token, expected, atol=1e-5)


@pytest.mark.parametrize("option", ["copy", "zero"])
def test_cls_tokens(option, vit):
    state, path = vit
    model, report = initialised(path, audio_cls=option)
    assert torch.equal(model.cls_token["video"].detach(), state["cls_token"])
    audio = model.cls_token["audio"].detach()
    assert torch.equal(audio, state["cls_token"] if option == "copy" else torch.zeros_like(audio))
    assert report["audio_cls"] == option


# ==================================================================== errors
def test_mismatched_or_foreign_weights_are_named(vit, tmp_path):
    state, path = vit
    with pytest.raises(CheckpointError, match="width 192 does not match model.width 384"):
        initialised(path, width=384, num_heads=6, mlp_dim=1536)
    foreign = tmp_path / "layer_scale.safetensors"
    save_file({**state, "blocks.0.ls1.gamma": torch.ones(WIDTH)}, str(foreign))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ls1\.gamma"):
        initialised(str(foreign))
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if k != "blocks.1.attn.proj.bias"}, str(partial))
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.proj\.bias"):
        initialised(str(partial))
    npz = tmp_path / "heads.npz"
    np.savez(npz, **google_npz(state, "vit_jax"))
    with pytest.raises(CheckpointError, match="3 heads"):
        initialised(str(npz), num_heads=6)


def test_non_finite_weights_are_named(vit, tmp_path):
    state, _ = vit
    damaged = {k: v.clone() for k, v in state.items()}
    damaged["blocks.1.mlp.fc1.weight"][3, 5] = float("nan")
    path = tmp_path / "damaged.safetensors"
    save_file(damaged, str(path))
    with pytest.raises(CheckpointError, match=r"blocks\.1\.mlp\.fc1\.weight.*non-finite"):
        initialised(str(path))


# ==================================================================== command
def test_convert_vit_command(vit, tmp_path, capsys):
    state, path = vit
    config = tmp_path / "model.yaml"
    config.write_text("model:\n  preset: mbt-tiny\n  depth: 3\n  fusion_layer: 2\n  num_classes: 4\n")
    out = tmp_path / "out"
    # positionals may follow the options
    assert main(["convert", "vit", path, "--out", str(out), str(config), "--set", "model.num_bottlenecks=2",
                 "--audio-cls", "zero"]) == 0
    assert "left at initialisation: head.bias, head.weight" in capsys.readouterr().out
    model = MBT.from_pretrained(out)
    assert (model.config.num_classes, model.config.num_bottlenecks, model.config.image_size) == (4, 2, 112)
    assert torch.equal(model.state_dict()["encoder.streams.audio.2.mlp.fc1.weight"], state["blocks.2.mlp.fc1.weight"])
    assert not model.cls_token["audio"].any()
    assert json.loads((out / "vit_init.json").read_text())["audio_cls"] == "zero"
    assert model.preprocessing.image_size == 112
