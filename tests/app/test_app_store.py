"""The judging app's SQLite store: WAL, one vote per (item, annotator, criterion) under
concurrency, nothing lost on reopening, hashed passwords, assignment with overlap; criteria,
skips, flags, undo with its audit, per-annotator progress; and the migration of a database
written by the previous version (tests/app/data/store_v1.sql)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from deft_app.store import (
    DUPLICATE,
    FULL,
    MIGRATIONS,
    SCHEMA_VERSION,
    STORED,
    Store,
    criteria_voted,
    hash_password,
    left_is_a,
    verify_password,
)

from builders import TESTS

V1_DUMP = TESTS / "app" / "data" / "store_v1.sql"


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
        conn.execute("INSERT INTO votes (item_id, annotator, verdict, left_model, created) "
                     "VALUES ('q000', 'ann', 'b', 'dpo', 0)")
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


def version_1_database(path, without_reservations=False):
    conn = sqlite3.connect(path)
    conn.executescript(V1_DUMP.read_text())
    if without_reservations:  # the first releases had no reservations table
        conn.execute("DROP TABLE reservations")
    conn.commit()
    conn.close()
    return path


def test_a_version_1_database_is_migrated_with_every_vote(tmp_path):
    db = version_1_database(tmp_path / "v1.db")
    before = sqlite3.connect(db).execute("SELECT item_id, annotator, verdict, left_model, comment, created "
                                         "FROM votes ORDER BY item_id, annotator").fetchall()
    assert len(before) == 3
    store = Store(db)
    votes = store.votes()
    assert sorted((v["item_id"], v["annotator"], v["verdict"], v["left_model"], v["comment"], v["created"])
                  for v in votes) == sorted(before)
    assert {v["criterion"] for v in votes} == {"overall"} and {v["seconds"] for v in votes} == {None}
    assert store.authenticate("boss", "password3") == "admin"  # annotators and passwords kept
    assert store.item("q0")["dialogue"][1] == {"role": "assistant", "content": "earlier answer"}
    version = sqlite3.connect(db).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION
    # the old key (item, annotator) is now per criterion, and the new tables work
    assert store.record_vote("q0", "ann1", "b", "dpo") == DUPLICATE
    assert store.next_item("ann2", overlap=2)["id"] == "q1"  # its reservation from before had expired
    assert store.next_item("ann1", overlap=2)["id"] == "q2"  # ann1 judged q0 and q1
    store.skip("q2", "ann1")
    assert store.next_item("ann1", overlap=2)["id"] == "q3"
    assert store.record_verdicts("q3", "ann1", {"harmless": "a", "helpful": "b"}, "dpo") == STORED
    assert Store(db).votes() == store.votes()  # reopening migrates nothing twice
    assert store.audit()[-1]["new_verdict"] == "b"


def test_a_migration_that_fails_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    db = version_1_database(tmp_path / "v1.db")
    dump = "\n".join(sqlite3.connect(db).iterdump())
    monkeypatch.setitem(MIGRATIONS, 1, MIGRATIONS[1] + "SELECT no_such_function();")
    with pytest.raises(sqlite3.OperationalError, match="no_such_function"):
        Store(db)
    assert "\n".join(sqlite3.connect(db).iterdump()) == dump  # the old votes table, rows and all


def test_a_database_from_before_reservations_opens_and_assigns(tmp_path):
    store = Store(version_1_database(tmp_path / "old.db", without_reservations=True))
    assert len(store.votes()) == 3
    assert store.next_item("ann2", overlap=2)["id"] == "q1"


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    Store(tmp_path / "new.db")
    conn = sqlite3.connect(tmp_path / "new.db")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer deft-app"):
        Store(tmp_path / "new.db")


def test_criteria_are_stored_together_and_counted_once_per_annotator(tmp_path):
    store = Store(tmp_path / "v.db")
    store.add_items(items(2))
    for name in ("ann1", "ann2"):
        store.add_annotator(name, "pw")
    assert store.next_item("ann1", overlap=1)["id"] == "q000"
    assert store.record_verdicts("q000", "ann1", {"harmless": "a", "helpful": "tie"}, "dpo", "ok", overlap=1) == STORED
    assert sorted((v["criterion"], v["verdict"], v["comment"]) for v in store.votes()) == [
        ("harmless", "a", "ok"), ("helpful", "tie", "ok")]
    # two criteria are one judgment: the item is full at overlap 1, and progress counts one item
    assert store.next_item("ann2", overlap=1)["id"] == "q001"
    assert store.progress("ann1", overlap=1) == (1, 2)
    assert store.record_verdicts("q000", "ann2", {"harmless": "b", "helpful": "b"}, "dpo", overlap=1) == FULL
    assert store.record_verdicts("q000", "ann1", {"harmless": "b"}, "dpo") == DUPLICATE
    with pytest.raises(ValueError, match="helpful"):
        store.record_verdicts("q001", "ann1", {"harmless": "a", "helpful": "left"}, "dpo")
    with pytest.raises(ValueError, match="no verdicts"):
        store.record_verdicts("q001", "ann1", {}, "dpo")
    assert len(store.votes()) == 2  # nothing of the refused calls was stored


def test_skip_and_flag_send_the_item_to_someone_else_and_are_no_votes(tmp_path):
    store = Store(tmp_path / "v.db")
    store.add_items(items(3))
    for name in ("ann1", "ann2", "boss"):
        store.add_annotator(name, "pw")
    assert store.next_item("ann1", overlap=1)["id"] == "q000"
    store.skip("q000", "ann1")
    assert store.next_item("ann1", overlap=1)["id"] == "q001"  # never shown the skipped item again
    assert store.next_item("ann2", overlap=1)["id"] == "q000"  # the skip freed it for others
    store.flag("q001", "ann1", "identical", "the same text twice")
    assert store.next_item("ann1", overlap=1)["id"] == "q002"
    with pytest.raises(ValueError, match="reason"):
        store.flag("q002", "ann1", "boring")
    assert store.progress("ann1", overlap=1) == (0, 1)  # only q002 is still open to ann1
    assert store.votes() == []
    assert [(f["item_id"], f["annotator"], f["reason"], f["note"]) for f in store.flags()] == [
        ("q001", "ann1", "identical", "the same text twice")]
    progress = {p["annotator"]: p for p in store.annotator_progress()}
    assert (progress["ann1"]["done"], progress["ann1"]["skipped"], progress["ann1"]["flagged"]) == (0, 1, 1)
    assert progress["boss"] == {"annotator": "boss", "done": 0, "skipped": 0, "flagged": 0, "median_seconds": None}


def test_undo_takes_back_the_last_vote_keeps_the_audit_and_shows_the_item_again(tmp_path, monkeypatch):
    clock = iter(range(1000, 2000, 10))  # each time.time() call 10 seconds later
    monkeypatch.setattr("deft_app.store.time.time", lambda: float(next(clock)))
    store = Store(tmp_path / "v.db")
    store.add_items(items(3))
    store.add_annotator("ann", "pw")
    assert store.undo_last("ann") is None  # nothing to take back
    assert store.next_item("ann", overlap=1)["id"] == "q000"
    assert store.record_verdicts("q000", "ann", {"harmless": "a", "helpful": "b"}, "dpo") == STORED
    assert store.next_item("ann", overlap=1)["id"] == "q001"  # on the next item
    assert store.undo_last("ann") == "q000"
    assert store.votes() == []
    assert store.next_item("ann", overlap=1)["id"] == "q000"  # shown again first
    assert store.record_verdicts("q000", "ann", {"harmless": "tie", "helpful": "b"}, "dpo") == STORED
    assert store.next_item("ann", overlap=1)["id"] == "q001"  # then the item it was on
    assert sorted((v["criterion"], v["verdict"]) for v in store.votes()) == [("harmless", "tie"), ("helpful", "b")]
    trail = [(a["criterion"], a["old_verdict"], a["new_verdict"]) for a in store.audit()]
    assert trail == [("harmless", None, "a"), ("helpful", None, "b"), ("harmless", "a", None),
                     ("helpful", "b", None), ("harmless", None, "tie"), ("helpful", None, "b")]
    assert all(a["annotator"] == "ann" and a["item_id"] == "q000" for a in store.audit())
    assert [a["at"] for a in store.audit()] == sorted(a["at"] for a in store.audit())
    # seconds per item: from the first showing to the vote, on the injected clock
    [seconds] = {v["seconds"] for v in store.votes()}
    assert seconds > 0 and store.annotator_progress()[0]["median_seconds"] == seconds


def test_the_criteria_voted_on_are_read_without_writing(tmp_path):
    assert criteria_voted(tmp_path / "new.db") == set() and not (tmp_path / "new.db").exists()
    v1 = version_1_database(tmp_path / "v1.db")
    before = v1.read_bytes()
    assert criteria_voted(v1) == {"overall"}  # a vote from before criteria judged "overall"
    assert v1.read_bytes() == before and not list(tmp_path.glob("v1.db-*"))  # not migrated, no journal switched
    store = Store(tmp_path / "v.db")
    store.add_items(items(2))
    store.add_annotator("ann", "pw")
    assert criteria_voted(tmp_path / "v.db") == set()  # items but no vote yet
    store.record_verdicts("q000", "ann", {"harmless": "a", "helpful": "b"}, "dpo")
    assert criteria_voted(tmp_path / "v.db") == {"harmless", "helpful"}  # still in the open store's WAL
