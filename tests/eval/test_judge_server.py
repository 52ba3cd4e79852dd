"""`deft-eval judge-server`'s LocalJudge: FastChat's controller, patched model worker and
OpenAI-compatible server on 127.0.0.1 with the tiny model, answering the real openai client,
then stopped with nothing left running."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from deft_eval.judge_server import LocalJudge, context_length


def test_context_length_accepts_transformers_5_rope_scaling():
    assert context_length(SimpleNamespace(rope_scaling={"rope_type": "default", "rope_theta": 1e4},
                                          max_position_embeddings=4096)) == 4096
    assert context_length(SimpleNamespace(rope_scaling={"factor": 2.0}, max_position_embeddings=4096)) == 8192
    assert context_length(SimpleNamespace(rope_scaling=None)) == 2048


@pytest.mark.slow
def test_local_judge_answers_then_stops(tiny_model_dir, tmp_path):
    import openai

    with LocalJudge(str(tiny_model_dir), "tiny-judge", device="cpu", log_dir=tmp_path, start_timeout_s=240) as judge:
        assert judge.base_url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=judge.base_url, api_key="EMPTY", timeout=60)
        assert [m.id for m in client.models.list().data] == ["tiny-judge"]
        reply = client.chat.completions.create(model="tiny-judge", messages=[{"role": "user", "content": "Rate this."}],
                                               max_tokens=5, temperature=0)
        assert isinstance(reply.choices[0].message.content, str)
        procs, port = list(judge.procs), judge.port
    assert all(p.poll() is not None for p in procs)
    assert (tmp_path / "controller.log").is_file()  # FastChat's own logs go to the log folder too
    # the prompt was written with the model's own chat template, not a FastChat conversation template
    assert "<|im_start|>user\\nRate this.<|im_end|>\\n<|im_start|>assistant\\n" in (tmp_path / "api.log").read_text()
    with pytest.raises(ConnectionRefusedError):  # nothing listens on the API port any more
        socket.create_connection(("127.0.0.1", port), timeout=5)


def children_of(pid: int) -> set[int]:
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip()) == pid:
            found.add(int(status.parent.name))
    return found


@pytest.mark.slow
def test_sigterm_stops_the_three_processes(tiny_model_dir, tmp_path):
    """`deft-eval judge-server` stopped by SIGTERM (as a job scheduler or `kill` stops it) leaves
    no FastChat process running."""
    import os
    import signal
    import subprocess
    import sys
    import time

    server = subprocess.Popen([sys.executable, "-m", "deft_eval.cli", "judge-server", "--model", str(tiny_model_dir),
                               "--name", "tiny-judge", "--device", "cpu", "--log-dir", str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        line = ""
        while "answering at" not in line and time.monotonic() < deadline and server.poll() is None:
            line = server.stdout.readline()
        assert "answering at http://127.0.0.1:" in line, line
        children = children_of(server.pid)
        assert len(children) == 3
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        time.sleep(1)
        assert [pid for pid in children if Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]] == []
    finally:  # nothing outlives the test, whatever it found
        for pid in [server.pid, *children]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.wait(timeout=30)

