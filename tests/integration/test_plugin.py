"""Whether the plugin's hooks act: DEFT is on exactly when the config's `plugins:` list names
DEFTPlugin (or a subclass) by any path Axolotl can load it by, and off for other plugins, so
that a run never silently trains plain DPO with DEFT listed, nor DEFT with it unlisted."""

from __future__ import annotations

import textwrap

import pytest
from axolotl.integrations.base import load_plugin
from axolotl.utils.dict import DictDefault

from deft_plugin.integration.callbacks import MetricsLogCallback
from deft_plugin.integration.collator import ListwiseCollator
from deft_plugin.integration.listing import PLUGIN_CLASS
from deft_plugin.integration.plugin import DEFTPlugin, deft_enabled, pro_enabled

AXOLOTL_SPELLINGS = ["deft_plugin.DEFTPlugin", "deft_plugin.integration.plugin.DEFTPlugin"]
COLON_SPELLINGS = ["deft_plugin:DEFTPlugin", "deft_plugin.integration.plugin:DEFTPlugin"]  # Axolotl >= 0.21


def cfg(plugins, **keys) -> DictDefault:
    return DictDefault({"plugins": plugins, "output_dir": "out", **keys})


@pytest.mark.parametrize("name", AXOLOTL_SPELLINGS)
def test_every_spelling_axolotl_loads_enables_the_hooks(name):
    plugin = load_plugin(name)  # Axolotl's own loader, as for `plugins: [name]`
    assert isinstance(plugin, DEFTPlugin)
    callbacks = plugin.add_callbacks_post_trainer(cfg([name]), trainer=None)
    assert [type(c) for c in callbacks] == [MetricsLogCallback]
    collator = plugin.get_collator_cls_and_kwargs(cfg([name], deft_method="pro"))
    assert collator == (ListwiseCollator, {})


def test_the_schema_names_the_plugin_class_it_is():
    assert f"{DEFTPlugin.__module__}.{DEFTPlugin.__qualname__}" == PLUGIN_CLASS


@pytest.mark.parametrize("name", AXOLOTL_SPELLINGS + COLON_SPELLINGS)
def test_spellings_resolve_to_the_plugin(name):
    assert deft_enabled(cfg([name]))
    assert pro_enabled(cfg(["axolotl.integrations.liger.LigerPlugin", name], deft_method="pro"))
    assert not pro_enabled(cfg([name], deft_method="dpo"))


def test_a_subclass_in_a_user_module_enables_the_hooks(tmp_path, monkeypatch):
    (tmp_path / "my_deft.py").write_text(textwrap.dedent("""
        from deft_plugin import DEFTPlugin

        class MyDEFT(DEFTPlugin):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = load_plugin("my_deft.MyDEFT")
    assert plugin.add_callbacks_post_trainer(cfg(["my_deft.MyDEFT"]), trainer=None)


@pytest.mark.parametrize("plugins", [
    [],
    None,
    ["axolotl.integrations.liger.LigerPlugin"],  # another plugin, loaded
    ["deft_plugin.NoSuchPlugin"],  # the package, a name it does not have
    ["no_such_module.DEFTPlugin"],  # the class name in a module that does not import
    ["deft_plugin.integration.plugin.LOG"],  # importable, not a class
    ["DEFTPlugin"],  # no module at all
])
def test_hooks_do_nothing_without_the_plugin_listed(plugins):
    plugin = DEFTPlugin()  # as Axolotl 0.21 registers installed plugins on every run
    config = cfg(plugins, deft_method="pro")
    assert not deft_enabled(config)
    assert plugin.add_callbacks_post_trainer(config, trainer=None) == []
    assert plugin.get_collator_cls_and_kwargs(config) is None
    assert plugin.get_trainer_cls(config) is None
    assert plugin.load_datasets(config) is None
    assert plugin.post_trainer_create(config, trainer=None) is None
