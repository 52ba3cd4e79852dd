"""A regular (non-editable) build of the project: every module of deft_plugin's sub-packages
ships, eval/ and app/ ship as deft_eval and deft_app, nothing named `eval` or `app` lands in
site-packages, and the commands and entry points are declared."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from builders import REPO

SHIPPED_AS = {"deft_plugin": "deft_plugin", "eval": "deft_eval", "app": "deft_app", "study": "deft_study"}


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    # build from a copy of the tracked files: an in-tree build would leave build/ in the checkout
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "src"
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, cwd=tmp_path, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {"deft_plugin", "deft_eval", "deft_app", "deft_study"} <= top and not {"eval", "app", "study", "tests"} & top
    # every tracked module, sub-packages included (the package list in pyproject.toml is explicit)
    modules = [f for f in files if f.endswith(".py") and f.split("/")[0] in SHIPPED_AS]
    assert len(modules) > 50
    missing = [m for m in modules if SHIPPED_AS[m.split("/")[0]] + m[m.index("/"):] not in names]
    assert missing == []
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for line in ("deft = deft_plugin.cli:main", "deft-eval = deft_eval.cli:main",
                 "listwise = deft_plugin.data.formats.listwise", "reward = deft_eval.scorers.reward"):
        assert line in entry_points
