"""The judging app's storage: SQLite in WAL mode.

One vote per (item, annotator, criterion) is a primary key, so a double click or a retried
request never counts twice; every write is one committed transaction, so a restart loses
nothing. Passwords are stored as salted scrypt hashes. An item handed out is reserved for its
annotator (in the transaction that picks it) until they vote, skip or flag it, or the
reservation expires, so annotators working at the same time never give an item more than
`overlap` judgments. Every vote and every undo is kept in the audit table (who, when, old,
new); the votes table holds the latest verdicts, which results and exports read. A database
written by an earlier version is migrated when it is opened (MIGRATIONS)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import sqlite3
import statistics
import threading
import time
from pathlib import Path

VERDICTS = ("a", "b", "tie", "both_bad")
FLAG_REASONS = ("broken", "offensive", "identical", "other")
DEFAULT_CRITERION = "overall"
HOLD_SECONDS = 15 * 60  # how long an item handed out stays reserved for its annotator
STORED, DUPLICATE, FULL = "stored", "duplicate", "full"  # what became of a vote
ROLES = ("annotator", "admin")
SCHEMA_VERSION = 2
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
    criterion TEXT NOT NULL DEFAULT 'overall',
    verdict TEXT NOT NULL CHECK (verdict IN ('a', 'b', 'tie', 'both_bad')),
    left_model TEXT NOT NULL,         -- which model's answer was shown on the left
    comment TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    seconds REAL,                     -- from the item being shown to the vote
    PRIMARY KEY (item_id, annotator, criterion)
);
CREATE TABLE IF NOT EXISTS reservations (
    item_id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL REFERENCES annotators(name),
    expires REAL NOT NULL,
    started REAL,                     -- when the item was first shown to the annotator
    PRIMARY KEY (item_id, annotator)
);
CREATE TABLE IF NOT EXISTS skips (
    item_id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL REFERENCES annotators(name),
    created REAL NOT NULL,
    PRIMARY KEY (item_id, annotator)
);
CREATE TABLE IF NOT EXISTS flags (
    item_id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL REFERENCES annotators(name),
    reason TEXT NOT NULL CHECK (reason IN ('broken', 'offensive', 'identical', 'other')),
    note TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    PRIMARY KEY (item_id, annotator)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL,
    annotator TEXT NOT NULL,
    criterion TEXT NOT NULL,
    old_verdict TEXT,                 -- NULL: there was no vote
    new_verdict TEXT,                 -- NULL: the vote was taken back
    at REAL NOT NULL
);
"""
# Version 1 (before criteria, skips, flags and the audit): votes keyed by (item, annotator),
# reservations (absent in the first releases) without a start time. Each step runs inside the
# opening transaction.
MIGRATIONS = {
    1: """
CREATE TABLE IF NOT EXISTS reservations (
    item_id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL REFERENCES annotators(name),
    expires REAL NOT NULL,
    PRIMARY KEY (item_id, annotator)
);
CREATE TABLE votes_v2 (
    item_id TEXT NOT NULL REFERENCES items(id),
    annotator TEXT NOT NULL REFERENCES annotators(name),
    criterion TEXT NOT NULL DEFAULT 'overall',
    verdict TEXT NOT NULL CHECK (verdict IN ('a', 'b', 'tie', 'both_bad')),
    left_model TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    seconds REAL,
    PRIMARY KEY (item_id, annotator, criterion)
);
INSERT INTO votes_v2 (item_id, annotator, criterion, verdict, left_model, comment, created)
    SELECT item_id, annotator, 'overall', verdict, left_model, comment, created FROM votes;
DROP TABLE votes;
ALTER TABLE votes_v2 RENAME TO votes;
ALTER TABLE reservations ADD COLUMN started REAL;
""",
}


def criterion_of(vote: dict) -> str:
    """A vote's criterion; a vote from before criteria judged the one there was, "overall"."""
    return vote.get("criterion") or DEFAULT_CRITERION


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


