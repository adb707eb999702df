"""`mbt` command line: a thin layer that parses arguments and calls the library.

Each command group lives in `mbt.commands.<name>` and exposes `register(subparsers)`; heavy imports (torch, numpy,
PyAV, matplotlib, the config schema) stay inside the command functions so that `mbt --help` is instant
(`benchmarks/cli_startup.py` measures it; a test checks that importing this module loads no torch).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
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
    args, extra = parser.parse_known_args(argv)  # --help and --version end here, before anything heavy
    # Python < 3.12 argparse gives an empty list to a `nargs="*"` positional that is followed by an option
    # (`mbt predict RUN --top-k 3 a.mp4`), leaving the files unrecognised: a command naming such a positional in
    # `trailing_positionals` gets them back.
    trailing = getattr(args, "trailing_positionals", None)
    if extra and trailing and not any(e.startswith("-") for e in extra):
        getattr(args, trailing).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
    except BrokenPipeError:  # the reader went away (`mbt predict ... | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        from mbt.media.decode import MediaError  # imported only now: it loads PyAV and torch

        if isinstance(e, MediaError):  # a media file that cannot give what the command needs: a data problem
            print(f"mbt {args.command}: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
