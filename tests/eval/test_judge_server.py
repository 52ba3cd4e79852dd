"""`deft-eval judge-server`'s LocalJudge: FastChat's controller, patched model worker and
OpenAI-compatible server on 127.0.0.1 with the tiny model, answering the real openai client,
then stopped with nothing left running."""

from __future__ import annotations

import socket
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
