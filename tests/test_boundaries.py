"""The architecture's import rules, read from the source with ast (imports inside functions
count too), each failure naming the file and line:

- deft_plugin.core (the method) imports no axolotl, trl, transformers or datasets, and of the
  project only core and utils;
- deft_plugin.data and deft_plugin.filtering import no axolotl or trl; data uses no core,
  filtering no integration or cli;
- only deft_plugin.integration imports axolotl or trl; the command line reaches neither through
  any chain of the project's imports (the demo runs `axolotl train` in a subprocess);
- deft_eval and deft_app use only deft_plugin's public utils, data, hookspecs and registry;
- nothing imports another package's _private name."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from builders import REPO

PACKAGE_DIRS = {"deft_plugin": REPO / "deft_plugin", "deft_eval": REPO / "eval", "deft_app": REPO / "app",
                "deft_study": REPO / "study"}
TRAINING_STACK = ("axolotl", "trl")
SHARED_WITH_APPS = ("deft_plugin.utils", "deft_plugin.data", "deft_plugin.hookspecs", "deft_plugin.registry")


@dataclass(frozen=True)
class Rule:
    forbidden: tuple[str, ...] = ()  # third-party packages
    project: tuple[str, ...] | None = None  # the project's modules it may import (None: any)
    transitive: bool = False  # `forbidden` holds for every project module it reaches too


# The most specific prefix of a module's name chooses its rule.
RULES = {
    "deft_plugin": Rule(TRAINING_STACK, ("deft_plugin",)),
    "deft_plugin.core": Rule(TRAINING_STACK + ("transformers", "datasets"), ("deft_plugin.core", "deft_plugin.utils"),
                             transitive=True),
    "deft_plugin.data": Rule(TRAINING_STACK, ("deft_plugin.data", "deft_plugin.hookspecs", "deft_plugin.registry",
                                              "deft_plugin.utils"), transitive=True),
    "deft_plugin.filtering": Rule(TRAINING_STACK, ("deft_plugin.core", "deft_plugin.data", "deft_plugin.filtering",
                                                   "deft_plugin.hookspecs", "deft_plugin.registry",
                                                   "deft_plugin.utils"),
                                  transitive=True),
    "deft_plugin.utils": Rule(TRAINING_STACK, ("deft_plugin.utils",), transitive=True),
    "deft_plugin.cli": Rule(TRAINING_STACK, None, transitive=True),
    "deft_plugin.launch": Rule(TRAINING_STACK, ("deft_plugin.launch", "deft_plugin.utils"), transitive=True),
    "deft_plugin.integration": Rule(),
    "deft_eval": Rule(TRAINING_STACK, ("deft_eval",) + SHARED_WITH_APPS),
    "deft_app": Rule(TRAINING_STACK, ("deft_app",) + SHARED_WITH_APPS),
    "deft_study": Rule(TRAINING_STACK, None, transitive=True),  # trains through `axolotl train` only
}
# The package's lazy `DEFTPlugin` attribute is how Axolotl finds the plugin: the one sanctioned way in.
ALLOWED = {("deft_plugin", "deft_plugin.integration.plugin")}


@dataclass(frozen=True)
class Import:
    where: str  # file:line
    importer: str  # module name
    module: str  # the module imported
    names: tuple[str, ...]  # the names taken from it (from-imports)


def module_names(package_dirs: dict[str, Path]) -> dict[str, Path]:
    modules = {}
    for package, root in package_dirs.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def imports_of(module: str, path: Path, root: Path) -> list[Import]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [Import(where, module, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(Import(where, module, node.module, tuple(a.name for a in node.names)))
    return found


def rule_for(module: str) -> tuple[str, Rule]:
    prefix = max((p for p in RULES if module == p or module.startswith(p + ".")), key=len)
    return prefix, RULES[prefix]


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _project_target(imp: Import, modules: dict[str, Path]) -> list[str]:
    """The project modules an import loads (`from pkg import mod` loads pkg.mod)."""
    targets = [imp.module] if imp.module in modules else []
    targets += [f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in modules]
    return targets


def violations(package_dirs: dict[str, Path], root: Path) -> list[str]:
    modules = module_names(package_dirs)
    imports = {m: imports_of(m, p, root) for m, p in modules.items()}
    problems = []
    for module, found in imports.items():
        area, rule = rule_for(module)
        for imp in found:
            top = imp.module.split(".")[0]
            if top in rule.forbidden:
                problems.append(f"{imp.where}: {module} imports {imp.module} ({area} may not import "
                                f"{', '.join(rule.forbidden)})")
            if top in package_dirs and rule.project is not None and (module, imp.module) not in ALLOWED:
                if not _within(imp.module, rule.project):
                    problems.append(f"{imp.where}: {module} imports {imp.module} ({area} may import "
                                    f"{', '.join(rule.project)} of the project)")
            private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
            if private and top in package_dirs and rule_for(imp.module)[0] != area:
                problems.append(f"{imp.where}: {module} imports {', '.join(private)}, private to {imp.module}")
    for module in modules:
        area, rule = rule_for(module)
        if rule.transitive:
            problems += _reached(module, imports, modules, rule)
    return problems


def _reached(start: str, imports: dict[str, list[Import]], modules: dict[str, Path], rule: Rule) -> list[str]:
    """Forbidden imports of the project modules `start` reaches, named where `start` takes the
    first step towards them, with the chain of modules that reaches them."""
    seen, queue, problems = {start: ([start], "")}, [start], []
    while queue:
        current = queue.pop()
        chain, first_step = seen[current]
        for imp in imports[current]:
            if current != start and imp.module.split(".")[0] in rule.forbidden:
                problems.append(f"{first_step}: {start} reaches {imp.module} ({imp.where}) through "
                                + " -> ".join(chain))
            for target in _project_target(imp, modules):
                if target not in seen:
                    seen[target] = (chain + [target], first_step or imp.where)
                    queue.append(target)
    return problems


def test_the_project_keeps_its_boundaries():
    assert violations(PACKAGE_DIRS, REPO) == []


def test_every_module_falls_under_a_rule():
    modules = module_names(PACKAGE_DIRS)
    assert len(modules) > 40
    assert {rule_for(m)[0] for m in modules} == set(RULES)


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / f"{name}.py").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.py").write_text(text)


CORE_TREE = {"__init__": "", "core/__init__": "", "utils/__init__": "", "utils/plots": "", "data/__init__": "",
             "data/encoding": ""}


@pytest.mark.parametrize("source, expected", [
    ("import axolotl\n", "core/reward.py:1: deft_plugin.core.reward imports axolotl (deft_plugin.core may not"),
    ("\ndef f():\n    from transformers import Trainer\n",
     "core/reward.py:3: deft_plugin.core.reward imports transformers"),
    ("from deft_plugin.data.encoding import EncodedRow\n",
     "core/reward.py:1: deft_plugin.core.reward imports deft_plugin.data.encoding (deft_plugin.core may import "
     "deft_plugin.core, deft_plugin.utils of the project)"),
    ("from deft_plugin.utils.plots import _save\n",
     "core/reward.py:1: deft_plugin.core.reward imports _save, private to deft_plugin.utils.plots"),
])
def test_a_break_is_named_by_file_and_line(tmp_path, source, expected):
    root = tmp_path / "deft_plugin"
    write_package(root, {**CORE_TREE, "core/reward": source})
    found = violations({"deft_plugin": root}, root)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_a_chain_of_imports_to_axolotl_is_named(tmp_path):
    root = tmp_path / "deft_plugin"
    write_package(root, {"__init__": "", "cli/__init__": "",
                         "cli/demo": "import json\nfrom deft_plugin.integration import hook\n",
                         "integration/__init__": "", "integration/hook": "\n\nimport axolotl.cli\n"})
    assert violations({"deft_plugin": root}, root) == [
        "cli/demo.py:2: deft_plugin.cli.demo reaches axolotl.cli (integration/hook.py:3) through "
        "deft_plugin.cli.demo -> deft_plugin.integration.hook"]
