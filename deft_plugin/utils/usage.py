"""Mistakes in what a command was given, shared by the `deft` and `deft-eval` command lines:
raised as UsageError, told in one line on stderr with exit code 2 (--debug or DEFT_DEBUG=1
shows the traceback instead, for a bug report)."""

from __future__ import annotations

import os
import sys
from typing import Callable


def looks_like_a_path(name: str) -> bool:
    """A model or data name that can only be a local path: a hub id is `name` or `owner/name`."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


class UsageError(Exception):
    """A mistake in what the command was given; the message names the flag and its value."""


def run_reporting_usage_errors(prog: str, command: Callable[[], int], debug: bool = False) -> int:
    """command()'s exit code, or 2 after one line `prog: message` on stderr for a UsageError."""
    try:
        return command()
    except UsageError as err:
        if debug or os.environ.get("DEFT_DEBUG") == "1":
            raise
        # one line even when the message quotes a library's multi-line error
        print(f"{prog}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
