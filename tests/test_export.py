"""`mbt export`: the ONNX graph run by onnxruntime and the torch.export program give the PyTorch logits, for
bottleneck, vanilla and late fusion, at a batch size other than the one exported with."""

from __future__ import annotations

import pytest
import torch

from mbt import MBT, MBTConfig
from mbt.cli import main
from mbt.interop.export import export_onnx, export_program
from mbt.media.preprocess import PreprocessorConfig

FUSIONS = {"bottleneck": dict(fusion="bottleneck", fusion_layer=1), "vanilla": dict(fusion="vanilla", fusion_layer=1),
           "late": dict(fusion="bottleneck", fusion_layer=3)}


def tiny_model(modalities=("video", "audio"), **fusion) -> MBT:
    cfg = MBTConfig.preset("mbt-tiny", depth=3, width=32, num_heads=2, mlp_dim=64, num_frames=4, image_size=32,
                           spec_frames=48, num_mel_bins=16, num_classes=5, drop_path_rate=0.0,
                           modalities=modalities, **fusion)
    torch.manual_seed(0)
    model = MBT(cfg).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # the zero-initialised head would give all-zero logits
    return model


def inputs(model: MBT, batch_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch_size)
    return {m: torch.randn(batch_size, *model.config.input_shape(m), generator=generator)
            for m in model.config.modalities}


@pytest.mark.parametrize("fusion", list(FUSIONS))
def test_onnx_runs_in_onnxruntime_with_the_pytorch_logits(fusion, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model(**FUSIONS[fusion])
    path = export_onnx(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["video", "audio"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert session.get_inputs()[0].shape[0] == "batch"  # a dynamic batch axis
    for batch_size in (1, 3):
        x = inputs(model, batch_size)
        (onnx_logits,) = session.run(None, {k: v.numpy() for k, v in x.items()})
        with torch.no_grad():
            expected = model(**x).logits
        assert onnx_logits.shape == (batch_size, 5)
        torch.testing.assert_close(torch.from_numpy(onnx_logits), expected, atol=1e-4, rtol=0)
        assert expected.abs().max() > 1e-2  # logits that could differ


def test_onnx_of_a_single_stream_model_has_one_input(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model(modalities=("audio",), fusion_layer=3)
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "audio.onnx")))
    assert [i.name for i in session.get_inputs()] == ["audio"]


@pytest.mark.parametrize("fusion", ["bottleneck", "late"])
def test_exported_program_loads_and_matches(fusion, tmp_path):
    model = tiny_model(**FUSIONS[fusion])
    path = export_program(model, tmp_path / "model.pt2")
    program = torch.export.load(str(path)).module()
    for batch_size in (1, 4):
        x = inputs(model, batch_size)
        with torch.no_grad():
            torch.testing.assert_close(program(**x), model(**x).logits, atol=1e-5, rtol=0)


def test_export_command_writes_a_file_and_reports_io_errors(tmp_path, capsys):
    model = tiny_model(**FUSIONS["bottleneck"])
    prep = PreprocessorConfig(num_frames=4, image_size=32, short_side=36, num_mel_bins=16, spec_frames=48,
                              spec_mean=0.0, spec_std=1.0, class_names=list("abcde"))
    model.save_pretrained(tmp_path / "run", preprocessing=prep.to_dict())
    out = tmp_path / "model.onnx"
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "video (batch, 3, 4, 32, 32)" in capsys.readouterr().out
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["export", str(tmp_path / "run"), "--format", "exported-program", "--out",
                 str(blocker / "x.pt2")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0]


def test_a_missing_onnx_package_is_one_clear_line(tmp_path, monkeypatch, capsys):
    model = tiny_model(**FUSIONS["late"])
    prep = PreprocessorConfig(num_frames=4, image_size=32, short_side=36, num_mel_bins=16, spec_frames=48,
                              spec_mean=0.0, spec_std=1.0)
    model.save_pretrained(tmp_path / "run", preprocessing=prep.to_dict())
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # `import onnx` now raises ImportError
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'mbt[export]'" in err[0]
    assert not (tmp_path / "m.onnx").exists()
