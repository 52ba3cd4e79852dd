"""The judging app under load, over HTTP on 127.0.0.1: ten annotators at once through the real
`deft-app serve` and Gradio's own client. Every item gets exactly `--overlap` votes, every vote
the server acknowledged is stored exactly once, and a server killed with SIGKILL mid-load
restarts with every acknowledged vote in its database. Bounded: 24 items, 10 annotators,
a deadline per phase; every server is stopped by its PID."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from deft_app.store import Store
from deft_app.ui import dialogue_text

pytestmark = pytest.mark.slow
ITEMS, ANNOTATORS, OVERLAP = 24, 10, 2
VOTES = ("/vote", "/vote_1", "/vote_2", "/vote_3")  # left, right, tie, both bad
DEADLINE = 240  # seconds per phase


@pytest.fixture()
def study(tmp_path):
    answers = []
    for model in ("dpo", "deft"):
        path = tmp_path / f"{model}.jsonl"
        path.write_text("".join(json.dumps({"id": f"hh/{i}", "model": model, "answer": f"{model} answer {i}",
                                            "prompt": f"\n\nHuman: question {i}?\n\nAssistant:"}) + "\n"
                                for i in range(ITEMS)))
        answers.append(str(path))
    annotators = tmp_path / "annotators.jsonl"
    annotators.write_text("".join(json.dumps({"name": f"ann{i}", "password": "annotator-pw"}) + "\n"
                                  for i in range(ANNOTATORS)))
    return {"db": tmp_path / "votes.db", "args": ["--answers", *answers, "--annotators", str(annotators)]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`deft-app serve` in its own process, stopped by its PID."""

    def __init__(self, study: dict):
        self.port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deft_app.cli", "serve", *study["args"], "--db", str(study["db"]),
             "--overlap", str(OVERLAP), "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.output, serving = [], threading.Event()

        def drain():  # the server prints its URL once it serves; keep reading so it never blocks
            for line in self.proc.stdout:
                self.output.append(line)
                if f"serving at {self.url}" in line:
                    serving.set()

        threading.Thread(target=drain, daemon=True).start()
        if not serving.wait(timeout=120):
            self.kill()
            pytest.fail("deft-app serve did not print its URL within 120 s:\n" + "".join(self.output[-20:]))

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=30)


def annotate(url: str, name: str, acknowledged: list, stop: threading.Event, deadline: float) -> None:
    """One annotator: load the page, vote until done; a vote counts as acknowledged once the
    server answered it. Ends quietly when the server goes away."""
    from gradio_client import Client

    rng = random.Random(name)
    try:
        client = Client(url, auth=(name, "annotator-pw"), verbose=False)
        shown = client.predict(api_name="/on_load")
        while "All done" not in shown[0] and not stop.is_set() and time.monotonic() < deadline:
            dialogue = shown[1]
            shown = client.predict("", api_name=rng.choice(VOTES))
            acknowledged.append((name, dialogue))
    except Exception:  # the server was killed under this annotator
        if not stop.is_set():
            raise


def run_annotators(url: str, acknowledged: list, stop: threading.Event) -> tuple[list[threading.Thread], list[str]]:
    deadline = time.monotonic() + DEADLINE
    errors = []

    def guarded(name):
        try:
            annotate(url, name, acknowledged, stop, deadline)
        except Exception as error:  # reported by the test, not lost in a thread
            errors.append(f"{name}: {error!r}")

    threads = [threading.Thread(target=guarded, args=(f"ann{i}",), daemon=True) for i in range(ANNOTATORS)]
    for t in threads:
        t.start()
    return threads, errors


def stored_votes(db: Path) -> list[tuple[str, str]]:
    store = Store(db)
    return [(v["annotator"], dialogue_text(store.item(v["item_id"])["dialogue"])) for v in store.votes()]


def per_item(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        counts = dict.fromkeys((row[0] for row in conn.execute("SELECT id FROM items")), 0)
    for v in Store(db).votes():
        counts[v["item_id"]] += 1
    return sorted(counts.values())


def test_ten_concurrent_annotators_fill_every_item_to_the_overlap(study):
    server = Server(study)
    try:
        acknowledged, stop = [], threading.Event()
        threads, errors = run_annotators(server.url, acknowledged, stop)
        for t in threads:
            t.join(timeout=DEADLINE + 30)
        assert not errors and not any(t.is_alive() for t in threads)
    finally:
        server.kill(signal.SIGTERM)
    assert per_item(study["db"]) == [OVERLAP] * ITEMS  # none over the overlap, none left out
    stored = stored_votes(study["db"])
    assert sorted(stored) == sorted(acknowledged) and len(set(stored)) == len(stored) == ITEMS * OVERLAP


def test_a_server_killed_mid_load_restarts_with_every_acknowledged_vote(study):
    acknowledged, stop = [], threading.Event()
    server = Server(study)
    try:
        threads, errors = run_annotators(server.url, acknowledged, stop)
        deadline = time.monotonic() + DEADLINE
        while len(acknowledged) < ITEMS // 2 and time.monotonic() < deadline:  # about a quarter of the votes
            time.sleep(0.05)
        assert len(acknowledged) >= ITEMS // 2, errors
        stop.set()
        server.kill(signal.SIGKILL)
        for t in threads:
            t.join(timeout=60)
    finally:
        server.kill()
    before = len(acknowledged)
    assert set(acknowledged) <= set(stored_votes(study["db"]))  # nothing acknowledged was lost
    assert before < ITEMS * OVERLAP  # the kill did land mid-load

    # restarted on the same database, the annotators finish the job: still exactly the overlap
    server = Server(study)
    try:
        threads, errors = run_annotators(server.url, acknowledged, threading.Event())
        for t in threads:
            t.join(timeout=DEADLINE + 30)
        assert not errors and not any(t.is_alive() for t in threads)
    finally:
        server.kill(signal.SIGTERM)
    assert per_item(study["db"]) == [OVERLAP] * ITEMS
    stored = stored_votes(study["db"])
    assert set(acknowledged) <= set(stored) and len(set(stored)) == len(stored) == ITEMS * OVERLAP
