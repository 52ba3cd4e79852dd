"""The pluggy plugin manager for the project's extension points."""

from __future__ import annotations

import functools
import importlib

import pluggy

from deft_plugin.hookspecs import PROJECT, Command, DatasetFormat, DeftSpecs

FORMAT_PREFIX = "deft."  # a dataset format is named `type: deft.<name>` in Axolotl's `datasets:` entries

# Registered from entry points when the project is installed; imported directly when it
# runs from a source tree without its metadata.
BUILTIN_MODULES = ("deft_plugin.data.formats.hh_rlhf", "deft_plugin.data.formats.preference",
                   "deft_plugin.data.formats.listwise",
                   "deft_plugin.filtering.score_variants")


def build_plugin_manager(project: str, specs, builtin_modules) -> pluggy.PluginManager:
    """A plugin manager for `project`'s hookspecs: plugins from its entry-point group, then any
    built-in module the installed metadata did not already register."""
    pm = pluggy.PluginManager(project)
    pm.add_hookspecs(specs)
    pm.load_setuptools_entrypoints(project)
    for name in builtin_modules:
        module = importlib.import_module(name)
        if not pm.is_registered(module):
            pm.register(module, name=name)
    return pm


def merge_unique(groups, kind: str) -> dict:
    """One dict from the (name, value) pairs each plugin returned; a name given twice is an error."""
    merged: dict = {}
    for group in groups:
        for name, value in group:
            if name in merged:
                raise ValueError(f"{kind} {name!r} is registered twice")
            merged[name] = value
    return merged


@functools.lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    return build_plugin_manager(PROJECT, DeftSpecs, BUILTIN_MODULES)


def dataset_formats() -> dict[str, DatasetFormat]:
    return merge_unique((((f.name, f) for f in group) for group in plugin_manager().hook.deft_dataset_formats()),
                        "dataset format")


def score_variants() -> dict:
    return merge_unique((group.items() for group in plugin_manager().hook.deft_score_variants()),
                        "filtering-score variant")


def commands() -> dict[str, Command]:
    return merge_unique((((c.name, c) for c in group) for group in plugin_manager().hook.deft_commands()),
                        "deft command")


def get_format(name: str) -> DatasetFormat:
    formats = dataset_formats()
    if name not in formats:
        raise KeyError(f"unknown DEFT dataset format {name!r}; known: {sorted(formats)}")
    return formats[name]


def format_name(dataset_type) -> str | None:
    """`hh_rlhf` for a dataset `type: deft.hh_rlhf`; None for any other type (Axolotl's own)."""
    if isinstance(dataset_type, str) and dataset_type.startswith(FORMAT_PREFIX):
        return dataset_type[len(FORMAT_PREFIX):]
    return None
