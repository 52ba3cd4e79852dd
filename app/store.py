"""The judging app's storage: SQLite in WAL mode.

One vote per (item, annotator) is a primary key, so a double click or a retried request
never counts twice; every write is one committed transaction, so a restart loses nothing.
Passwords are stored as salted scrypt hashes. An item handed out is reserved for its
annotator (in the transaction that picks it) until they vote or the reservation expires, so
annotators working at the same time never give an item more than `overlap` votes."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

VERDICTS = ("a", "b", "tie", "both_bad")
HOLD_SECONDS = 15 * 60  # how long an item handed out stays reserved for its annotator
STORED, DUPLICATE, FULL = "stored", "duplicate", "full"  # what became of a vote
ROLES = ("annotator", "admin")
SCHEMA = """
CREATE TABLE IF NOT EXISTS annotators (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('annotator', 'admin'))
);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    dialogue TEXT NOT NULL,          -- JSON list of {role, content}: the turns before the answers
    category TEXT,
    model_a TEXT NOT NULL, answer_a TEXT NOT NULL,
    model_b TEXT NOT NULL, answer_b TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    item_id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL REFERENCES annotators(name),
    verdict TEXT NOT NULL CHECK (verdict IN ('a', 'b', 'tie', 'both_bad')),
    left_model TEXT NOT NULL,         -- which model's answer was shown on the left
    comment TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    PRIMARY KEY (item_id, annotator)
);
CREATE TABLE IF NOT EXISTS reservations (
    item_id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL REFERENCES annotators(name),
    expires REAL NOT NULL,
    PRIMARY KEY (item_id, annotator)
);
"""


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2 ** 14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=2 ** 14, r=8, p=1)
    return hmac.compare_digest(candidate.hex(), digest)


def left_is_a(item_id: str, annotator: str, secret: bytes) -> bool:
    """Which side model A is shown on, fixed per (item, annotator) and unpredictable without
    the secret: the same annotator sees the same layout after a reload."""
    return hmac.new(secret, f"{item_id}\0{annotator}".encode(), hashlib.sha256).digest()[0] % 2 == 0


class Store:
    def __init__(self, path: str | Path):
        self.path = str(path)
        self._local = threading.local()
        self._raw().executescript(SCHEMA)

    def _conn(self) -> "_Transaction":
        return _Transaction(self._raw())

    def _raw(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections are not shared between threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    def secret(self) -> bytes:
        """A random key made once per database: it fixes each annotator's side layout across restarts."""
        with self._conn() as conn:
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('layout_secret', ?)", (os.urandom(32).hex(),))
            return bytes.fromhex(conn.execute("SELECT value FROM meta WHERE key = 'layout_secret'").fetchone()[0])

    def role(self, name: str) -> str | None:
        with self._conn() as conn:
            row = conn.execute("SELECT role FROM annotators WHERE name = ?", (name,)).fetchone()
        return row["role"] if row else None

    # ---------------------------------------------------------------- annotators
    def add_annotator(self, name: str, password: str, role: str = "annotator") -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        with self._conn() as conn:
            conn.execute("INSERT INTO annotators VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                         "password_hash = excluded.password_hash, role = excluded.role",
                         (name, hash_password(password), role))

    def authenticate(self, name: str, password: str) -> str | None:
        """The annotator's role, or None for an unknown name or a wrong password."""
        with self._conn() as conn:
            row = conn.execute("SELECT password_hash, role FROM annotators WHERE name = ?", (name,)).fetchone()
        if row is None:
            hash_password(password)  # same work either way: no timing hint about which names exist
            return None
        return row["role"] if verify_password(password, row["password_hash"]) else None

    # ---------------------------------------------------------------- items
    def add_items(self, items: list[dict]) -> int:
        """Insert items (id, dialogue, category, model_a, answer_a, model_b, answer_b); an id
        already present is kept as it was. Returns how many were new."""
        with self._conn() as conn:
            before = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            conn.executemany("INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [(i["id"], json.dumps(i["dialogue"]), i.get("category"), i["model_a"], i["answer_a"],
                               i["model_b"], i["answer_b"]) for i in items])
            return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] - before

    def item(self, item_id: str) -> dict | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return _item(row) if row else None

    def next_item(self, annotator: str, overlap: int, hold: float = HOLD_SECONDS) -> dict | None:
        """The item this annotator holds, or else one they have not judged whose votes and live
        reservations number fewer than `overlap`: items closest to complete first (so overlapping
        judgments accumulate), then by id. The item is reserved for them for `hold` seconds."""
        now = time.time()
        with self._conn() as conn:
            conn.execute("DELETE FROM reservations WHERE expires <= ?", (now,))
            row = conn.execute(
                "SELECT items.*, 0 AS n FROM reservations JOIN items ON items.id = reservations.item_id "
                "WHERE reservations.annotator = ? ORDER BY reservations.expires DESC LIMIT 1", (annotator,)).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT * FROM (SELECT items.*, "
                    "(SELECT COUNT(*) FROM votes WHERE votes.item_id = items.id) + "
                    "(SELECT COUNT(*) FROM reservations WHERE reservations.item_id = items.id) AS n FROM items "
                    "WHERE items.id NOT IN (SELECT item_id FROM votes WHERE annotator = ?)) "
                    "WHERE n < ? ORDER BY n DESC, id LIMIT 1", (annotator, overlap)).fetchone()
            if row is not None:
                conn.execute("INSERT INTO reservations VALUES (?, ?, ?) ON CONFLICT(item_id, annotator) "
                             "DO UPDATE SET expires = excluded.expires", (row["id"], annotator, now + hold))
        return _item(row) if row else None

    def progress(self, annotator: str, overlap: int) -> tuple[int, int]:
        """(judged by this annotator, judged + still open to them)."""
        with self._conn() as conn:
            done = conn.execute("SELECT COUNT(*) FROM votes WHERE annotator = ?", (annotator,)).fetchone()[0]
            open_ = conn.execute(
                "SELECT COUNT(*) FROM (SELECT items.id, COUNT(votes.item_id) AS n FROM items LEFT JOIN votes "
                "ON votes.item_id = items.id WHERE items.id NOT IN (SELECT item_id FROM votes WHERE annotator = ?) "
                "GROUP BY items.id HAVING n < ?)", (annotator, overlap)).fetchone()[0]
        return done, done + open_

    # ---------------------------------------------------------------- votes
    def record_vote(self, item_id: str, annotator: str, verdict: str, left_model: str, comment: str = "",
                    overlap: int | None = None) -> str:
        """STORED; DUPLICATE when this annotator had already voted on the item (a double click or
        a retried request: the first vote stands); FULL when `overlap` others voted on it while
        this annotator's reservation had expired. Ends the annotator's reservation of the item."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        with self._conn() as conn:
            conn.execute("DELETE FROM reservations WHERE item_id = ? AND annotator = ?", (item_id, annotator))
            if conn.execute("SELECT 1 FROM votes WHERE item_id = ? AND annotator = ?", (item_id, annotator)).fetchone():
                return DUPLICATE
            if overlap is not None and conn.execute(
                    "SELECT COUNT(*) FROM votes WHERE item_id = ?", (item_id,)).fetchone()[0] >= overlap:
                return FULL
            conn.execute("INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?)",
                         (item_id, annotator, verdict, left_model, comment, time.time()))
            return STORED

    def votes(self) -> list[dict]:
        """Every vote with its item's models and category, oldest first."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT votes.*, items.model_a, items.model_b, items.category FROM votes JOIN items "
                "ON items.id = votes.item_id ORDER BY votes.created, votes.item_id, votes.annotator").fetchall()
        return [dict(r) for r in rows]


class _Transaction:
    """`with store._conn() as conn`: one immediate transaction, committed or rolled back."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, *exc) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _item(row) -> dict:
    d = dict(row)
    d.pop("n", None)
    d["dialogue"] = json.loads(d["dialogue"])
    return d
