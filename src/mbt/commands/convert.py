"""`mbt convert scenic|vit`: official MBT checkpoints and 2-D ViT weights -> `MBT.from_pretrained` directories."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence


class _IntermixedParser(argparse.ArgumentParser):
    """Lets positionals come after options (`WEIGHTS --out DIR CONFIG`), which plain argparse refuses."""

    _inner = False

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def _model_overrides(items: list[str]) -> dict:
    from mbt.config import ConfigError, split_override

    out = {}
    for item in items:
        section, key, value = split_override(item)
        if section != "model":
            raise ConfigError(f"--set {item!r}: a checkpoint conversion takes model.<key>=value only")
        out[key] = value
    return out


def run_scenic(args: argparse.Namespace) -> int:
    from mbt.interop.scenic import convert_scenic, overrides_from_scenic_config

    overrides = overrides_from_scenic_config(args.scenic_config) if args.scenic_config else {}
    overrides.update(_model_overrides(args.set))
    flags = {"fusion_layer": args.fusion_layer, "num_frames": args.num_frames, "image_size": args.image_size,
             "spec_frames": args.spec_frames, "num_mel_bins": args.num_mel_bins}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    out = convert_scenic(args.checkpoint, args.out, **overrides)
    config = json.loads((out / "config.json").read_text())
    print(f"wrote {out}: {config['fusion']} fusion at layer {config['fusion_layer']} of {config['depth']}, "
          f"{'+'.join(config['modalities'])}, {config['num_classes']} classes; video {config['num_frames']} x "
          f"{config['image_size']}^2, audio {config['spec_frames']} x {config['num_mel_bins']}")
    return 0


def run_vit(args: argparse.Namespace) -> int:
    from mbt import MBT
    from mbt.config import load_config
    from mbt.fileio import write_json
    from mbt.interop.vit import init_from_vit, summarize

    cfg = load_config(args.config, args.set)
    model = MBT(cfg.model)
    report = init_from_vit(model, args.weights, video_kernel_init=args.video_kernel_init, audio_cls=args.audio_cls)
    out = model.save_pretrained(args.out, preprocessing=cfg.preprocessor())
    write_json(out / "vit_init.json", report, what="initialisation report")
    print(summarize(report))
    print(f"wrote {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser(
        "convert", help="import weights: official scenic MBT checkpoints, 2-D ViT (ImageNet-21k) initialisation",
        description="Writes a directory that MBT.from_pretrained, evaluate, predict and train.init_from accept.")
    sub = convert.add_subparsers(dest="convert_command", metavar="SOURCE", required=True,
                                 parser_class=_IntermixedParser)

    scenic = sub.add_parser(
        "scenic", help="an official scenic MBT checkpoint (Flax msgpack, optionally .xz)",
        description="Converts a scenic/Flax MBT checkpoint (TrainState msgpack with optimizer.target, a `params` "
                    "tree or a bare tree; xz-compressed or not) with every leaf mapped exactly once. The variant "
                    "(modalities, fusion kind, shared weights, classifier, sizes) is read off the tree. A "
                    "checkpoint does not store the fusion layer nor the input sizes: give them (flags, or "
                    "--scenic-config), else the defaults below apply. Official rgb is our video, spectrogram our "
                    "audio (fed mono: the 3-channel spectrogram kernel is summed).")
    scenic.add_argument("checkpoint", help="checkpoint file, e.g. checkpoint_0 or checkpoint_0.xz")
    scenic.add_argument("--out", required=True, metavar="DIR", help="output directory")
    scenic.add_argument("--fusion-layer", type=int, metavar="N",
                        help="first fused layer (not stored in a checkpoint); default 8 for 12-layer models, as "
                             "in the third-party inference config for the released ViT-B checkpoints; required "
                             "for other depths")
    scenic.add_argument("--num-frames", type=int, metavar="T",
                        help="video frames (default: from the token count, preferring 224 px frames)")
    scenic.add_argument("--image-size", type=int, metavar="PX", help="video frame side (default: as --num-frames)")
    scenic.add_argument("--spec-frames", type=int, metavar="N",
                        help="spectrogram frames (default: from the token count, preferring 128 mel bins)")
    scenic.add_argument("--num-mel-bins", type=int, metavar="N", help="mel bins (default: as --spec-frames)")
    scenic.add_argument("--scenic-config", metavar="JSON",
                        help="take the fusion layer and input sizes from a JSON config (scenic ConfigDict dump "
                             "or a parity fixture's config.json); the flags above win")
    scenic.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE",
                        help="any other model field, e.g. --set model.multi_label=false (default: true for 527 "
                             "classes) or --set model.drop_path_rate=0.3 (repeatable)")
    scenic.set_defaults(func=run_scenic)

    vit = sub.add_parser(
        "vit", help="a model initialised from 2-D ViT weights (.npz, .safetensors, .pth)",
        description="Builds the model of CONFIG and initialises it from a 2-D ViT as the official code does: "
                    "every block into both streams, the tubelet kernel inflated from the patch kernel, the audio "
                    "kernel summed over RGB, positional embeddings tiled over time (video) and resized (audio, "
                    "bottleneck), the ViT class token into the CLS tokens; the head stays zero. Google .npz "
                    "(vit_jax / big_vision naming, optional opt/target/ prefix) or timm-named .safetensors / .pth "
                    "(read with torch.load(weights_only=True)). Writes vit_init.json, the report of what was "
                    "loaded.")
    vit.add_argument("weights", help="ViT weights, e.g. ViT-B_16.npz (ImageNet-21k) or model.safetensors")
    vit.add_argument("config", nargs="?", default="mbt-base",
                     help="YAML config or preset whose model is built (default: mbt-base, for ViT-B/16)")
    vit.add_argument("--out", required=True, metavar="DIR", help="output directory")
    vit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. --set model.num_classes=309 (repeatable)")
    vit.add_argument("--video-kernel-init", choices=["central_frame", "average", "arp"], default="central_frame",
                     help="inflation of the 2-D patch kernel over the tubelet's frames (default: central_frame, "
                          "the official config's)")
    vit.add_argument("--audio-cls", choices=["copy", "zero"], default="copy",
                     help="copy: the ViT class token also initialises the audio CLS (default); zero: leave it at "
                          "zero, as the official code does by a name mismatch")
    vit.set_defaults(func=run_vit)
