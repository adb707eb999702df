"""`model.stem: conv`: the convolutional stem keeps the patch projection's token grid and order, is checked on
construction, round-trips through save_pretrained with its BatchNorm statistics, and is left at initialisation
(and said so) when the blocks come from an ImageNet ViT."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mbt import MBT, MBTConfig
from mbt.errors import ConfigError
from mbt.interop.vit import init_from_vit

SMALL = dict(depth=2, width=32, num_heads=2, mlp_dim=64, num_frames=4, image_size=32, patch_size=8,
             spec_frames=64, num_mel_bins=32, spec_patch=(16, 8), num_classes=5, fusion_layer=0)


def model(**kw) -> MBT:
    torch.manual_seed(0)
    return MBT(MBTConfig(**{**SMALL, **kw})).eval()


@pytest.mark.parametrize("tokenizer", ["tubelet", "frame_sampling"])
def test_the_conv_stem_gives_the_patch_projections_token_grid(tokenizer):
    patch, conv = model(video_tokenizer=tokenizer, sampled_frames=2), model(video_tokenizer=tokenizer,
                                                                            sampled_frames=2, stem="conv")
    video, audio = torch.randn(2, *patch.config.video_shape), torch.randn(2, *patch.config.audio_shape)
    for m, x in (("video", video), ("audio", audio)):
        assert conv.tokenizers[m](x).shape == patch.tokenizers[m](x).shape
    assert conv(video, audio).logits.shape == (2, 5)
    assert not any(k.endswith("proj.weight") and k.startswith("tokenizers") for k in conv.state_dict())


def _changed_tokens(tokenizer: torch.nn.Module, x: torch.Tensor, region: tuple) -> list[int]:
    changed = x.clone()
    changed[region] += 5.0
    with torch.no_grad():
        return torch.nonzero((tokenizer(changed) - tokenizer(x)).abs().amax(dim=-1)[0]).flatten().tolist()


def test_tokens_keep_the_official_order_time_then_rows_then_columns():
    # 3x3 stride-2 layers: token j of a p = 8 axis sees pixels 8j - 7 .. 8j + 7, so pixel row 31 reaches only row
    # 3 of the 4 x 4 grid and column 0 only column 0; frames 2-3 are the second tubelet
    conv = model(stem="conv")
    video = torch.randn(1, *conv.config.video_shape)
    assert _changed_tokens(conv.tokenizers["video"], video, (0, slice(None), slice(2, 4), 31, 0)) == [1 * 16 + 3 * 4]
    # spectrogram frame 63 reaches only the last of 4 time rows (16 frames each): tokens are time-major
    audio = torch.randn(1, *conv.config.audio_shape)
    assert _changed_tokens(conv.tokenizers["audio"], audio, (0, 63, slice(None))) == [12, 13, 14, 15]


@pytest.mark.parametrize("key, value", [("patch_size", 12), ("spec_patch", (16, 12))])
def test_patch_sides_that_are_not_powers_of_two_are_refused_by_name(key, value):
    sizes = {"image_size": 48} if key == "patch_size" else {"num_mel_bins": 48}
    MBTConfig(**{**SMALL, **sizes, key: value})  # the patch projection takes any size
    with pytest.raises(ConfigError, match=f"model.{key}: .*powers of two"):
        MBTConfig.from_dict({**SMALL, **sizes, key: value, "stem": "conv"})


def test_batchnorm_statistics_are_saved_and_loaded(tmp_path):
    conv = model(stem="conv")
    video, audio = torch.randn(3, *conv.config.video_shape), torch.randn(3, *conv.config.audio_shape)
    conv.train()
    conv(video * 3 + 1, audio * 2 - 1)  # moves the running statistics away from their initial values
    conv.eval()
    stats = [k for k in conv.state_dict() if k.endswith("running_mean")]
    assert stats and all(conv.state_dict()[k].abs().sum() > 0 for k in stats)
    conv.save_pretrained(tmp_path / "m")
    loaded = MBT.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.stem == "conv"
    with torch.no_grad():
        assert torch.equal(loaded(video, audio).logits, conv(video, audio).logits)


def test_imagenet_blocks_load_and_the_conv_stem_stays_at_initialisation(tmp_path):
    width, mlp, patch, side = 32, 64, 8, 4
    g = torch.Generator().manual_seed(0)
    state = {"cls_token": torch.randn(1, 1, width, generator=g),
             "pos_embed": torch.randn(1, 1 + side * side, width, generator=g),
             "patch_embed.proj.weight": torch.randn(width, 3, patch, patch, generator=g),
             "patch_embed.proj.bias": torch.randn(width, generator=g),
             "norm.weight": torch.randn(width, generator=g), "norm.bias": torch.randn(width, generator=g)}
    for i in range(2):
        for key, shape in (("norm1.weight", (width,)), ("norm1.bias", (width,)), ("attn.qkv.weight", (3 * width, width)),
                           ("attn.qkv.bias", (3 * width,)), ("attn.proj.weight", (width, width)),
                           ("attn.proj.bias", (width,)), ("norm2.weight", (width,)), ("norm2.bias", (width,)),
                           ("mlp.fc1.weight", (mlp, width)), ("mlp.fc1.bias", (mlp,)),
                           ("mlp.fc2.weight", (width, mlp)), ("mlp.fc2.bias", (width,))):
            state[f"blocks.{i}.{key}"] = torch.randn(*shape, generator=g)
    path = tmp_path / "vit.safetensors"
    save_file(state, str(path))
    conv = model(stem="conv", spec_patch=(8, 8))
    before = {k: v.clone() for k, v in conv.state_dict().items() if k.startswith("tokenizers.")}
    report = init_from_vit(conv, path)
    after = conv.state_dict()
    assert torch.equal(after["encoder.streams.audio.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert any("model.stem: conv" in note for note in report["notes"])


# ==================================================================== model.weight_init
def test_trunc_normal_init_gives_every_linear_small_weights_and_a_nonzero_head():
    official, timm_like = model(), model(weight_init="trunc_normal")
    assert not official.head.weight.any()  # the official zero head
    linears = [m for m in timm_like.modules() if isinstance(m, torch.nn.Linear)]
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert abs(weights.std().item() - 0.02) < 0.002 and timm_like.head.weight.std() > 0.01
    assert not any(m.bias.any() for m in linears)
    qkv = official.encoder.streams["video"][0].attn.qkv.weight
    assert qkv.std() > 2 * 0.02  # Xavier on 32 -> 32: std 0.18


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_trunc_normal_blocks_start_near_the_identity_and_official_ones_do_not(stem):
    """Why the small-data recipe uses it (docs/small-data.md section 7): at initialisation the official blocks'
    residual branches outweigh the tokens they are given, the trunc-normal ones leave them mostly as they are."""
    changes = {}
    for init in ("official", "trunc_normal"):
        torch.manual_seed(0)
        net = MBT(MBTConfig.preset("mbt-tiny", stem=stem, weight_init=init, classifier="gmp", pool_per_stream=True,
                                   num_classes=10, spec_frames=192, fusion_layer=3, drop_path_rate=0.0)).train()
        video, audio = torch.randn(4, *net.config.video_shape), torch.randn(4, *net.config.audio_shape)
        with torch.no_grad():
            tokens = {"video": net.embed("video", video), "audio": net.embed("audio", audio)}
            out = net.encoder(tokens)
        changes[init] = max(((out[m] - x).norm() / x.norm()).item() for m, x in tokens.items())
    assert changes["trunc_normal"] < 0.8 < 1.2 < changes["official"], changes
