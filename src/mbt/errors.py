"""Errors every layer may raise; each names what is at fault, so the CLI prints it as one line with an exit code.

Exit codes (documented in the README): 0 ok; 1 the data has problems or the work failed (`DataError`, media errors,
a run that diverged); 2 bad usage or config (`ConfigError`); 3 an input/output failure such as a full disk, a
read-only or unwritable output path (`OutputError`).
"""

from __future__ import annotations

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_IO = 0, 1, 2, 3


class ConfigError(ValueError):
    """A bad configuration file, key or value; the message names the file or the full key (`train.lr`)."""


class DataError(RuntimeError):
    """The data (media, manifests, weights) has problems, or the work failed because of them (exit 1)."""


class OutputError(OSError):
    """Something could not be written: the message names the path and the cause (exit 3)."""
