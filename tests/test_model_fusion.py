"""Information flow of each fusion kind, shown by perturbing one modality and watching the others."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mbt import MBT, MBTConfig
from mbt.model import fusion as fusion_module
from mbt.model.fusion import fusion_schedule

SMALL = dict(depth=4, width=32, num_heads=2, mlp_dim=64, num_frames=4, image_size=32, spec_frames=64,
             num_mel_bins=32, num_classes=5, fusion_layer=2)


def make(seed: int = 0, **kw) -> MBT:
    torch.manual_seed(seed)
    model = MBT(MBTConfig(**{**SMALL, **kw})).eval()
    with torch.no_grad():  # the zero-initialised head would hide every difference
        model.head.weight.normal_()
        for token in model.cls_token.values():
            token.normal_()
    return model


def inputs(cfg: MBTConfig, seed: int = 1, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, *cfg.input_shape(m), generator=g) for m in cfg.modalities}


def hidden_states(model: MBT, x: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    states = []
    tokens = {m: model.embed(m, x[m]) for m in model.config.modalities if m in x}
    model.encoder(tokens, capture=lambda layer, kind, t, b: states.append({m: v.clone() for m, v in t.items()}))
    return states


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, atol=1e-6, rtol=0)


def test_schedule_is_data():
    cfg = MBTConfig(**{**SMALL, "fusion": "bottleneck", "fusion_layer": 2})
    assert fusion_schedule(cfg) == ["separate", "separate", "bottleneck", "bottleneck"]
    assert fusion_schedule(MBTConfig(**{**SMALL, "fusion": "vanilla", "fusion_layer": 0})) == ["cross"] * 4
    assert fusion_schedule(MBTConfig(**{**SMALL, "fusion": "vanilla", "fusion_layer": 1, "share_weights": True})) == \
        ["separate", "joint", "joint", "joint"]
    assert fusion_schedule(MBTConfig(**{**SMALL, "fusion_layer": 4})) == ["separate"] * 4


@pytest.mark.parametrize("fusion", ["bottleneck", "vanilla"])
def test_late_fusion_keeps_streams_apart(fusion):
    model = make(fusion=fusion, fusion_layer=4)
    x = inputs(model.config)
    y = dict(x, video=torch.randn_like(x["video"]))
    a, b = model(**x), model(**y)
    assert torch.equal(a.modality_logits["audio"], b.modality_logits["audio"])
    assert changed(a.modality_logits["video"], b.modality_logits["video"])
    # the fused prediction is the mean of the per-modality logits
    torch.testing.assert_close(a.logits, (a.modality_logits["video"] + a.modality_logits["audio"]) / 2)


# Vanilla fusion mixes in layer Lf itself. Bottleneck fusion needs one more layer: in layer Lf every stream reads
# the learned bottleneck, and only the average of their updates carries the other modality into layer Lf + 1.
@pytest.mark.parametrize("fusion, first_mixed", [("bottleneck", 2), ("vanilla", 1)])
def test_streams_are_independent_before_the_fusion_layer_and_mix_after(fusion, first_mixed):
    model = make(fusion=fusion, fusion_layer=1)
    x = inputs(model.config)
    y = dict(x, video=torch.randn_like(x["video"]))
    before, after = hidden_states(model, x), hidden_states(model, y)
    for layer in range(first_mixed):
        assert torch.equal(before[layer]["audio"], after[layer]["audio"]), f"audio changed at layer {layer}"
    for layer in range(first_mixed, 4):
        assert changed(before[layer]["audio"], after[layer]["audio"]), f"no exchange at layer {layer}"


@pytest.mark.parametrize("fusion, first_mixed", [("bottleneck", 1), ("vanilla", 0)])
def test_early_fusion_mixes_from_the_first_layers(fusion, first_mixed):
    model = make(fusion=fusion, fusion_layer=0)
    x = inputs(model.config)
    before, after = hidden_states(model, x), hidden_states(model, dict(x, video=torch.randn_like(x["video"])))
    assert changed(before[first_mixed]["audio"], after[first_mixed]["audio"])


def _bottleneck_without_averaging(blocks, tokens, bottleneck, mask=None):
    # Test double: every stream keeps its own bottleneck copy (no cross-stream mean).
    copies = bottleneck if isinstance(bottleneck, dict) else {m: bottleneck for m in tokens}
    out, new = {}, {}
    for m, x in tokens.items():
        y = blocks[m](torch.cat([x, copies[m]], dim=1))
        n = copies[m].shape[1]
        out[m], new[m] = y[:, :-n], y[:, -n:]
    return out, new


def test_bottleneck_is_the_only_path_between_streams(monkeypatch):
    model = make(fusion="bottleneck", fusion_layer=1)
    x = inputs(model.config)
    y = dict(x, video=torch.randn_like(x["video"]))
    assert changed(model(**x).modality_logits["audio"], model(**y).modality_logits["audio"])
    monkeypatch.setitem(fusion_module.LAYER_KINDS, "bottleneck", dataclasses.replace(fusion_module.LAYER_KINDS["bottleneck"], run=_bottleneck_without_averaging))
    assert torch.equal(model(**x).modality_logits["audio"], model(**y).modality_logits["audio"])


def test_bottleneck_gradients_reach_the_other_stream_only_after_fusion():
    model = make(fusion="bottleneck", fusion_layer=1)
    x = inputs(model.config)
    video = x["video"].requires_grad_(True)
    states = hidden_states(model, dict(x, video=video))
    for layer, expect_gradient in ((0, False), (1, False), (2, True), (3, True)):
        (grad,) = torch.autograd.grad(states[layer]["audio"].sum(), video, retain_graph=True, allow_unused=True)
        has_gradient = grad is not None and grad.abs().sum() > 0
        assert has_gradient == expect_gradient, f"layer {layer}"


def _naive_cross(blocks, tokens, bottleneck, mask=None):
    # The official computation: each stream's block runs over [other streams; own] and keeps its own part.
    out = {}
    for m, x in tokens.items():
        others = [y for n, y in tokens.items() if n != m]
        out[m] = blocks[m](torch.cat([*others, x], dim=1))[:, -x.shape[1]:]
    return out, bottleneck


@pytest.mark.parametrize("fusion_layer", [0, 2])
def test_vanilla_separate_weights_equals_the_official_computation(monkeypatch, fusion_layer):
    model = make(fusion="vanilla", fusion_layer=fusion_layer)
    x = inputs(model.config)
    ours = model(**x)
    monkeypatch.setitem(fusion_module.LAYER_KINDS, "cross", dataclasses.replace(fusion_module.LAYER_KINDS["cross"], run=_naive_cross))
    reference = model(**x)
    for m in ("video", "audio"):
        torch.testing.assert_close(ours.modality_logits[m], reference.modality_logits[m], atol=1e-5, rtol=0)


def test_vanilla_shared_weights_is_one_joint_sequence(monkeypatch):
    model = make(fusion="vanilla", fusion_layer=1, share_weights=True)
    x = inputs(model.config)
    joint = model(**x)
    # with one shared block, each stream over [others; own] keeping its own part is the same computation
    monkeypatch.setitem(fusion_module.LAYER_KINDS, "joint", dataclasses.replace(fusion_module.LAYER_KINDS["joint"], run=_naive_cross))
    torch.testing.assert_close(joint.logits, model(**x).logits, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in make(fusion="vanilla", fusion_layer=1).parameters())


THREE = dict(modalities=("video", "audio", "flow"))


@pytest.mark.parametrize("fusion", ["bottleneck", "vanilla"])
def test_three_streams_all_exchange_after_the_fusion_layer(fusion):
    model = make(fusion=fusion, fusion_layer=2, **THREE)
    x = inputs(model.config)
    base = hidden_states(model, x)
    for source in ("video", "audio", "flow"):
        perturbed = hidden_states(model, dict(x, **{source: torch.randn_like(x[source])}))
        for target in ("video", "audio", "flow"):
            if target == source:
                continue
            assert torch.equal(base[1][target], perturbed[1][target]), f"{source}->{target} before fusion"
            assert changed(base[3][target], perturbed[3][target]), f"{source}->{target} after fusion"


def test_three_stream_bottleneck_averages_all_streams(monkeypatch):
    model = make(fusion="bottleneck", fusion_layer=2, **THREE)
    x = inputs(model.config)
    y = dict(x, flow=torch.randn_like(x["flow"]))
    monkeypatch.setitem(fusion_module.LAYER_KINDS, "bottleneck", dataclasses.replace(fusion_module.LAYER_KINDS["bottleneck"], run=_bottleneck_without_averaging))
    assert torch.equal(model(**x).modality_logits["audio"], model(**y).modality_logits["audio"])


def test_three_stream_late_fusion_keeps_streams_apart():
    model = make(fusion_layer=4, **THREE)
    x = inputs(model.config)
    y = dict(x, flow=torch.randn_like(x["flow"]), video=torch.randn_like(x["video"]))
    assert torch.equal(model(**x).modality_logits["audio"], model(**y).modality_logits["audio"])
    assert set(model(**x).modality_logits) == {"video", "audio", "flow"}


def test_missing_modality_runs_the_other_stream_alone():
    model = make(fusion_layer=4)
    x = inputs(model.config)
    full, audio_only = model(**x), model(audio=x["audio"])
    assert set(audio_only.modality_logits) == {"audio"}
    torch.testing.assert_close(audio_only.logits, full.modality_logits["audio"])
    with pytest.raises(ValueError, match="no input"):
        model()
    with pytest.raises(ValueError, match="video: expected input of shape"):
        model(video=torch.randn(1, 3, 2, 32, 32))


def test_gap_classifier_pools_all_tokens_of_both_streams():
    model = make(classifier="gap", fusion="vanilla", fusion_layer=2)
    out = model(**inputs(model.config))
    assert out.modality_logits == {} and out.logits.shape == (2, 5)
    # no CLS tokens, and B bottleneck tokens (not B + 1) with gap
    assert len(model.cls_token) == 0
    assert make(classifier="gap").encoder.bottleneck.shape[1] == 4
    assert make().encoder.bottleneck.shape[1] == 5


def test_head_is_shared_and_zero_initialised():
    model = MBT(MBTConfig(**SMALL))
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    out = model(**inputs(model.config))
    assert torch.count_nonzero(out.logits) == 0


def test_frame_sampling_tokenizer_uses_evenly_spaced_frames():
    from mbt.model.tokenizers import sampled_frame_indices

    assert sampled_frame_indices(32, 8) == [4, 7, 11, 14, 18, 21, 25, 28]  # T/(n+1) apart, as scenic
    model = make(video_tokenizer="frame_sampling", sampled_frames=2, num_frames=4)
    x = inputs(model.config)
    used = sampled_frame_indices(4, 2)
    not_used = [t for t in range(4) if t not in used][0]
    y = x["video"].clone()
    y[:, :, not_used] = torch.randn_like(y[:, :, not_used])
    assert torch.equal(model(video=x["video"]).logits, model(video=y).logits)
    assert model.config.num_tokens("video") == 1 + 2 * 2 * 2


def test_bottleneck_fusion_only_in_the_last_layer_exchanges_nothing(caplog):
    with caplog.at_level("WARNING", logger="mbt.model"):
        model = make(fusion="bottleneck", fusion_layer=3)
    assert "exchanges no information" in caplog.text
    x = inputs(model.config)
    y = dict(x, video=torch.randn_like(x["video"]))
    assert torch.equal(model(**x).modality_logits["audio"], model(**y).modality_logits["audio"])
