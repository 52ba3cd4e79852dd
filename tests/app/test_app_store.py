"""The judging app's SQLite store: WAL, one vote per (item, annotator) under concurrency,
nothing lost on reopening, hashed passwords, assignment with overlap."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from deft_app.store import DUPLICATE, FULL, SCHEMA, STORED, Store, hash_password, left_is_a, verify_password


def items(n: int) -> list[dict]:
    return [{"id": f"q{i:03d}", "dialogue": [{"role": "user", "content": f"question {i}"}], "category": "writing",
             "model_a": "dpo", "answer_a": f"A{i}", "model_b": "deft", "answer_b": f"B{i}"} for i in range(n)]


def run_threads(target, count: int, timeout: float = 120) -> None:
    """target(0) ... target(count - 1), each in its own thread, all joined within the timeout."""
    threads = [threading.Thread(target=target, args=(t,)) for t in range(count)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=timeout)
    assert not any(th.is_alive() for th in threads)


def test_twenty_threads_fifty_votes_each_counted_exactly_once(tmp_path):
    store = Store(tmp_path / "votes.db")
    store.add_items(items(50))
    for t in range(20):
        store.add_annotator(f"ann{t}", "pw")
    stored = []
    lock = threading.Lock()

    def annotate(t: int) -> None:
        mine = Store(tmp_path / "votes.db")  # each thread its own store object and connection
        for i in range(50):
            for _ in range(2):  # every vote sent twice: a double click
                ok = mine.record_vote(f"q{i:03d}", f"ann{t}", ("a", "b", "tie", "both_bad")[i % 4], "dpo")
                with lock:
                    stored.append(ok)

    run_threads(annotate, 20)
    assert stored.count(STORED) == 1000 and stored.count(DUPLICATE) == 1000
    votes = Store(tmp_path / "votes.db").votes()  # reopened: nothing lost
    assert len(votes) == 1000
    assert len({(v["item_id"], v["annotator"]) for v in votes}) == 1000
    mode = sqlite3.connect(tmp_path / "votes.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_the_schema_refuses_a_second_vote_and_bad_verdicts(tmp_path):
    store = Store(tmp_path / "v.db")
    store.add_items(items(1))
    store.add_annotator("ann", "pw")
    assert store.record_vote("q000", "ann", "a", "dpo", "first") == STORED
    assert store.record_vote("q000", "ann", "b", "deft", "second") == DUPLICATE
    assert [(v["verdict"], v["comment"]) for v in store.votes()] == [("a", "first")]  # the first vote stands
    with pytest.raises(ValueError, match="verdict"):
        store.record_vote("q000", "ann", "left", "dpo")
    conn = sqlite3.connect(tmp_path / "v.db", isolation_level=None)  # autocommit: holds no lock afterwards
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO votes VALUES ('q000', 'ann', 'b', 'dpo', '', 0)")
    conn.close()
    with pytest.raises(sqlite3.IntegrityError):  # no vote for an unknown annotator
        store.record_vote("q000", "intruder", "a", "dpo")


def test_passwords_are_hashed_and_checked(tmp_path):
    store = Store(tmp_path / "v.db")
    store.add_annotator("alice", "s3cret", "admin")
    raw = sqlite3.connect(tmp_path / "v.db").execute("SELECT password_hash FROM annotators").fetchone()[0]
    assert "s3cret" not in raw and raw.startswith("scrypt$")
    assert store.authenticate("alice", "s3cret") == "admin"
    assert store.authenticate("alice", "wrong") is None and store.authenticate("bob", "s3cret") is None
    assert verify_password("x", hash_password("x")) and not verify_password("x", hash_password("y"))
    assert hash_password("x") != hash_password("x")  # salted
    with pytest.raises(ValueError, match="role"):
        store.add_annotator("carol", "pw", "root")


def test_assignment_with_overlap_progress_and_resume(tmp_path):
    store = Store(tmp_path / "v.db")
    store.add_items(items(3))
    for name in ("ann1", "ann2", "ann3"):
        store.add_annotator(name, "pw")
    first = store.next_item("ann1", overlap=2)
    assert first["id"] == "q000" and first["dialogue"] == [{"role": "user", "content": "question 0"}]
    store.record_vote("q000", "ann1", "a", "dpo")
    assert store.progress("ann1", overlap=2) == (1, 3)
    # a second annotator gets the item already judged once first: overlap accumulates
    assert store.next_item("ann2", overlap=2)["id"] == "q000"
    store.record_vote("q000", "ann2", "tie", "deft")
    # full at overlap 2: a third annotator never sees it
    assert store.next_item("ann3", overlap=2)["id"] == "q001"
    assert store.progress("ann3", overlap=2) == (0, 2)
    # reopening the database resumes where ann1 left off; nobody sees an item twice
    again = Store(tmp_path / "v.db")
    seen = {"q000"}
    while (item := again.next_item("ann1", overlap=2)) is not None:
        assert item["id"] not in seen
        seen.add(item["id"])
        again.record_vote(item["id"], "ann1", "b", "dpo")
    assert seen == {"q000", "q001", "q002"} and again.progress("ann1", overlap=2) == (3, 3)
    assert store.add_items(items(3)) == 0  # re-adding keeps the items as they were


def test_side_layout_is_stable_per_annotator_and_balanced():
    secret = b"k" * 32
    layouts = [left_is_a(f"q{i}", "ann", secret) for i in range(400)]
    assert layouts == [left_is_a(f"q{i}", "ann", secret) for i in range(400)]
    assert 160 < sum(layouts) < 240
    assert layouts != [left_is_a(f"q{i}", "other", secret) for i in range(400)]


def test_an_item_handed_out_is_reserved_until_the_vote_or_the_expiry(tmp_path):
    store = Store(tmp_path / "v.db")
    store.add_items(items(3))
    for name in ("ann1", "ann2", "ann3"):
        store.add_annotator(name, "pw")
    assert store.next_item("ann1", overlap=1)["id"] == "q000"
    assert store.next_item("ann2", overlap=1)["id"] == "q001"  # q000 is held by ann1
    assert store.next_item("ann1", overlap=1)["id"] == "q000"  # a reload gives ann1 the same item
    assert store.record_vote("q000", "ann1", "a", "dpo", overlap=1) == STORED
    # ann2 walks away: a reservation that has expired returns the item to the pool
    assert store.next_item("ann2", overlap=1, hold=0)["id"] == "q001"
    assert store.next_item("ann3", overlap=1)["id"] == "q001"
    assert store.record_vote("q001", "ann3", "b", "dpo", overlap=1) == STORED
    # ann2 comes back and votes on the item that ann3 completed meanwhile: refused, not a second vote
    assert store.record_vote("q001", "ann2", "a", "dpo", overlap=1) == FULL
    assert sorted((v["item_id"], v["annotator"]) for v in store.votes()) == [("q000", "ann1"), ("q001", "ann3")]
    assert store.next_item("ann2", overlap=1)["id"] == "q002"


def test_concurrent_annotators_never_exceed_the_overlap_and_cover_every_item(tmp_path):
    store = Store(tmp_path / "votes.db")
    store.add_items(items(30))
    for t in range(10):
        store.add_annotator(f"ann{t}", "pw")
    outcomes, lock = [], threading.Lock()
    barrier = threading.Barrier(10)

    def annotate(t: int) -> None:
        mine = Store(tmp_path / "votes.db")
        barrier.wait()  # all ten ask for their first item at once
        while (item := mine.next_item(f"ann{t}", overlap=2)) is not None:
            outcome = mine.record_vote(item["id"], f"ann{t}", "tie", "dpo", overlap=2)
            with lock:
                outcomes.append(outcome)

    run_threads(annotate, 10)
    votes = Store(tmp_path / "votes.db").votes()
    per_item = {f"q{i:03d}": 0 for i in range(30)}
    for v in votes:
        per_item[v["item_id"]] += 1
    assert set(per_item.values()) == {2}  # every item exactly `overlap` votes: none over, none left out
    assert outcomes == [STORED] * 60


def test_a_database_from_before_reservations_opens_and_assigns(tmp_path):
    old_schema = SCHEMA[:SCHEMA.index("CREATE TABLE IF NOT EXISTS reservations")]
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.executescript(old_schema)
    conn.execute("INSERT INTO annotators VALUES ('ann', 'x', 'annotator')")
    conn.executemany("INSERT INTO items VALUES (?, '[]', NULL, 'dpo', 'A', 'deft', 'B')", [("q0",), ("q1",)])
    conn.execute("INSERT INTO votes VALUES ('q0', 'ann', 'a', 'dpo', '', 0)")
    conn.commit()
    conn.close()
    store = Store(tmp_path / "old.db")
    assert [v["item_id"] for v in store.votes()] == ["q0"]
    assert store.next_item("ann", overlap=1)["id"] == "q1"
