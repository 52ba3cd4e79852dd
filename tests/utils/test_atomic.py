"""Atomic writes leave no partial file and give the mode the user's umask asks for."""

from __future__ import annotations

import os
import stat

import pytest

from deft_plugin.utils.atomic import atomic_write_text, current_umask


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_mode_follows_the_umask(tmp_path, umask, mode):
    saved = os.umask(umask)
    try:
        assert current_umask() == umask
        path = atomic_write_text(tmp_path / "sub" / "report.json", "{}")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(saved)
    assert stat.S_IMODE(path.stat().st_mode) == mode == stat.S_IMODE(plain.stat().st_mode)
    assert path.read_text() == "{}" and [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "x.json", "old")

    def full_disk(fd):
        raise OSError("no space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="no space"):
        atomic_write_text(tmp_path / "x.json", "new")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"] and (tmp_path / "x.json").read_text() == "old"
