"""Every hook of the project's pluggy specs (deft_plugin and deft_eval), every built-in plugin
module and every name those plugins provide has a test of its own: a test function that says so
with `@pytest.mark.covers("hook:NAME" | "plugin:MODULE" | "format:NAME" | "score:NAME" |
"scorer:NAME")` and asserts something. A name that merely appears in some test file no longer
counts. The marks are read from the test files (ast), so the check holds under -k too."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from deft_eval import hookspecs as eval_specs
from deft_eval.registry import BUILTIN_MODULES as EVAL_BUILTINS
from deft_eval.registry import scorers
from deft_plugin import hookspecs as plugin_specs
from deft_plugin.registry import BUILTIN_MODULES as PLUGIN_BUILTINS
from deft_plugin.registry import dataset_formats, score_variants

from builders import TESTS


def hook_names(spec_class, project: str) -> list[str]:
    return [name for name, fn in inspect.getmembers(spec_class, inspect.isfunction)
            if getattr(fn, project + "_spec", None)]


def required() -> set[str]:
    hooks = (hook_names(plugin_specs.DeftSpecs, plugin_specs.PROJECT)
             + hook_names(eval_specs.EvalSpecs, eval_specs.PROJECT))
    return ({f"hook:{h}" for h in hooks} | {f"plugin:{m}" for m in PLUGIN_BUILTINS + EVAL_BUILTINS}
            | {f"format:{n}" for n in dataset_formats()} | {f"score:{n}" for n in score_variants()}
            | {f"scorer:{n}" for n in scorers()})


def _covers(decorator: ast.expr) -> list[str]:
    """The ids of a `@pytest.mark.covers(...)` decorator, [] for any other decorator."""
    if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == "pytest.mark.covers":
        return [a.value for a in decorator.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return []


def declared(test_dir: Path) -> dict[str, list[tuple[str, bool]]]:
    """id -> [(file::test, whether the test asserts)] for every marked test function."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(test_dir.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                asserts = any(isinstance(n, ast.Assert) or (isinstance(n, ast.Call) and ast.unparse(n.func) ==
                              "pytest.raises") for n in ast.walk(node))
                for ident in (i for d in node.decorator_list for i in _covers(d)):
                    found.setdefault(ident, []).append((f"{path.relative_to(test_dir)}::{node.name}", asserts))
    return found


def test_the_required_ids_are_what_the_registries_hold():
    ids = required()
    assert {"hook:deft_dataset_formats", "hook:deft_score_variants", "hook:deft_commands",
            "hook:deft_eval_scorers"} <= ids
    assert "plugin:deft_plugin.data.formats.hh_rlhf" in ids and "format:listwise" in ids and "scorer:bleu" in ids
    assert len(ids) == 4 + len(PLUGIN_BUILTINS) + len(EVAL_BUILTINS) + len(dataset_formats()) + len(score_variants()) \
        + len(scorers())


def test_every_hook_plugin_and_provided_name_has_a_test_of_its_own():
    assert sorted(required() - set(declared(TESTS))) == []


def test_every_mark_names_something_that_exists():
    assert sorted(set(declared(TESTS)) - required()) == []


def test_every_marked_test_asserts():
    assert [test for tests in declared(TESTS).values() for test, asserts in tests if not asserts] == []


@pytest.mark.parametrize("source, expected", [
    ('@pytest.mark.covers("hook:x")\ndef test_a():\n    assert 1\n', {"hook:x": [("test_m.py::test_a", True)]}),
    ('@pytest.mark.covers("plugin:m", "format:f")\ndef test_b():\n    pass\n',
     {"plugin:m": [("test_m.py::test_b", False)], "format:f": [("test_m.py::test_b", False)]}),
    ('# covers("hook:x") in a comment, "hook:x" in a string\ndef test_c():\n    assert "hook:x"\n', {}),
    ('@pytest.mark.slow\ndef test_d():\n    with pytest.raises(ValueError):\n        f()\n', {}),
])
def test_marks_are_read_from_decorators_only(tmp_path, source, expected):
    (tmp_path / "test_m.py").write_text("import pytest\n\n" + source)
    assert declared(tmp_path) == expected
