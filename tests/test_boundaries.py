"""The architecture's import rules, read from the source with ast (imports inside functions
count too), each failure naming the file and line:

- deft_plugin.core (the method) imports no axolotl, trl, transformers or datasets, and of the
  project only core and utils;
- deft_plugin.data and deft_plugin.filtering import no axolotl or trl; data uses no core,
  filtering no integration or cli;
- only deft_plugin.integration imports axolotl or trl; the command line reaches neither through
  any chain of the project's imports (the demo runs `axolotl train` in a subprocess);
- deft_eval and deft_app use only deft_plugin's public utils, data, hookspecs and registry;
- nothing imports another package's _private name;
- no import climbs (LAYERS: within deft_plugin utils < hookspecs/registry < data/core/launch <
  filtering < integration < cli; across packages deft_plugin < deft_eval, deft_app < deft_study,
  so the plugin never imports the evaluation, the app or the study) and no chain of imports comes
  back to where it started, in modules or in packages."""

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
    # the evaluation also reads answers as the guard does (deft_plugin.core.answers)
    "deft_eval": Rule(TRAINING_STACK, ("deft_eval", "deft_plugin.core") + SHARED_WITH_APPS),
    "deft_app": Rule(TRAINING_STACK, ("deft_app",) + SHARED_WITH_APPS),
    "deft_study": Rule(TRAINING_STACK, None, transitive=True),  # trains through `axolotl train` only
}
# How high each part stands: an import may go to its own layer or below, never up. The most
# specific prefix chooses. The package root stands on top: its lazy DEFTPlugin is the way in.
LAYERS = {
    "deft_plugin.utils": 0,
    "deft_plugin.hookspecs": 1, "deft_plugin.registry": 1,
    "deft_plugin.data": 2, "deft_plugin.core": 2, "deft_plugin.launch": 2,
    "deft_plugin.filtering": 3,
    "deft_plugin.integration": 4,
    "deft_plugin.cli": 5,
    "deft_plugin": 6,
    "deft_eval": 7, "deft_app": 7,
    "deft_study": 8,
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


def layer_part(module: str) -> str:
    """The most specific part of LAYERS a module belongs to."""
    return max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)


def layer_of(module: str) -> int:
    return LAYERS[layer_part(module)]


def module_graph(package_dirs: dict[str, Path], root: Path) -> tuple[dict[str, set[str]], dict[tuple, str]]:
    """module -> the project modules it imports (function-level imports too), and where each
    arrow is written (file:line)."""
    modules = module_names(package_dirs)
    graph, where = {m: set() for m in modules}, {}
    for module, path in modules.items():
        for imp in imports_of(module, path, root):
            for target in _project_target(imp, modules):
                if target != module:
                    graph[module].add(target)
                    where.setdefault((module, target), imp.where)
    return graph, where


def climbing_imports(package_dirs: dict[str, Path], root: Path) -> list[str]:
    graph, where = module_graph(package_dirs, root)
    return [f"{where[(a, b)]}: {a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)}), which stands above it"
            for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b) > layer_of(a)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    top = lambda m: m.split(".")[0]  # noqa: E731
    packages: dict[str, set[str]] = {}
    for a, targets in graph.items():
        packages.setdefault(top(a), set()).update(top(b) for b in targets if top(b) != top(a))
    return packages


def test_no_import_climbs():
    assert climbing_imports(PACKAGE_DIRS, REPO) == []


def test_no_cycle_of_modules_or_packages():
    graph, _ = module_graph(PACKAGE_DIRS, REPO)
    assert cycles(graph) == []
    packages = package_graph(graph)
    assert cycles(packages) == []
    assert packages["deft_plugin"] == set()  # the plugin imports neither the evaluation, the app nor the study


def test_every_package_and_part_has_a_layer():
    assert {m.split(".")[0] for m in module_names(PACKAGE_DIRS)} <= set(LAYERS)
    # a new sub-package of deft_plugin needs its own layer: falling back to the package root's
    # (the top) would let it import anything
    assert [m for m in module_names(PACKAGE_DIRS) if m.startswith("deft_plugin.") and layer_part(m) == "deft_plugin"] \
        == []


def test_a_climb_and_a_cycle_are_named(tmp_path):
    root = tmp_path / "deft_plugin"
    write_package(root, {"__init__": "", "core/__init__": "", "core/reward": "",
                         "utils/__init__": "", "utils/plots": "\ndef f():\n    from deft_plugin.core import reward\n",
                         "filtering/__init__": "", "filtering/a": "from deft_plugin.filtering import b\n",
                         "filtering/b": "def g():\n    import deft_plugin.filtering.a\n"})
    assert climbing_imports({"deft_plugin": root}, root) == [
        f"utils/plots.py:3: deft_plugin.utils.plots (layer 0) imports {target} (layer 2), which stands above it"
        for target in ("deft_plugin.core", "deft_plugin.core.reward")]
    graph, _ = module_graph({"deft_plugin": root}, root)
    assert cycles(graph) == [["deft_plugin.filtering.a", "deft_plugin.filtering.b"]]
    assert cycles(package_graph({"deft_plugin.x": {"deft_study.y"}, "deft_study.y": {"deft_plugin.x"}})) == [
        ["deft_plugin", "deft_study"]]


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
