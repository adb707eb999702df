"""Colour augmentation per batch on the training device (issue 19): the loader draws each clip's parameters and
sends the uint8 crop; `finish_video` on the collated batch must give every clip the inputs the loader-side path
gives it, so moving the work changes no distribution and exact resume still holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mbt.data.datasets import ClipDataset, collate
from mbt.data.manifest import ManifestRow
from mbt.media import transforms as T
from mbt.media.preprocess import Preprocessor
from mbt.media.settings import PreprocessorConfig
from media_factory import write_av


def small_config(**overrides) -> PreprocessorConfig:
    values = dict(num_frames=8, fps=25.0, frame_stride=2, image_size=64, short_side=72, num_mel_bins=64,
                  spec_frames=200, spec_mean=-4.0, spec_std=4.0, color_aug_prob=0.8, color_drop_prob=0.3)
    return PreprocessorConfig(**{**values, **overrides})


def colourful(index: int, t: float):
    # saturated, varied colours: hue / saturation / contrast changes show in every channel
    import numpy as np
    yy, xx = np.mgrid[0:120, 0:160]
    r = 128 + 120 * np.sin(xx / 11.0 + t * 4)
    g = 128 + 120 * np.cos(yy / 7.0 - t * 3)
    b = 128 + 120 * np.sin((xx + yy) / 17.0 + index)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("colour")
    return [write_av(folder / f"c{i}.mp4", seconds=2.0, size=(160, 120), fps=25, sample_rate=16000,
                     frame_fn=colourful).path for i in range(3)]


def test_drawn_parameters_follow_the_generator_as_color_augment_and_drop_do():
    for seed in range(40):
        a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        params = T.draw_colour(a, prob=0.8, drop_prob=0.3)
        video = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(100 + seed))
        T.color_drop(T.color_augment(video, b, prob=0.8), b, prob=0.3)
        # the generators end in the same state: what is drawn after (SpecAugment) does not move
        assert torch.equal(a.get_state(), b.get_state())
        assert params[0] in (0.0, 1.0) and params[5] in (0.0, 1.0)
        if params[0] == 0:
            assert params[1:5].tolist() == list(T.IDENTITY_COLOUR[1:5])
        else:
            assert abs(params[1]) <= 32 / 255 and 0.6 <= params[2] <= 1.4 and 0.6 <= params[3] <= 1.4
            assert abs(params[4]) <= 0.2


def test_finish_video_gives_each_clip_the_loader_side_result():
    pre = Preprocessor(small_config())
    frames = torch.randint(0, 256, (8, 80, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loader_side, crops, colours = [], [], []
    for seed in range(16):  # 0.8 / 0.3: jittered, untouched and grey clips all occur
        loader_side.append(pre.video_tensor(frames, train=True, generator=torch.Generator().manual_seed(seed)))
        crop, colour = pre.video_crop(frames, torch.Generator().manual_seed(seed))
        assert crop.dtype == torch.uint8 and crop.shape == (8, 64, 64, 3)
        crops.append(crop)
        colours.append(colour)
    colours = torch.stack(colours)
    assert {0.0, 1.0} <= set(colours[:, 0].tolist()) and 1.0 in colours[:, 5].tolist()
    # finish_video goes clip by clip on the CPU; finish_batch is the whole-batch computation a GPU runs
    for finish in (T.finish_video, T.finish_batch):
        batch_side = finish(torch.stack(crops), colours, (-1.0, 1.0))
        assert batch_side.shape == (16, 3, 8, 64, 64) and batch_side.is_contiguous()
        for seed in range(16):
            torch.testing.assert_close(batch_side[seed], loader_side[seed], atol=1e-6, rtol=0)
    # without parameters only the conversion: the evaluation path's numbers
    plain = T.finish_video(torch.stack(crops[:2]), None, (-1.0, 1.0))
    assert torch.equal(plain[0], T.to_model_range(T.to_float(crops[0])))


def test_deferred_dataset_items_finish_to_the_loader_side_items(clips):
    pre = Preprocessor(small_config())
    rows = [ManifestRow(path, ("a",), None, None, line=i + 2) for i, path in enumerate(clips)]
    common = dict(train=True, modalities=("video", "audio"), seed=3)
    eager = ClipDataset(rows, ["a"], pre, **common)
    deferred = ClipDataset(rows, ["a"], pre, deferred_video=True, **common)
    for epoch in (0, 1):
        eager.set_epoch(epoch)
        deferred.set_epoch(epoch)
        want = collate([eager[i] for i in range(len(rows))])
        got = collate([deferred[i] for i in range(len(rows))])
        assert got["inputs"]["video"].dtype == torch.uint8 and got["colour"].shape == (len(rows), 6)
        assert "colour" not in want
        video = T.finish_video(got["inputs"]["video"], got["colour"], pre.cfg.value_range)
        torch.testing.assert_close(video, want["inputs"]["video"], atol=1e-6, rtol=0)
        # the same generator draws in the same order: the spectrogram masks are the same too
        assert torch.equal(got["inputs"]["audio"], want["inputs"]["audio"])


def test_evaluation_items_are_not_deferred(clips):
    pre = Preprocessor(small_config())
    rows = [ManifestRow(clips[0], ("a",), None, None, line=2)]
    item = ClipDataset(rows, ["a"], pre, train=False, modalities=("video",), deferred_video=True)[0]
    assert item["inputs"]["video"].dtype == torch.float32 and "colour" not in item
