"""Attention capture, rollout and `mbt attention`: captured probabilities are the softmax the model computes,
capturing changes nothing, rollout moves mass across streams only where fusion connects them, the command draws."""

from __future__ import annotations

import matplotlib.image
import pytest
import torch

from engine_fixtures import toy_config, write_toy_set
from mbt.analysis.attention import (
    BOTTLENECK,
    attention_probes,
    attention_rollout,
    capture_attention,
    cls_share,
)
from mbt.cli import main
from mbt.config import MBTConfig, load_config
from mbt.model import MBT
from mbt.recipes.train import train

SMALL = dict(width=32, num_heads=2, mlp_dim=64, num_frames=4, image_size=32, spec_frames=96, num_mel_bins=32,
             num_classes=3, drop_path_rate=0.0, fusion_layer=1)


def small_model(depth: int = 3, seed: int = 0, **overrides) -> tuple[MBT, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    cfg = MBTConfig.preset("mbt-tiny", depth=depth, **{**SMALL, **overrides})
    model = MBT(cfg).eval()
    inputs = {"video": torch.randn(2, *cfg.video_shape), "audio": torch.randn(2, *cfg.audio_shape)}
    return model, inputs


@pytest.mark.parametrize("fusion", [dict(fusion="vanilla", fusion_layer=1),
                                    dict(fusion="vanilla", fusion_layer=1, share_weights=True),
                                    dict(fusion="bottleneck", fusion_layer=1)])
def test_captured_attention_rows_sum_to_one_and_equal_softmax_of_queries_and_keys(fusion):
    model, inputs = small_model(**fusion)
    arguments = []

    def record(module, args, output):
        arguments.append((module, args[0], args[1] if len(args) > 1 else None))

    modules = {id(b.attn): b.attn for layer in range(model.config.depth)
               for b in model.encoder.blocks_at(layer).values()}
    handles = [m.register_forward_hook(record) for m in modules.values()]
    with torch.no_grad(), attention_probes(model) as records:
        model(**inputs)
    for handle in handles:
        handle.remove()
    assert [module for _, module, _ in records] == [module for module, _, _ in arguments]
    calls = [(module, x, context, probs) for (module, x, context), (_, _, probs) in zip(arguments, records)]

    assert len(calls) == sum(1 if kind == "joint" else 2 for kind in model.encoder.schedule)
    for module, x, context, probs in calls:
        d, heads = x.shape[-1], module.num_heads
        weight, bias = module.qkv.weight, module.qkv.bias
        keys_in = x if context is None else torch.cat([x, context], dim=1)
        q = (x @ weight[:d].T + bias[:d]).unflatten(-1, (heads, d // heads)).transpose(1, 2)
        k = (keys_in @ weight[d:2 * d].T + bias[d:2 * d]).unflatten(-1, (heads, d // heads)).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
        assert probs.shape == (2, heads, x.shape[1], keys_in.shape[1])
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)


def test_capturing_attention_changes_no_output_and_is_switched_off_afterwards():
    model, inputs = small_model(fusion="bottleneck", fusion_layer=1)
    with torch.no_grad():
        reference = model(**inputs).logits
    capture = capture_attention(model, inputs)
    torch.testing.assert_close(capture.output.logits, reference, atol=1e-5, rtol=1e-5)
    attention = [b.attn for layer in range(3) for b in model.encoder.blocks_at(layer).values()]
    assert all(a.fused for a in attention)  # back on the fused kernel
    assert not any(a.probe._forward_hooks for a in attention)  # and unhooked


def test_bottleneck_layers_expose_the_bottleneck_rows_over_each_stream():
    model, inputs = small_model(fusion="bottleneck", fusion_layer=1, num_bottlenecks=3)
    capture = capture_attention(model, inputs, layers=[0, 2])
    assert [(b.layer, b.kind, b.block) for b in capture.blocks] == [
        (0, "separate", "video"), (0, "separate", "audio"), (2, BOTTLENECK, "video"), (2, BOTTLENECK, "audio")]
    video_block = capture.blocks[2]
    n_video = model.config.num_tokens("video")
    assert video_block.probs.shape[1:] == (n_video + 4, n_video + 4)  # 3 bottlenecks + the CLS slot
    rows = capture.query_attention(video_block, BOTTLENECK, "video")
    torch.testing.assert_close(rows, video_block.probs[:, n_video:, 1:n_video].mean(dim=1))
    assert capture.query_attention(video_block, BOTTLENECK, "audio") is None  # the video block never sees audio
    assert cls_share(video_block, "video", BOTTLENECK) == pytest.approx(float(video_block.probs[0, 0, n_video:].sum()))


def test_rollout_of_one_layer_is_attention_plus_identity_renormalised():
    model, inputs = small_model(depth=1, fusion="bottleneck", fusion_layer=1)
    capture = capture_attention(model, inputs)
    rows, joint = attention_rollout(capture)
    for i, m in enumerate(("video", "audio")):
        segment = next(s for s in joint if s.name == m)
        probs = next(b for b in capture.blocks if b.block == m).probs  # head-averaged (batch, n, n)
        expected = 0.5 * probs[:, 0].clone()
        expected[:, 0] += 0.5  # the CLS token's own residual path
        torch.testing.assert_close(rows[:, i, segment.start:segment.stop], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fusion, crosses", [
    (dict(fusion="bottleneck", fusion_layer=4), False),  # late fusion
    (dict(fusion="bottleneck", fusion_layer=3), False),  # one bottleneck layer: its update is never read
    (dict(fusion="bottleneck", fusion_layer=2), True),
    (dict(fusion="vanilla", fusion_layer=3), True),
    (dict(fusion="vanilla", fusion_layer=2, share_weights=True), True),
])
def test_rollout_moves_mass_between_streams_only_where_fusion_connects_them(fusion, crosses):
    model, inputs = small_model(depth=4, **fusion)
    rows, joint = attention_rollout(capture_attention(model, inputs))
    torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:-1]), atol=1e-5, rtol=0)
    assert (rows >= 0).all()
    where = {s.name: s for s in joint}
    video_from_audio = rows[:, 0, where["audio"].start:where["audio"].stop].sum(-1)
    audio_from_video = rows[:, 1, where["video"].start:where["video"].stop].sum(-1)
    if crosses:
        assert (video_from_audio > 1e-3).all() and (audio_from_video > 1e-3).all()
    else:
        assert (video_from_audio == 0).all() and (audio_from_video == 0).all()


