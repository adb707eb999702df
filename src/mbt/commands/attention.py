"""`mbt attention CHECKPOINT VIDEO --out PNG [--layers 0,2,...] [--rollout]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="attention maps overlaid on frames and spectrogram",
                       description="Runs a trained model on the centre clip of VIDEO and draws, for the chosen "
                                   "layers, the attention of each stream's CLS token and of the bottleneck tokens "
                                   "(averaged over heads) to the video patches, overlaid on frames, and to the "
                                   "spectrogram patches, overlaid on the spectrogram; --rollout adds attention "
                                   "rollout over all layers (Abnar & Zuidema 2020).")
    p.add_argument("checkpoint", help="a from_pretrained directory (output of mbt train / mbt convert)")
    p.add_argument("video", metavar="VIDEO", help="a media file")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--layers", default=None,
                   help="comma-separated layer indices (default: the fusion layer and the last layer)")
    p.add_argument("--rollout", action="store_true", help="add attention rollout of the CLS tokens")
    p.add_argument("--frames", type=int, default=4, help="video frames to show (default 4)")
    p.set_defaults(func=run)


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--layers {text!r}: expected comma-separated integers, e.g. 0,2") from None


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from mbt.analysis.attention import capture_attention, default_layers, plot_attention_maps
    from mbt.engine.evaluate import load_for_inference
    from mbt.engine.predict import scores_from_logits
    from mbt.errors import DataError
    from mbt.media.decode import probe_tracks
    from mbt.model.fusion import describe_fusion

    log = logging.getLogger("mbt.attention")
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    model, preprocessor = load_for_inference(args.checkpoint)
    layers = _parse_layers(args.layers) or default_layers(model)
    tracks = probe_tracks(args.video, model.config.modalities)
    wanted = tracks.present
    if not wanted:  # a data problem (exit 1), like a file that does not decode
        raise DataError(f"{args.video}: has none of the model's streams {model.config.modalities}")
    for m in tracks.missing:
        log.warning("%s: no %s track; drawing the attention of %s alone", args.video, m, ", ".join(wanted))
    sample = preprocessor(args.video, modalities=wanted)
    for warning in sample.warnings:
        log.warning("%s: %s", args.video, warning)
    inputs = {m: x.unsqueeze(0) for m, x in sample.inputs.items()}
    # the rollout multiplies through every layer, so it needs them all captured
    capture = capture_attention(model, inputs, None if args.rollout else layers)

    cfg = model.config
    names = preprocessor.cfg.class_names or [str(i) for i in range(cfg.num_classes)]
    _, scores, offset = scores_from_logits(capture.output.logits[0].float(), model)[0]
    best = int(torch.argmax(scores))
    fusion = describe_fusion(cfg)
    title = (f"{args.video}\nmodel {args.checkpoint}: {fusion}; prediction {names[offset + best]} "
             f"({float(scores[best]):.2f})")
    out = plot_attention_maps(model, capture, inputs, args.out, layers=layers, rollout=args.rollout,
                              num_frames=args.frames, value_range=preprocessor.cfg.value_range, title=title)
    print(f"attention maps of layers {', '.join(map(str, layers))}{' + rollout' if args.rollout else ''}: {out}")
    return 0
