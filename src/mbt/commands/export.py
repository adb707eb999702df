"""`mbt export CHECKPOINT --format onnx|exported-program --out FILE`."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="ONNX or torch.export file of a trained model, for serving",
                       description="Exports the model as a graph: one input per stream, named after it (video "
                                   "(B, 3, T, H, W), audio (B, T_spec, n_mels)) with a dynamic batch axis, and the "
                                   "output `logits` (B, classes), before softmax/sigmoid. Inputs are what "
                                   "mbt.Preprocessor makes (preprocessor.json beside the weights).")
    p.add_argument("checkpoint", help="a from_pretrained directory (output of mbt train / mbt convert)")
    p.add_argument("--format", required=True, choices=("onnx", "exported-program"),
                   help="onnx (onnxruntime, TensorRT, ...) or exported-program (torch.export.save, .pt2)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (e.g. model.onnx, model.pt2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mbt.engine.evaluate import load_for_inference
    from mbt.interop.export import export_model

    model, preprocessor = load_for_inference(args.checkpoint)
    try:
        out = export_model(model, args.format, args.out)
    except OSError as e:
        print(f"mbt export: error: {args.out}: cannot write: {e.strerror or e}", file=sys.stderr)
        return 3
    shapes = ", ".join(f"{m} (batch, {', '.join(map(str, model.config.input_shape(m)))})"
                       for m in model.config.modalities)
    print(f"{args.format}: {out}\n  inputs: {shapes}\n  output: logits (batch, {model.config.num_classes})"
          f"{'; sigmoid for scores' if model.config.multi_label else '; softmax for scores'}")
    return 0
