"""Dependencies' known-harmless notices stay off the terminal and land in the run's deft.log;
everything else those loggers say, and the project's own lines, still reach the terminal."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from deft_plugin.utils.quiet import HARMLESS, LOG_FILE, keep_dependency_noise_in

from builders import REPO


def test_known_notices_go_to_the_log_file_and_others_pass(tmp_path, caplog):
    path = keep_dependency_noise_in(tmp_path / "run")
    try:
        with caplog.at_level(logging.INFO):
            for name, text in HARMLESS.items():
                logging.getLogger(name).warning("%s: the known notice", text)
            logging.getLogger("torchao").warning("a real problem in torchao")
        shown = [r.getMessage() for r in caplog.records]
        assert shown == ["a real problem in torchao"]
        kept = path.read_text().splitlines()
        assert len(kept) == len(HARMLESS) and all(text in line for line, text in zip(kept, HARMLESS.values()))
    finally:
        keep_dependency_noise_in(None)
    # installing again replaces the routing instead of stacking filters
    assert sum(1 for f in logging.getLogger("torchao").filters if type(f).__name__ == "_KeptInLogFile") == 1


def test_deft_filter_shows_its_own_lines_only(tmp_path, tiny_model_dir, hh_file):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "deft_plugin.cli", "filter", "--data", str(hh_file), "--model",
                           str(tiny_model_dir), "--limit", "8", "--max-length", "256", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    terminal = proc.stdout + proc.stderr
    assert "8 rows read" in terminal
    assert not [text for text in HARMLESS.values() if text in terminal]
    # torchao's missing optional kernels are reported on this CPU build: kept in the log file
    assert "Failed to load" in (out / LOG_FILE).read_text()
