"""How a config that fails validation reaches the user of `axolotl preprocess` / `axolotl train`.

Axolotl lets the pydantic error of its config travel to the top, where Python prints it after a
60-250-line traceback of click, telemetry and pydantic frames: the plugin's own messages (a misspelt
key, a ratio out of range, a format DPO cannot train on) sit at its very end. A plugin cannot catch
that error, but Axolotl loads it (`register`) before validating the config, so it can choose how an
uncaught config error is printed: one line per error, the key first. DEFT_DEBUG=1 keeps the traceback.
Under `axolotl train`'s default accelerate launcher this applies to the training process; the
launcher's own report of the failed process follows it."""

from __future__ import annotations

import os
import sys

from pydantic import ValidationError


def error_lines(error: ValidationError) -> list[str]:
    """Each error of a validation error as `key: message`."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        lines.append(message if not where or message.startswith(where) else f"{where}: {message}")
    return lines


def is_config_error(error: BaseException) -> bool:
    """A validation error of Axolotl's config schema (which has the plugin's keys merged in)."""
    return isinstance(error, ValidationError) and error.title.startswith("Axolotl")


def show_config_errors_briefly() -> None:
    """From now on in this process, an uncaught config error prints as one line per error."""
    previous = sys.excepthook
    if getattr(previous, "shows_config_errors_briefly", False):
        return

    def excepthook(kind, error, traceback):
        if not is_config_error(error) or os.environ.get("DEFT_DEBUG") == "1":
            return previous(kind, error, traceback)
        lines = error_lines(error)
        print(f"axolotl: the config is not valid ({len(lines)} error{'s' * (len(lines) > 1)}; "
              "DEFT_DEBUG=1 shows the traceback):", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)

    excepthook.shows_config_errors_briefly = True
    sys.excepthook = excepthook
