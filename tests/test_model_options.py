"""The official model options beyond the fusion kinds: one stream is a plain ViT, the 3-channel spectrogram kernel
(and its old 1-channel form), a per-sample modality mask, the gmp / gsp classifiers and the pre-logits layer.
Parity of these with the official computation is in test_interop_scenic.py (against tests/scenic_reference.py)."""

from __future__ import annotations

import pytest
import torch

from mbt import MBT, MBTConfig
from mbt.model.fusion import fusion_schedule
from mbt.model.tokenizers import SpectrogramEmbed

SMALL = dict(depth=4, width=32, num_heads=2, mlp_dim=64, num_frames=4, image_size=32, spec_frames=64,
             num_mel_bins=32, num_classes=5, fusion_layer=2)


def make(seed: int = 0, **kw) -> MBT:
    torch.manual_seed(seed)
    model = MBT(MBTConfig(**{**SMALL, **kw})).eval()
    with torch.no_grad():  # the zero-initialised head and CLS tokens would hide differences
        model.head.weight.normal_()
        for token in model.cls_token.values():
            token.normal_()
    return model


def inputs(cfg: MBTConfig, seed: int = 1, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, *cfg.input_shape(m), generator=g) for m in cfg.modalities}


# ==================================================================== one stream = a plain ViT
@pytest.mark.parametrize("modality", ["audio", "video"])
@pytest.mark.parametrize("fusion", [dict(fusion="bottleneck", fusion_layer=0), dict(fusion="bottleneck"),
                                    dict(fusion="vanilla", fusion_layer=1)])
def test_one_stream_has_exactly_the_parameters_of_a_plain_vit(modality, fusion):
    plain = MBT(MBTConfig(**{**SMALL, "modalities": (modality,), "fusion": "vanilla", "fusion_layer": 4}))
    model = MBT(MBTConfig(**{**SMALL, "modalities": (modality,), **fusion}))
    assert fusion_schedule(model.config) == ["separate"] * 4
    assert model.encoder.bottleneck is None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    # a ViT: tokenizer, CLS, positional embedding, 4 blocks, final norm, head
    assert not any("bottleneck" in k for k in shapes)
    plain.load_state_dict(model.state_dict())
    x = inputs(model.config)
    with torch.no_grad():
        assert torch.equal(model.eval()(**x).logits, plain.eval()(**x).logits)


# ==================================================================== the spectrogram kernel
def test_spectrogram_kernel_has_three_channels_and_convolves_their_sum():
    embed = SpectrogramEmbed(8, (4, 4))
    assert embed.proj.weight.shape == (8, 3, 4, 4)
    x = torch.randn(2, 16, 8)
    tiled = torch.nn.functional.conv2d(x[:, None].expand(-1, 3, -1, -1), embed.proj.weight, embed.proj.bias,
                                       stride=4)  # the official computation: the mono input tiled to 3 channels
    torch.testing.assert_close(embed(x), tiled.flatten(2).transpose(1, 2), atol=1e-6, rtol=1e-6)


def test_one_sgd_step_moves_the_summed_kernel_three_times_as_far():
    torch.manual_seed(0)
    embed = SpectrogramEmbed(8, (4, 4))
    one = torch.nn.Conv2d(1, 8, 4, stride=4)  # the former 1-channel parameter holding the same sum
    with torch.no_grad():
        one.weight.copy_(embed.summed_kernel())
        one.bias.copy_(embed.proj.bias)
    x, target = torch.randn(3, 16, 8), torch.randn(3, 8, 4, 2)
    before = embed.summed_kernel().detach().clone()
    for module, forward in ((embed, lambda: embed(x)), (one, lambda: one(x[:, None]).flatten(2).transpose(1, 2))):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        ((forward() - target.flatten(2).transpose(1, 2)) ** 2).sum().backward()
        optimizer.step()
    three_channel_step = embed.summed_kernel().detach() - before
    one_channel_step = one.weight.detach() - before
    assert one_channel_step.abs().max() > 1e-3  # the step is not vanishingly small
    torch.testing.assert_close(three_channel_step, 3 * one_channel_step, atol=1e-6, rtol=1e-5)


