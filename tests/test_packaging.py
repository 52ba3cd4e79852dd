"""A regular (non-editable) build of the project: eval/ ships as deft_eval, nothing named
`eval` lands in site-packages, and the commands and entry points are declared."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
    assert {"deft_plugin", "deft_eval"} <= top and "eval" not in top and "tests" not in top
    for module in ("deft_eval/cli.py", "deft_eval/scorers/reward.py", "deft_plugin/data/formats/listwise.py",
                   "deft_plugin/integration/pro_trainer.py"):
        assert module in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for line in ("deft = deft_plugin.cli:main", "deft-eval = deft_eval.cli:main",
                 "listwise = deft_plugin.data.formats.listwise", "reward = deft_eval.scorers.reward"):
        assert line in entry_points
