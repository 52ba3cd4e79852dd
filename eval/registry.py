"""The pluggy plugin manager for deft_eval's scorers."""

from __future__ import annotations

import functools
import importlib

import pluggy

from deft_eval.hookspecs import PROJECT, EvalSpecs, Scorer

# Registered from entry points when installed; imported directly from a source tree.
BUILTIN_MODULES = ("deft_eval.scorers.reward", "deft_eval.scorers.bleu", "deft_eval.scorers.bartscore")


@functools.lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(EvalSpecs)
    pm.load_setuptools_entrypoints(PROJECT)
    for name in BUILTIN_MODULES:
        module = importlib.import_module(name)
        if not pm.is_registered(module):
            pm.register(module, name=name)
    return pm


def scorers() -> dict[str, Scorer]:
    out: dict[str, Scorer] = {}
    for group in plugin_manager().hook.deft_eval_scorers():
        for scorer in group:
            if scorer.name in out:
                raise ValueError(f"scorer {scorer.name!r} is registered twice")
            out[scorer.name] = scorer
    return out