def test_a_one_channel_kernel_of_earlier_versions_loads_with_identical_logits():
    model = make(modalities=("audio",))
    old_state = model.state_dict()
    old_state["tokenizers.audio.proj.weight"] = model.tokenizers["audio"].summed_kernel().detach().clone()
    assert old_state["tokenizers.audio.proj.weight"].shape[1] == 1
    x = inputs(model.config)
    with torch.no_grad():
        old_logits = torch.nn.functional.conv2d(x["audio"][:, None], old_state["tokenizers.audio.proj.weight"],
                                                model.tokenizers["audio"].proj.bias, stride=16)
        reloaded = make(seed=5, modalities=("audio",))
        reloaded.load_state_dict(old_state)
        assert reloaded.tokenizers["audio"].proj.weight.shape[1] == 3
        assert torch.equal(reloaded.tokenizers["audio"].summed_kernel(), old_state["tokenizers.audio.proj.weight"])
        assert torch.equal(reloaded.tokenizers["audio"](x["audio"]), old_logits.flatten(2).transpose(1, 2))
        assert torch.equal(reloaded(**x).logits, model(**x).logits)


# ==================================================================== the modality mask
MASK_VARIANTS = {
    "bottleneck-mid": dict(fusion="bottleneck"),
    "bottleneck-early": dict(fusion="bottleneck", fusion_layer=0),
    "bottleneck-shared": dict(fusion="bottleneck", share_weights=True),
    "vanilla-mid": dict(fusion="vanilla"),
    "vanilla-shared": dict(fusion="vanilla", share_weights=True, fusion_layer=1),
    "late": dict(fusion_layer=4),
    "gap-vanilla": dict(fusion="vanilla", classifier="gap"),
    "gmp-bottleneck": dict(fusion="bottleneck", classifier="gmp"),
    "gmp-per-stream": dict(fusion="bottleneck", classifier="gmp", pool_per_stream=True),
    "gsp-vanilla-shared": dict(fusion="vanilla", classifier="gsp", share_weights=True),
    "token-pre-logits": dict(fusion="bottleneck", representation_size=16),
}


@pytest.mark.parametrize("variant", sorted(MASK_VARIANTS))
def test_a_masked_sample_gives_the_outputs_of_running_it_alone_without_the_stream(variant):
    model = make(**MASK_VARIANTS[variant])
    x = inputs(model.config, batch=4)
    # sample 0 complete, 1 without audio, 2 without video, 3 complete; the masked streams hold garbage
    mask = {"audio": torch.tensor([True, False, True, True]), "video": torch.tensor([True, True, False, True])}
    x["audio"][1] = 1e3
    x["video"][2] = -1e3
    with torch.no_grad():
        out = model(**x, modality_mask=mask)
        alone = {0: model(audio=x["audio"][0:1], video=x["video"][0:1]), 1: model(video=x["video"][1:2]),
                 2: model(audio=x["audio"][2:3]), 3: model(audio=x["audio"][3:4], video=x["video"][3:4])}
    for i, expected in alone.items():
        torch.testing.assert_close(out.logits[i:i + 1], expected.logits, atol=1e-5, rtol=1e-5, msg=f"sample {i}")
        for m, logits in expected.modality_logits.items():
            torch.testing.assert_close(out.modality_logits[m][i:i + 1], logits, atol=1e-5, rtol=1e-5)
    assert out.logits.isfinite().all()
    if model.config.classifier == "token" or model.config.pool_per_stream:
        assert set(out.modality_mask) == {"audio", "video"}


