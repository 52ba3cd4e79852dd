"""Whether a config lists the plugin: read by the hooks and by the config schema, which Axolotl
0.21 applies to every config of a process. It names the plugin class by its dotted name rather
than importing it, so the schema (args) does not import the plugin that imports the schema."""

from __future__ import annotations

import functools
import importlib

PLUGIN_CLASS = "deft_plugin.integration.plugin.DEFTPlugin"


@functools.lru_cache(maxsize=None)
def resolve_class(name: str) -> type | None:
    """The class a dotted name names (`module.Class` or `module:Class`, as Axolotl reads a
    `plugins:` entry), or None when it does not import: Axolotl reports that itself."""
    module, sep, attr = name.replace(":", ".").rpartition(".")
    if not sep:
        return None
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None
    return found if isinstance(found, type) else None


def is_deft_plugin(cls: type | None) -> bool:
    """DEFTPlugin or a subclass of it."""
    return cls is not None and any(f"{c.__module__}.{c.__qualname__}" == PLUGIN_CLASS for c in cls.__mro__)


def deft_enabled(cfg) -> bool:
    """Whether the config lists DEFTPlugin (or a subclass), by whatever path it names it."""
    return any(is_deft_plugin(resolve_class(str(name))) for name in (cfg.get("plugins") or []))
