"""Deployment exports of a trained model: ONNX (onnxruntime, TensorRT, ...) and torch.export's ExportedProgram.

Both take one input per stream, named after it (`video` (B, 3, T, H, W), `audio` (B, T_spec, n_mels), in the
model's stream order) with a dynamic batch axis, and give `logits` (B, num_classes): the fused prediction, before
the softmax / sigmoid. The inputs are what `mbt.Preprocessor` makes from a media file (preprocessor.json beside the
weights says how), so a server decodes, preprocesses, then runs the exported graph.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from mbt.model import MBT

FORMATS = ("onnx", "exported-program")
ONNX_OPSET = 17  # LayerNormalization is a native op from 17 on


class LogitsModule(nn.Module):
    """The model as a function of one keyword tensor per stream, returning the fused logits. Named parameters (not
    *args) so that the exported graphs name their inputs after the streams."""

    def __init__(self, model: MBT):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor | None = None, audio: torch.Tensor | None = None,
                flow: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(video=video, audio=audio, flow=flow).logits


def example_inputs(model: MBT, batch_size: int = 2) -> dict[str, torch.Tensor]:
    """Random inputs of the model's shapes by stream name, in the model's stream order. Batch 2, not 1: an
    exporter may take a batch of 1 for a constant."""
    device = next(model.parameters()).device
    return {m: torch.randn(batch_size, *model.config.input_shape(m), device=device) for m in model.config.modalities}


def export_onnx(model: MBT, out: str | Path, *, opset: int = ONNX_OPSET) -> Path:
    """Write `model` as an ONNX file (inputs named after the streams, dynamic batch axis; output `logits`)."""
    try:
        import onnx
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install 'mbt[export]' (or pip install onnx "
                         "onnxruntime)") from None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = LogitsModule(model).eval()
    inputs = example_inputs(model)
    dynamic = {name: {0: "batch"} for name in [*inputs, "logits"]}
    with warnings.catch_warnings():
        # The TorchScript exporter (the torch.export-based one needs onnxscript) warns that it is the old one, and
        # the tracer that the input-shape check is a constant: it is, for fixed input sizes.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (), str(out), kwargs=inputs, input_names=list(inputs), output_names=["logits"],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    onnx.checker.check_model(str(out))
    return out


def export_program(model: MBT, out: str | Path) -> Path:
    """Write `model` as a torch.export ExportedProgram: `torch.export.load(out).module()(video=v, audio=a)`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(model)
    batch = torch.export.Dim("batch")
    program = torch.export.export(LogitsModule(model).eval(), (), kwargs=inputs,
                                  dynamic_shapes={name: {0: batch} for name in inputs})
    torch.export.save(program, str(out))
    return out


def export_model(model: MBT, fmt: str, out: str | Path) -> Path:
    if fmt == "onnx":
        return export_onnx(model, out)
    if fmt == "exported-program":
        return export_program(model, out)
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