def test_the_mask_changes_the_masked_samples_only_and_a_full_mask_drops_the_stream():
    model = make()
    x = inputs(model.config, batch=3)
    with torch.no_grad():
        full = model(**x)
        masked = model(**x, modality_mask={"audio": torch.tensor([True, False, True])})
        without_audio = model(**x, modality_mask={"audio": torch.zeros(3, dtype=torch.bool)})
        video_alone = model(video=x["video"])
    torch.testing.assert_close(masked.logits[[0, 2]], full.logits[[0, 2]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked.logits[1], full.logits[1], atol=1e-4)
    assert torch.equal(without_audio.logits, video_alone.logits)  # the stream is simply not run
    assert without_audio.modality_mask is None and set(without_audio.modality_logits) == {"video"}


def test_bad_masks_are_named():
    model = make()
    x = inputs(model.config, batch=2)
    with pytest.raises(ValueError, match="sample 1 has no stream"):
        model(**x, modality_mask={"audio": torch.tensor([True, False]), "video": torch.tensor([True, False])})
    with pytest.raises(ValueError, match="every stream is masked"):
        model(**x, modality_mask={"audio": torch.zeros(2, dtype=torch.bool), "video": torch.zeros(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"modality_mask\['audio'\]"):
        model(**x, modality_mask={"audio": torch.tensor([1.0, 0.0])})
    with pytest.raises(ValueError, match="'flow' is not a modality"):
        model(**x, modality_mask={"flow": torch.tensor([True, True])})


# ==================================================================== classifiers and pre-logits
@pytest.mark.parametrize("classifier", ["gap", "gmp", "gsp"])
def test_pooling_classifiers_pool_every_token_of_every_stream(classifier):
    model = make(classifier=classifier, fusion="vanilla")
    x = inputs(model.config)
    tokens = {}
    with torch.no_grad():
        encoded = model.encoder({m: model.embed(m, x[m]) for m in model.config.modalities})
        normed = model.norm(torch.cat(list(encoded.values()), dim=1))
        tokens = {"gap": normed.mean(1), "gmp": normed.max(1).values, "gsp": normed.sum(1)}[classifier]
        torch.testing.assert_close(model(**x).logits, model.head(tokens))
    assert model.config.num_tokens("audio") == 4 * 2  # no CLS token


@pytest.mark.parametrize("classifier", ["gap", "gmp", "gsp"])
def test_per_stream_pooling_pools_each_stream_apart_and_averages_its_logits(classifier):
    # 4 audio and 8 video tokens (with as many, the mean of the streams' means would be the joint mean)
    model = make(classifier=classifier, pool_per_stream=True, spec_frames=32)
    joint = make(classifier=classifier, spec_frames=32)
    joint.load_state_dict(model.state_dict())  # the option adds no parameter
    x = inputs(model.config)
    reduce = {"gap": lambda t: t.mean(1), "gmp": lambda t: t.max(1).values, "gsp": lambda t: t.sum(1)}[classifier]
    with torch.no_grad():
        encoded = model.encoder({m: model.embed(m, x[m]) for m in model.config.modalities})
        per_stream = {m: model.head(reduce(model.norm(t))) for m, t in encoded.items()}
        out = model(**x)
        for m, logits in per_stream.items():
            torch.testing.assert_close(out.modality_logits[m], logits)
        torch.testing.assert_close(out.logits, (per_stream["audio"] + per_stream["video"]) / 2)
        assert not torch.allclose(out.logits, joint(**x).logits, atol=1e-4)  # not the official joint pooling
        # one stream alone: that stream encoded alone, pooled over its own tokens
        alone = model.encoder({"audio": model.embed("audio", x["audio"])})["audio"]
        torch.testing.assert_close(model(audio=x["audio"]).logits, model.head(reduce(model.norm(alone))))


def test_per_stream_pooling_needs_a_pooling_classifier():
    from mbt.errors import ConfigError
    from mbt.schema import validate

    with pytest.raises(ConfigError, match="model.pool_per_stream: needs a pooling classifier"):
        validate(MBTConfig, {**SMALL, "pool_per_stream": True}, "model")


def test_representation_size_adds_a_shared_tanh_pre_logits_layer():
    model = make(representation_size=16)
    assert model.head.in_features == 16 and model.pre_logits.out_features == 16
    x = inputs(model.config)
    with torch.no_grad():
        out = model(**x)
        for m in model.config.modalities:
            assert out.features[m].abs().max() <= 1.0  # tanh
            torch.testing.assert_close(out.modality_logits[m], model.head(out.features[m]))
