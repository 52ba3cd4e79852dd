"""A local MT-Bench judge: FastChat's controller, model worker and OpenAI-compatible API
server, all on 127.0.0.1, started together, checked until the model answers, stopped together.

Two patches, each in its own process: FastChat 0.2.36's worker reads
`config.rope_scaling["factor"]`, which transformers 5 configs do not always have; and its API
server writes chat prompts with FastChat's conversation templates, which lack recent models
(Llama-3 among them), so the API server here writes them with the model's own chat template
when the tokenizer has one."""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"


def context_length(config) -> int:
    """fastchat.utils.get_context_length that accepts rope_scaling without a "factor"."""
    from fastchat.utils import SEQUENCE_LENGTH_KEYS

    scaling = getattr(config, "rope_scaling", None) or {}
    factor = scaling.get("factor") or 1 if isinstance(scaling, dict) else 1
    for key in SEQUENCE_LENGTH_KEYS:
        value = getattr(config, key, None)
        if value is not None:
            return int(factor * value)
    return 2048


def run_patched_worker(argv: list[str]) -> None:
    """`python -m fastchat.serve.model_worker ARGV` with context_length patched in."""
    import fastchat.serve.inference as inference
    import fastchat.utils as utils

    utils.get_context_length = context_length
    inference.get_context_length = context_length
    sys.argv = ["fastchat.serve.model_worker", *argv]
    runpy.run_module("fastchat.serve.model_worker", run_name="__main__", alter_sys=True)


def run_patched_api_server(tokenizer_path: str, argv: list[str]) -> None:
    """FastChat's OpenAI API server whose chat prompts come from the tokenizer's chat template."""
    import logging

    import uvicorn
    from fastchat.serve import openai_api_server as server
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    log = logging.getLogger("deft_eval.judge_server")
    if getattr(tokenizer, "chat_template", None):
        original = server.get_gen_params

        async def get_gen_params(model_name, worker_addr, messages, **kwargs):
            params = await original(model_name, worker_addr, messages, **kwargs)
            if isinstance(messages, list):
                params["prompt"] = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                log.warning("chat prompt from the tokenizer's template: %r", params["prompt"][-200:])
            return params

        server.get_gen_params = get_gen_params
    sys.argv = ["fastchat.serve.openai_api_server", *argv]
    args = server.create_openai_api_server()
    uvicorn.run(server.app, host=args.host, port=args.port, log_level="info")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class LocalJudge:
    """Context manager: `with LocalJudge(model_dir, "judge") as judge: judge.base_url`."""

    def __init__(self, model_path: str, name: str, device: str = "auto", port: int | None = None,
                 log_dir: str | Path | None = None, start_timeout_s: float = 600.0):
        import torch

        self.model_path, self.name = model_path, name
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.port = port or free_port()
        self.log_dir = Path(log_dir) if log_dir else Path.cwd() / "judge-server-logs"
        self.start_timeout_s = start_timeout_s
        self.procs: list[subprocess.Popen] = []

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def _start(self, name: str, args: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "w")
        # LOGDIR: where FastChat writes its own log files (the working directory otherwise)
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "LOGDIR": str(self.log_dir)}
        self.procs.append(subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env))
        log.close()

    def __enter__(self) -> "LocalJudge":
        controller_port, worker_port = free_port(), free_port()
        controller = f"http://{HOST}:{controller_port}"
        try:
            self._start("controller", ["-m", "fastchat.serve.controller", "--host", HOST, "--port",
                                       str(controller_port)])
            self._start("worker", ["-m", "deft_eval.judge_server", "worker",
                                   "--model-path", self.model_path, "--model-names",
                                   self.name, "--device", self.device, "--host", HOST, "--port", str(worker_port),
                                   "--worker-address", f"http://{HOST}:{worker_port}",
                                   "--controller-address", controller])
            self._start("api", ["-m", "deft_eval.judge_server", "api", self.model_path, "--host", HOST, "--port",
                                str(self.port), "--controller-address", controller])
            self._wait_until_it_answers()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_it_answers(self) -> None:
        import openai

        client = openai.OpenAI(base_url=self.base_url, api_key="EMPTY", timeout=30, max_retries=0)
        deadline = time.monotonic() + self.start_timeout_s
        last = None
        while time.monotonic() < deadline:
            dead = [p.args for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"judge server process exited: {dead[0]}; logs in {self.log_dir}")
            try:
                client.chat.completions.create(model=self.name, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=2, temperature=0)
                return
            except openai.OpenAIError as err:
                last = err
                time.sleep(1.0)
        raise TimeoutError(f"the judge did not answer within {self.start_timeout_s:.0f} s ({last}); "
                           f"logs in {self.log_dir}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs = []

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    # python -m deft_eval.judge_server worker ARGS... | api TOKENIZER_PATH ARGS...
    if sys.argv[1] == "worker":
        run_patched_worker(sys.argv[2:])
    elif sys.argv[1] == "api":
        run_patched_api_server(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit("usage: python -m deft_eval.judge_server worker ARGS | api TOKENIZER_PATH ARGS")
