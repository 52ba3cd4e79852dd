"""The project's own extension points (pluggy), pytest-style: specs here, implementations
marked with `hookimpl` in any module that an installed distribution lists under the
`deft_plugin` entry-point group. The built-in formats and score variants register that way
too (deft_plugin.registry.BUILTIN_MODULES when running from a source tree).

A dataset format turns one raw row into either a TRL preference row (`prompt`, `chosen`,
`rejected`) or a ranked row (`prompt`, `responses` best first, optional `rewards`), as
text or as chat messages depending on the prompt style. DPO trains on preference rows;
PRO trains on both (a preference row is a ranking of two).
"""

from __future__ import annotations

import argparse
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


@dataclass(frozen=True)
class Command:
    """A `deft` subcommand provided by a plugin (the study harness adds `deft study` this way)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # the exit code; UsageError for a mistake in the arguments


class DeftSpecs:
    @hookspec
    def deft_dataset_formats(self) -> list[DatasetFormat]:
        """Dataset formats this plugin provides.

        Called with no arguments, once per process (the registry caches its plugin manager), by
        `deft_plugin.registry.dataset_formats()`: when Axolotl validates a config
        (`datasets[i].type: deft.<name>`), when the plugin's load_datasets hook reads the data, and
        by `deft formats` / `deft score --format`.

        :return: a list of :class:`DatasetFormat`. Its ``parse(row, style)`` gets one raw row (a
            dict from the file or hub dataset) and the prompt style (``"chat_template"`` or
            ``"raw"``) and returns a preference row (``prompt``, ``chosen``, ``rejected``) or a
            ranked row (``prompt``, ``responses`` best first, optional ``rewards``), as text or chat
            messages; it raises :class:`RowError` with a reason for a row it cannot parse (the row
            is counted and named in the report, never dropped silently).

        Merging: the lists of every registered plugin are joined into one mapping by ``name``.
        A name given twice, by two plugins or twice by one, raises ``ValueError`` naming it, the
        first time the formats are asked for; a plugin cannot override a built-in format.
        """

    @hookspec
    def deft_score_variants(self) -> dict[str, ScoreVariant]:
        """Filtering-score variants this plugin provides, selected by `deft_filter_score: <name>`.

        Called with no arguments by `deft_plugin.registry.score_variants()`: at config validation
        and once per filtering run.

        :return: a dict of name -> ``f(r_chosen, r_rejected)``, elementwise over float tensors of
            the same shape: R of the best reply and the mean R of the others (R(y+), R(y-) for a
            pair); the result is the score by which the top pairs are kept (higher is kept first,
            ties by dataset order, NaN refused).

        Merging: the dicts of every registered plugin are joined; a name given twice raises
        ``ValueError`` naming it, so a plugin cannot replace ``delta`` or ``chosen``.
        """

    @hookspec
    def deft_commands(self) -> list[Command]:
        """Subcommands this plugin adds to the `deft` command line.

        Called with no arguments by `deft_plugin.registry.commands()` when `deft` builds its
        parser. A package that sits above deft_plugin (it imports the plugin, the plugin does not
        import it) adds its command this way: `deft study` comes from the study harness.

        :return: a list of :class:`Command`: ``add_arguments(parser)`` declares the subcommand's
            arguments, ``run(args)`` runs it and returns the exit code.

        Merging: the lists of every registered plugin are joined by ``name``; a name given twice,
        or one of `deft`'s own subcommands, raises ``ValueError`` naming it.
        """
