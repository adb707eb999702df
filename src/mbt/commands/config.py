"""`mbt config show CONFIG [--set ...]` and `mbt config keys [--json]`."""

from __future__ import annotations

import argparse

from mbt.fileio import dumps as strict_dumps


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("config", help="show a resolved config, or list every config key",
                              description="Inspect configs: `show` resolves CONFIG with its --set overrides as "
                                          "training would (the YAML written to train_config.yaml); `keys` lists "
                                          "every key with its type, default and help.")
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = sub.add_parser("show", help="the resolved config as YAML")
    show.add_argument("config", help="YAML config path, packaged recipe (audioset, vggsound, ...) or preset name")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. --set train.lr=0.1 (repeatable)")
    show.set_defaults(func=run_show)
    keys = sub.add_parser("keys", help="every key with its type, default and a line of help")
    keys.add_argument("--json", action="store_true", help="print JSON (a list of {key, type, default, help})")
    keys.set_defaults(func=run_keys)


def run_show(args: argparse.Namespace) -> int:
    from mbt.config import load_config

    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def run_keys(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from mbt.config.keys import describe_keys

    docs = describe_keys()
    if args.json:
        print(strict_dumps([asdict(d) for d in docs], indent=1))
        return 0
    key_width = max(len(d.key) for d in docs)
    type_width = min(max(len(d.type) for d in docs), 40)
    for d in docs:
        print(f"{d.key:{key_width}s}  {d.type:{type_width}s}  default {strict_dumps(d.default)}\n"
              f"{'':{key_width}s}  {d.help}")
    return 0
