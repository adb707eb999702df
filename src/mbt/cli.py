"""`mbt` command line: a thin layer that parses arguments and calls the library.

Each command group lives in `mbt.commands.<name>` and exposes `register(subparsers)`; heavy imports (torch, numpy,
PyAV, matplotlib, the config schema) stay inside the command functions so that `mbt --help` is instant
(`benchmarks/cli_startup.py` measures it; a test checks that importing this module loads no torch).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mbt import __version__

COMMANDS = ["demo", "train", "evaluate", "predict", "export", "flops", "attention", "data", "convert", "sweep"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mbt", description="Multimodal Bottleneck Transformer: audiovisual classification from video files.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-V", "--version", action="version", version=f"mbt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mbt.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"mbt.commands.{name}":
                raise
            continue  # a command group that is not part of this build
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and --version end here, before anything heavy is imported
    from mbt.config import ConfigError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"mbt: config error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"mbt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
