"""The project's own extension points (pluggy).

Built-in dataset formats and filtering-score variants are registered through the
`deft_plugin` entry-point group exactly like third-party plugins.

A dataset format turns one raw row into either a TRL preference row (`prompt`, `chosen`,
`rejected`) or a ranked row (`prompt`, `responses` best first, optional `rewards`), as
text or as chat messages depending on the prompt style. DPO trains on preference rows;
PRO trains on both (a preference row is a ranking of two).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import pluggy

PROJECT = "deft_plugin"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

PROMPT_STYLES = ("chat_template", "raw")


class RowError(ValueError):
    """A raw row that cannot become a preference pair; the message is the reason."""


class RowParser(Protocol):
    def __call__(self, row: dict, style: str) -> dict: ...


@dataclass(frozen=True)
class DatasetFormat:
    name: str  # used as `type: deft.<name>` in Axolotl's `datasets:` entries
    parse: RowParser
    description: str = ""


# score(r_chosen, r_rejected) -> filtering score, elementwise over tensors
ScoreVariant = Callable[..., object]


class DeftSpecs:
    @hookspec
    def deft_dataset_formats(self) -> list[DatasetFormat]:
        """Dataset formats this plugin provides."""

    @hookspec
    def deft_score_variants(self) -> dict[str, ScoreVariant]:
        """Filtering-score variants: name -> f(r_chosen, r_rejected)."""
