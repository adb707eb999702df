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
import traceback

from mbt import __version__
from mbt.errors import EXIT_DATA, EXIT_IO, EXIT_USAGE, ConfigError, DataError, OutputError

COMMANDS = ["demo", "train", "evaluate", "predict", "export", "flops", "attention", "data", "convert", "sweep",
            "config"]


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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`mbt predict ... | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"mbt {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # every failure is one line and an exit code (errors.py); -v adds the traceback
        code, line = describe_failure(args.command, e)
        if args.verbose:
            traceback.print_exc()
        print(line, file=sys.stderr)
        return code


def describe_failure(command: str, error: Exception) -> tuple[int, str]:
    """(exit code, one line) for an exception that ends a command."""
    first = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, ConfigError):
        return EXIT_USAGE, f"mbt: config error: {first}"
    if isinstance(error, OutputError):
        return EXIT_IO, f"mbt {command}: output error: {first}"
    if isinstance(error, DataError) or type(error).__name__ == "MediaError":  # media errors: a data problem
        return EXIT_DATA, f"mbt {command}: error: {first}"
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError)):
        return EXIT_USAGE, f"mbt {command}: error: {first}"
    if isinstance(error, OSError):
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        return EXIT_IO, f"mbt {command}: I/O error: {where}{error.strerror or first}"
    return EXIT_DATA, (f"mbt {command}: internal error: {type(error).__name__}: {first[:300]} "
                       "(run with -v for the traceback, and please report it)")


if __name__ == "__main__":
    sys.exit(main())
