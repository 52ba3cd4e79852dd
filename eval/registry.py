"""The pluggy plugin manager for deft_eval's scorers (built like deft_plugin's)."""

from __future__ import annotations

import functools

import pluggy

from deft_eval.hookspecs import PROJECT, EvalSpecs, Scorer
from deft_plugin.registry import build_plugin_manager, merge_unique

# Registered from entry points when installed; imported directly from a source tree.
BUILTIN_MODULES = ("deft_eval.scorers.reward", "deft_eval.scorers.bleu", "deft_eval.scorers.bartscore")


@functools.lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    return build_plugin_manager(PROJECT, EvalSpecs, BUILTIN_MODULES)


def scorers() -> dict[str, Scorer]:
    return merge_unique((((s.name, s) for s in group) for group in plugin_manager().hook.deft_eval_scorers()),
                        "scorer")
