"""Every hook of the project's pluggy specs (deft_plugin and deft_eval), and every built-in
plugin registered for them, is exercised by a test: this test fails when one is added
without a test naming it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from deft_eval import hookspecs as eval_specs
from deft_eval.registry import BUILTIN_MODULES as EVAL_BUILTINS, scorers
from deft_plugin import hookspecs as plugin_specs
from deft_plugin.registry import BUILTIN_MODULES as PLUGIN_BUILTINS, dataset_formats, score_variants

TESTS = {p.name: p.read_text() for p in Path(__file__).parent.glob("test_*.py") if p.name != Path(__file__).name}


def hook_names(spec_class) -> list[str]:
    return [name for name, fn in inspect.getmembers(spec_class, inspect.isfunction)
            if getattr(fn, plugin_specs.PROJECT + "_spec", None) or getattr(fn, eval_specs.PROJECT + "_spec", None)]


def naming(word: str) -> list[str]:
    return [name for name, text in TESTS.items() if word in text]


@pytest.mark.parametrize("spec_class", [plugin_specs.DeftSpecs, eval_specs.EvalSpecs])
def test_every_hook_has_a_test(spec_class):
    names = hook_names(spec_class)
    assert names, f"no hookspecs found on {spec_class.__name__}"
    assert [n for n in names if not naming(n)] == []


def test_every_builtin_plugin_has_a_test():
    modules = [m.rsplit(".", 1)[1] for m in PLUGIN_BUILTINS + EVAL_BUILTINS]
    assert [m for m in modules if not naming(m)] == []
    provided = [*dataset_formats(), *score_variants(), *scorers()]
    assert [name for name in provided if not naming(f'"{name}"')] == []
