"""The pluggy registry: built-ins arrive through the `deft_plugin` entry points like
third-party plugins, a third-party plugin adds a format and a score variant, and duplicate
names are refused."""

import importlib.metadata

import pluggy
import pytest
import torch

from deft_eval.registry import BUILTIN_MODULES as EVAL_BUILTINS
from deft_plugin import registry
from deft_plugin.data.formats import hh_rlhf, preference
from deft_plugin.filtering import score_variants
from deft_plugin.hookspecs import Command, DatasetFormat, RowError, hookimpl

# Registered like a third-party plugin: the study harness sits above deft_plugin, which never names it.
ABOVE_THE_PLUGIN = ("deft_study.cli",)


def test_every_builtin_module_is_an_installed_entry_point():
    """registry.BUILTIN_MODULES (the source-tree fallback) and pyproject's entry points name the
    same modules, so an installed and a source-tree run register the same built-ins; beside them
    only the study's command module, which the plugin must not name."""
    for group, builtins in (("deft_plugin", registry.BUILTIN_MODULES + ABOVE_THE_PLUGIN),
                            ("deft_eval", EVAL_BUILTINS)):
        values = sorted(ep.value for ep in importlib.metadata.entry_points(group=group))
        assert values == sorted(builtins), group


def test_builtins_registered_through_entry_points():
    pm = registry.plugin_manager()
    assert registry.plugin_manager() is pm  # one manager per process
    # pluggy names plugins loaded from entry points by the entry point's name; the source-tree
    # fallback would have used the dotted module name
    assert pm.get_plugin("hh_rlhf") is hh_rlhf
    assert pm.get_plugin("preference") is preference
    assert pm.get_plugin("score_variants") is score_variants
    for name in registry.BUILTIN_MODULES:
        assert pm.get_plugin(name) is None  # not registered a second time
    dists = {dist.project_name for _, dist in pm.list_plugin_distinfo()}
    assert "deft-plugin" in dists or "deft_plugin" in dists


def test_builtin_formats_and_variants():
    formats = registry.dataset_formats()
    assert {"hh_rlhf", "preference"} <= set(formats)
    assert formats["hh_rlhf"].parse is hh_rlhf.parse and formats["preference"].parse is preference.parse
    assert all(isinstance(f, DatasetFormat) and f.name == name for name, f in formats.items())
    assert registry.get_format("hh_rlhf") == formats["hh_rlhf"]
    variants = registry.score_variants()
    assert {"delta", "chosen"} <= set(variants)
    rc, rr = torch.tensor([0.5, -0.1]), torch.tensor([0.2, 0.3])
    assert torch.allclose(variants["delta"](rc, rr), torch.tensor([0.3, -0.4]))
    assert torch.equal(variants["chosen"](rc, rr), rc)


def test_unknown_format():
    with pytest.raises(KeyError, match="unknown DEFT dataset format 'nope'.*hh_rlhf.*preference"):
        registry.get_format("nope")


def test_source_tree_fallback_without_entry_points(monkeypatch):
    """Without installed metadata the built-in modules are imported directly; the result is
    the same set of formats and variants, each registered once."""
    monkeypatch.setattr(pluggy.PluginManager, "load_setuptools_entrypoints", lambda self, group, name=None: 0)
    pm = registry.plugin_manager.__wrapped__()  # a fresh, uncached manager
    assert pm is not registry.plugin_manager()
    assert sorted(name for name, _ in pm.list_name_plugin()) == sorted(registry.BUILTIN_MODULES)
    names = [f.name for group in pm.hook.deft_dataset_formats() for f in group]
    assert sorted(names) == ["hh_rlhf", "listwise", "preference"]
    variants = [n for group in pm.hook.deft_score_variants() for n in group]
    assert sorted(variants) == ["chosen", "delta"]


class ThirdPartyPlugin:
    """What an external package would register under the `deft_plugin` entry points."""

    @staticmethod
    def parse(row, style):
        if "q" not in row:
            raise RowError("missing 'q'")
        return {"prompt": row["q"], "chosen": " " + row["good"], "rejected": " " + row["bad"]}

    @hookimpl
    def deft_dataset_formats(self):
        return [DatasetFormat("qa_pairs", self.parse, "question/good/bad rows")]

    @hookimpl
    def deft_score_variants(self):
        return {"margin_sq": lambda rc, rr: (rc - rr) * (rc - rr).abs()}


