"""The pluggy plugin manager for the project's extension points."""

from __future__ import annotations

import functools
import importlib

import pluggy

from deft_plugin.hookspecs import PROJECT, DatasetFormat, DeftSpecs

# Registered from entry points when the project is installed; imported directly when it
# runs from a source tree without its metadata.
BUILTIN_MODULES = ("deft_plugin.formats.hh_rlhf", "deft_plugin.formats.preference", "deft_plugin.formats.listwise",
                   "deft_plugin.score_variants")


@functools.lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(DeftSpecs)
    pm.load_setuptools_entrypoints(PROJECT)
    for name in BUILTIN_MODULES:
        module = importlib.import_module(name)
        if not pm.is_registered(module):
            pm.register(module, name=name)
    return pm


def dataset_formats() -> dict[str, DatasetFormat]:
    formats: dict[str, DatasetFormat] = {}
    for group in plugin_manager().hook.deft_dataset_formats():
        for fmt in group:
            if fmt.name in formats:
                raise ValueError(f"dataset format {fmt.name!r} is registered twice")
            formats[fmt.name] = fmt
    return formats


def score_variants() -> dict:
    variants: dict = {}
    for group in plugin_manager().hook.deft_score_variants():
        for name, fn in group.items():
            if name in variants:
                raise ValueError(f"filtering-score variant {name!r} is registered twice")
            variants[name] = fn
    return variants


def get_format(name: str) -> DatasetFormat:
    formats = dataset_formats()
    if name not in formats:
        raise KeyError(f"unknown DEFT dataset format {name!r}; known: {sorted(formats)}")
    return formats[name]
