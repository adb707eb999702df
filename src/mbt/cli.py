"""`mbt` command line: a thin layer that parses arguments and calls the library.

Each command group lives in `mbt.commands.<name>` and exposes `register(subparsers)`; heavy imports stay inside
the command functions so that `mbt --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mbt.errors import ConfigError
from mbt.media.decode import MediaError

COMMANDS = ["demo", "train", "evaluate", "predict", "flops", "attention", "data", "convert", "sweep", "config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mbt", description="Multimodal Bottleneck Transformer: audiovisual classification from video files.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    args = parser.parse_args(argv)
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
    except MediaError as e:  # a media file a command cannot do without (str: "path: kind: reason")
        print(f"mbt {args.command}: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"mbt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
