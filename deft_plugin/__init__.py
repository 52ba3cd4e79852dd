"""DEFT: distribution-guided efficient fine-tuning, as an Axolotl plugin.

`DEFTPlugin` is imported lazily so that the core and the `deft` command line work without
Axolotl installed."""

__version__ = "0.1.0"
__all__ = ["DEFTPlugin"]


def __getattr__(name):
    if name == "DEFTPlugin":
        from deft_plugin.integration.plugin import DEFTPlugin

        return DEFTPlugin
    raise AttributeError(f"module 'deft_plugin' has no attribute {name!r}")
