"""deft_eval's extension points (pluggy, the same style as deft_plugin's).

A scorer rates generated answers against their references. Built-in scorers (reward model,
BLEU, BARTScore) register through the `deft_eval` entry-point group exactly like third-party ones.

Records are dicts from `deft-eval generate`: `id`, `subset`, `prompt`, `answer`, `chosen`
(the reference), `rejected`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pluggy

PROJECT = "deft_eval"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class Scorer:
    name: str
    # per_record(records, options) -> one {metric: value} per record, in order
    per_record: Callable[[list[dict], dict], list[dict[str, float]]] | None = None
    # corpus(records, options) -> {metric: value} over the records together (one subset or all)
    corpus: Callable[[list[dict], dict], dict] | None = None
    description: str = ""
    options: dict = field(default_factory=dict)  # option name -> help text


class EvalSpecs:
    @hookspec
    def deft_eval_scorers(self) -> list[Scorer]:
        """Scorers this plugin provides, selected with `deft-eval score --scorers <name>,...`.

        Called with no arguments by `deft_eval.registry.scorers()` (cached per process).

        :return: a list of :class:`Scorer`. ``per_record(records, options)`` returns one
            ``{metric: value}`` dict per record, in order; ``corpus(records, options)`` returns
            ``{metric: value}`` over the records of one subset (and over all); either may be None.
            ``options`` holds the command's settings (``reward_model``, ``bart_model``,
            ``batch_size``, ``device``); ``Scorer.options`` documents the keys a scorer reads.

        Merging: the lists of every registered plugin are joined by ``name``; a name given twice
        raises ``ValueError`` naming it, so a plugin cannot replace a built-in scorer.
        """