APP_TABLES = {"annotators", "items", "votes"}  # in every version of this app's database
SQLITE_HEADER = b"SQLite format 3\x00"


class NotOurDatabase(ValueError):
    """The path holds something other than this app's database; it is left as it was."""


def check_database(path: str | Path) -> None:
    """Raises NotOurDatabase, saying what is there, unless `path` is missing or empty (a new
    database), or an SQLite database with this app's tables (or none yet). Read only: nothing
    is written, no journal mode switched."""
    path = Path(path)
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return
    if not path.is_file():
        raise NotOurDatabase(f"{path} is a directory, not a database")
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise NotOurDatabase(f"{path} is not an SQLite database (it starts {header[:8]!r})")
    with path.open("rb") as f:
        head = f.read(100)  # the database header: page size at 16, pages at 28
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    size = path.stat().st_size
    if len(head) < 100 or not page or size % page or size < page * pages:
        raise NotOurDatabase(f"{path} is not a readable SQLite database (cut short: {size} bytes, "
                             f"{pages} pages of {page})")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise NotOurDatabase(f"{path} is not a readable SQLite database ({err})") from None
    if tables and not APP_TABLES <= tables:
        raise NotOurDatabase(f"{path} is another application's SQLite database (tables: {', '.join(sorted(tables))})")


def criteria_voted(path: str | Path) -> set[str]:
    """The criteria of the votes in the database at `path` (none for a new database or one
    without votes), read like check_database: nothing written, nothing migrated."""
    check_database(path)
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(votes)")}
        if not columns:  # no tables yet
            return set()
        if "criterion" not in columns:  # version 1: its votes judged the one criterion there was
            return {DEFAULT_CRITERION} if conn.execute("SELECT 1 FROM votes LIMIT 1").fetchone() else set()
        return {row[0] for row in conn.execute("SELECT DISTINCT criterion FROM votes")}