@pytest.fixture
def registered():
    """Register plugins on the shared (cached) manager, and always take them off again."""
    pm = registry.plugin_manager()
    added = []

    def add(plugin, name):
        pm.register(plugin, name=name)
        added.append(plugin)
        return plugin

    yield add
    for plugin in added:
        pm.unregister(plugin)
    assert set(registry.dataset_formats()) == {"hh_rlhf", "listwise", "preference"}
    assert set(registry.score_variants()) == {"delta", "chosen"}


@pytest.mark.covers("hook:deft_dataset_formats", "hook:deft_score_variants")
def test_third_party_plugin_adds_format_and_variant(registered):
    registered(ThirdPartyPlugin(), "third-party-test")
    formats = registry.dataset_formats()
    assert set(formats) == {"hh_rlhf", "listwise", "preference", "qa_pairs"}
    fmt = registry.get_format("qa_pairs")
    assert fmt.parse({"q": "2+2?", "good": "4", "bad": "5"}, "raw") == {"prompt": "2+2?", "chosen": " 4",
                                                                       "rejected": " 5"}
    with pytest.raises(RowError, match="missing 'q'"):
        fmt.parse({}, "raw")
    variants = registry.score_variants()
    assert set(variants) == {"delta", "chosen", "margin_sq"}
    assert variants["margin_sq"](torch.tensor([0.5]), torch.tensor([0.8])).tolist() == pytest.approx([-0.09])


def test_duplicate_format_name_raises(registered):
    class Clash:
        @hookimpl
        def deft_dataset_formats(self):
            return [DatasetFormat("hh_rlhf", lambda row, style: row)]

    registered(Clash(), "clash-format-test")
    with pytest.raises(ValueError, match="dataset format 'hh_rlhf' is registered twice"):
        registry.dataset_formats()
    with pytest.raises(ValueError, match="registered twice"):
        registry.get_format("preference")
    assert set(registry.score_variants()) == {"delta", "chosen"}  # variants unaffected


def test_duplicate_variant_name_raises(registered):
    class Clash:
        @hookimpl
        def deft_score_variants(self):
            return {"delta": lambda rc, rr: rr - rc}

    registered(Clash(), "clash-variant-test")
    with pytest.raises(ValueError, match="filtering-score variant 'delta' is registered twice"):
        registry.score_variants()
    assert set(registry.dataset_formats()) == {"hh_rlhf", "listwise", "preference"}


def test_duplicate_within_one_plugin_raises(registered):
    class Twice:
        @hookimpl
        def deft_dataset_formats(self):
            return [DatasetFormat("twin", lambda r, s: r), DatasetFormat("twin", lambda r, s: r)]

    registered(Twice(), "twice-test")
    with pytest.raises(ValueError, match="'twin' is registered twice"):
        registry.dataset_formats()


@pytest.mark.covers("hook:deft_commands")
def test_a_plugin_adds_a_deft_command(registered, capsys):
    """`deft study` arrives through the hook (the study harness's entry point); another plugin's
    command is parsed and run by `deft`; a name `deft` already has is refused by name."""
    from deft_plugin.cli.main import build_parser, main

    assert set(registry.commands()) == {"study"}
    seen = []

    def add_arguments(parser):
        parser.add_argument("--times", type=int, default=1)

    def run(args):
        seen.append(args.times)
        return 3

    registered(type("Echo", (), {"deft_commands": hookimpl(lambda self: [Command("echo", "say", add_arguments,
                                                                                 run)])})(), "echo-test")
    assert main(["echo", "--times", "2"]) == 3 and seen == [2]
    assert "echo" in build_parser().format_help() and "study" in build_parser().format_help()

    class Clash:
        @hookimpl
        def deft_commands(self):
            return [Command("demo", "another demo", add_arguments, run)]

    registered(Clash(), "clash-command-test")
    with pytest.raises(ValueError, match="deft command 'demo' is registered twice"):
        build_parser()
