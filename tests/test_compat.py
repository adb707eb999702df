"""Directories written by earlier versions keep loading and predicting the same logits."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from mbt import MBT
from mbt.media.preprocess import Preprocessor
from mbt.media.settings import PreprocessorConfig

# `mbt train` output of version 0.1.0 (the hand-written config, before the typed schema): a 2-layer model trained
# on the engine tests' toy set, with fixed random inputs and a real clip and the logits 0.1.0 gave for them.
RUN_V0_1_0 = Path(__file__).parent / "fixtures" / "run_v0_1_0"


def test_a_run_directory_of_version_0_1_0_loads_and_predicts_the_same_logits():
    model = MBT.from_pretrained(RUN_V0_1_0).eval()
    expected = load_file(str(RUN_V0_1_0 / "expected.safetensors"))
    with torch.no_grad():
        logits = model(video=expected["video"], audio=expected["audio"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-6, rtol=1e-5)
    assert expected["logits"].abs().max() > 0.05  # a trained head: the comparison means something


def test_its_preprocessing_loads_as_the_typed_object_and_feeds_the_model_as_before():
    model = MBT.from_pretrained(RUN_V0_1_0).eval()
    assert isinstance(model.preprocessing, PreprocessorConfig)
    assert model.preprocessing == PreprocessorConfig.load(RUN_V0_1_0)
    assert model.preprocessing.class_names == ["bright", "dark"]
    sample = Preprocessor(model.preprocessing)(RUN_V0_1_0 / "clip.mp4", train=False)
    with torch.no_grad():
        logits = model(**{m: x[None] for m, x in sample.inputs.items()}).logits
    expected = load_file(str(RUN_V0_1_0 / "expected_clip.safetensors"))["clip_logits"]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


def test_saving_it_again_writes_the_same_preprocessor_json(tmp_path):
    model = MBT.from_pretrained(RUN_V0_1_0)
    model.save_pretrained(tmp_path)
    assert PreprocessorConfig.load(tmp_path) == model.preprocessing
    assert MBT.from_pretrained(tmp_path).config == model.config