class Store:
    def __init__(self, path: str | Path):
        check_database(path)
        self.path = str(path)
        self._local = threading.local()
        self._migrate()

    def _migrate(self) -> None:
        """Bring a database of any earlier version up to SCHEMA_VERSION, in one transaction."""
        with self._conn() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = SCHEMA_VERSION
            if "votes" in tables:
                row = (conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                       if "meta" in tables else None)
                version = int(row[0]) if row else 1  # version 1 did not record its version
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: written by a newer deft-app (schema {version}); this one reads "
                                   f"schema {SCHEMA_VERSION} and older")
            for step in range(version, SCHEMA_VERSION):
                _run_script(conn, MIGRATIONS[step])
            _run_script(conn, SCHEMA)
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT(key) DO UPDATE SET "
                         "value = excluded.value", (str(SCHEMA_VERSION),))

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
        """The item this annotator holds (the latest reserved), or else one they have not judged,
        skipped or flagged whose judges and live reservations number fewer than `overlap`: items
        closest to complete first (so overlapping judgments accumulate), then by id. The item is
        reserved for them for `hold` seconds."""
        now = time.time()
        with self._conn() as conn:
            conn.execute("DELETE FROM reservations WHERE expires <= ?", (now,))
            row = conn.execute(
                "SELECT items.*, 0 AS n FROM reservations JOIN items ON items.id = reservations.item_id "
                "WHERE reservations.annotator = ? ORDER BY reservations.expires DESC LIMIT 1", (annotator,)).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT * FROM (SELECT items.*, "
                    "(SELECT COUNT(DISTINCT annotator) FROM votes WHERE votes.item_id = items.id) + "
                    "(SELECT COUNT(*) FROM reservations WHERE reservations.item_id = items.id) AS n FROM items "
                    f"WHERE items.id NOT IN ({_SET_ASIDE})) "
                    "WHERE n < :overlap ORDER BY n DESC, id LIMIT 1",
                    {"annotator": annotator, "overlap": overlap}).fetchone()
            if row is not None:
                _reserve(conn, row["id"], annotator, now + hold, now)
        return _item(row) if row else None

    def progress(self, annotator: str, overlap: int) -> tuple[int, int]:
        """(judged by this annotator, judged + still open to them); skipped and flagged items
        are neither."""
        with self._conn() as conn:
            done = conn.execute("SELECT COUNT(DISTINCT item_id) FROM votes WHERE annotator = ?",
                                (annotator,)).fetchone()[0]
            open_ = conn.execute(
                "SELECT COUNT(*) FROM (SELECT items.id, (SELECT COUNT(DISTINCT annotator) FROM votes "
                f"WHERE votes.item_id = items.id) AS n FROM items WHERE items.id NOT IN ({_SET_ASIDE})) "
                "WHERE n < :overlap", {"annotator": annotator, "overlap": overlap}).fetchone()[0]
        return done, done + open_

    # ---------------------------------------------------------------- votes
    def record_vote(self, item_id: str, annotator: str, verdict: str, left_model: str, comment: str = "",
                    overlap: int | None = None, criterion: str = DEFAULT_CRITERION) -> str:
        """One verdict on one criterion: record_verdicts with a single criterion."""
        return self.record_verdicts(item_id, annotator, {criterion: verdict}, left_model, comment, overlap)

    def record_verdicts(self, item_id: str, annotator: str, verdicts: dict[str, str], left_model: str,
                        comment: str = "", overlap: int | None = None) -> str:
        """The annotator's verdicts on an item, one per criterion, stored together. STORED;
        DUPLICATE when this annotator had already voted on the item (a double click or a retried
        request: the first vote stands); FULL when `overlap` others voted on it while this
        annotator's reservation had expired. Ends the annotator's reservation of the item."""
        if not verdicts:
            raise ValueError("no verdicts given")
        for criterion, verdict in verdicts.items():
            if verdict not in VERDICTS:
                raise ValueError(f"verdict for {criterion!r} must be one of {VERDICTS}, got {verdict!r}")
        now = time.time()
        with self._conn() as conn:
            held = conn.execute("DELETE FROM reservations WHERE item_id = ? AND annotator = ? RETURNING started",
                                (item_id, annotator)).fetchone()
            mine = conn.execute("SELECT 1 FROM votes WHERE item_id = ? AND annotator = ?", (item_id, annotator))
            if mine.fetchone():
                return DUPLICATE
            judges = conn.execute("SELECT COUNT(DISTINCT annotator) FROM votes WHERE item_id = ?", (item_id,))
            if overlap is not None and judges.fetchone()[0] >= overlap:
                return FULL
            seconds = now - held["started"] if held is not None and held["started"] is not None else None
            for criterion, verdict in verdicts.items():
                conn.execute("INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (item_id, annotator, criterion, verdict, left_model, comment, now, seconds))
                conn.execute("INSERT INTO audit (item_id, annotator, criterion, old_verdict, new_verdict, at) "
                             "VALUES (?, ?, ?, NULL, ?, ?)", (item_id, annotator, criterion, verdict, now))
            return STORED

    def undo_last(self, annotator: str, hold: float = HOLD_SECONDS) -> str | None:
        """Take back the annotator's latest vote (every criterion of that item): the audit keeps
        it, and the item is handed back to them first. The item's id, or None without a vote."""
        now = time.time()
        with self._conn() as conn:
            last = conn.execute("SELECT item_id FROM votes WHERE annotator = ? ORDER BY created DESC LIMIT 1",
                                (annotator,)).fetchone()
            if last is None:
                return None
            item_id = last["item_id"]
            for vote in conn.execute("DELETE FROM votes WHERE item_id = ? AND annotator = ? "
                                     "RETURNING criterion, verdict", (item_id, annotator)).fetchall():
                conn.execute("INSERT INTO audit (item_id, annotator, criterion, old_verdict, new_verdict, at) "
                             "VALUES (?, ?, ?, ?, NULL, ?)", (item_id, annotator, vote["criterion"], vote["verdict"],
                                                              now))
            # expires after the item they hold now, so next_item shows the undone one first
            _reserve(conn, item_id, annotator, now + hold + 1, now)
            return item_id

    def skip(self, item_id: str, annotator: str) -> None:
        """The annotator passes on the item: it goes to someone else, and it is no vote."""
        with self._conn() as conn:
            conn.execute("DELETE FROM reservations WHERE item_id = ? AND annotator = ?", (item_id, annotator))
            conn.execute("INSERT OR IGNORE INTO skips VALUES (?, ?, ?)", (item_id, annotator, time.time()))

    def flag(self, item_id: str, annotator: str, reason: str, note: str = "") -> None:
        """The annotator reports the item (broken, offensive, identical answers, other) and
        passes on it; the admin sees the flags."""
        if reason not in FLAG_REASONS:
            raise ValueError(f"flag reason must be one of {FLAG_REASONS}, got {reason!r}")
        with self._conn() as conn:
            conn.execute("DELETE FROM reservations WHERE item_id = ? AND annotator = ?", (item_id, annotator))
            conn.execute("INSERT INTO flags VALUES (?, ?, ?, ?, ?) ON CONFLICT(item_id, annotator) DO UPDATE SET "
                         "reason = excluded.reason, note = excluded.note, created = excluded.created",
                         (item_id, annotator, reason, note, time.time()))

    def votes(self) -> list[dict]:
        """Every current vote with its item's models and category, oldest first."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT votes.*, items.model_a, items.model_b, items.category FROM votes JOIN items "
                "ON items.id = votes.item_id ORDER BY votes.created, votes.item_id, votes.annotator, "
                "votes.criterion").fetchall()
        return [dict(r) for r in rows]

    def audit(self) -> list[dict]:
        """Every change of a vote, oldest first: who, when, criterion, old and new verdict."""
        with self._conn() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY id").fetchall()]

    def flags(self) -> list[dict]:
        with self._conn() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM flags ORDER BY created, item_id").fetchall()]

    def annotator_progress(self) -> list[dict]:
        """Per annotator: items judged, skipped and flagged, and the median seconds per judged item."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT name AS annotator, "
                "(SELECT COUNT(DISTINCT item_id) FROM votes WHERE annotator = name) AS done, "
                "(SELECT COUNT(*) FROM skips WHERE annotator = name) AS skipped, "
                "(SELECT COUNT(*) FROM flags WHERE annotator = name) AS flagged "
                "FROM annotators ORDER BY name").fetchall()
            timed = conn.execute("SELECT annotator, MAX(seconds) AS seconds FROM votes WHERE seconds IS NOT NULL "
                                 "GROUP BY annotator, item_id").fetchall()
        seconds: dict[str, list[float]] = {}
        for row in timed:
            seconds.setdefault(row["annotator"], []).append(row["seconds"])
        return [{**dict(r), "median_seconds": statistics.median(seconds[r["annotator"]])
                 if r["annotator"] in seconds else None} for r in rows]


# The items an annotator (the named parameter :annotator) has judged, skipped or flagged.
_SET_ASIDE = ("SELECT item_id FROM votes WHERE annotator = :annotator UNION SELECT item_id FROM skips WHERE "
              "annotator = :annotator UNION SELECT item_id FROM flags WHERE annotator = :annotator")


def _run_script(conn, script: str) -> None:
    """The statements of a script inside the open transaction (executescript would commit it
    first); the scripts here hold no semicolon but between statements."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _reserve(conn, item_id: str, annotator: str, expires: float, now: float) -> None:
    """Hold the item for the annotator until `expires`; the first showing's time is kept."""
    conn.execute("INSERT INTO reservations VALUES (?, ?, ?, ?) ON CONFLICT(item_id, annotator) "
                 "DO UPDATE SET expires = excluded.expires", (item_id, annotator, expires, now))


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
