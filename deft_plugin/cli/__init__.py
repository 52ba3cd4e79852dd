"""The `deft` command line: qdiff, inspect, score, filter, formats and the demo."""

from deft_plugin.cli.main import main

__all__ = ["main"]
