"""Errors every layer may raise; each names what is at fault so the CLI can print it as one line."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration file, key or value; the message names the file or the full key (`train.lr`)."""