def test_rollout_needs_every_layer():
    model, inputs = small_model()
    with pytest.raises(ValueError, match="every layer"):
        attention_rollout(capture_attention(model, inputs, layers=[2]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    manifest = write_toy_set(root, 8)
    out = root / "run"
    train(load_config(toy_config(root, manifest, epochs=1)), out, progress=False)
    return root, out


def _assert_drawn(png):
    image = matplotlib.image.imread(str(png))
    assert image.shape[0] > 400 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # frames, spectrogram, heat maps: far from a blank canvas


def test_attention_command_draws_layers_and_rollout(trained, capsys):
    root, run = trained
    png = root / "maps" / "attention.png"
    assert main(["attention", str(run), str(root / "media" / "train_000.mp4"), "--out", str(png),
                 "--layers", "0,1", "--rollout"]) == 0
    _assert_drawn(png)
    assert "layers 0, 1 + rollout" in capsys.readouterr().out


def test_attention_command_draws_a_file_without_audio(trained, tmp_path):
    from media_factory import write_av

    _, run = trained
    film = tmp_path / "silent.mp4"
    write_av(film, fps=8, seconds=1.5, size=(64, 48), audio=False)
    png = tmp_path / "silent.png"
    assert main(["attention", str(run), str(film), "--out", str(png)]) == 0
    _assert_drawn(png)


def test_attention_command_names_a_layer_that_does_not_exist(trained, tmp_path, capsys):
    root, run = trained
    code = main(["attention", str(run), str(root / "media" / "train_000.mp4"), "--out", str(tmp_path / "x.png"),
                 "--layers", "1,5"])
    assert code == 2
    assert "layer 5" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()

