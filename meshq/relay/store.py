"""The relay's storage: streams of messages and durable consumers in one SQLite file.

No sockets and no threads: :class:`Store` is used by one thread (the relay's
service thread), and every method is plain SQL. The file is in WAL mode with
``synchronous=FULL``, so a transaction is on disk when :meth:`Store.commit`
returns; the relay confirms nothing before that.

Every stored message carries a CRC-32 over its fields. A record that fails
it is never served: it is counted, logged loudly, and skipped.

Rules this module keeps:

- Sequence numbers are per stream, from 1, and never reused, also after
  retention deleted every message (``streams.last_seq`` remembers) and
  after a damaged or torn write-ahead log lost transactions (the numbers
  reserved outside the WAL, highwater.py, are skipped).
- A producer's message id is stored once per stream while the message is
  kept, and for the dedup window (seconds) after retention removed it: a
  retry of a message whose confirm was lost gets the first copy's sequence
  number back.
- A consumer's position is its ack floor (every sequence at or below it is
  done) plus the acknowledged sequences above it.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import sqlite3
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .errors import StoreDamaged
from .highwater import HighWater
from .walcheck import WalCheck, check_wal

__all__ = ["ConsumerRow", "Store", "StoredMessage", "StreamStats"]

log = logging.getLogger("meshq.relay")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS streams (
    stream TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    stream TEXT NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    msg_id BLOB NOT NULL,
    flags INTEGER NOT NULL,
    payload BLOB NOT NULL,
    time_ns INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_id ON messages (stream, msg_id);
-- Ids of messages retention removed, kept for the rest of the dedup window.
CREATE TABLE IF NOT EXISTS ids (
    stream TEXT NOT NULL,
    msg_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    PRIMARY KEY (stream, msg_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ids_by_time ON ids (time_ns);
-- Only deletions (retention) touch these two tables, so that storing a
-- message writes two b-trees (the messages and their id index), no more.
CREATE TRIGGER IF NOT EXISTS keep_removed AFTER DELETE ON messages BEGIN
    -- Stamped with the time of removal (ns): the window runs from then.
    INSERT OR IGNORE INTO ids VALUES (old.stream, old.msg_id, old.seq,
        CAST((julianday('now') - 2440587.5) * 86400000000000 AS INTEGER));
    INSERT INTO streams VALUES (old.stream, old.seq)
        ON CONFLICT (stream) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq);
END;
CREATE TABLE IF NOT EXISTS consumers (
    stream TEXT NOT NULL,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    ack_floor INTEGER NOT NULL,
    PRIMARY KEY (stream, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks (
    stream TEXT NOT NULL,
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (stream, name, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    stream TEXT NOT NULL,
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    topic TEXT NOT NULL,
    msg_id BLOB NOT NULL,
    flags INTEGER NOT NULL,
    payload BLOB NOT NULL,
    time_ns INTEGER NOT NULL,
    crc INTEGER NOT NULL,
    PRIMARY KEY (stream, name, seq)
) WITHOUT ROWID;
"""

_CRC_HEAD = struct.Struct(">QQB")  # seq, time_ns, flags


def checksum(seq: int, time_ns: int, flags: int, topic: str, msg_id: bytes, payload: bytes) -> int:
    """CRC-32 of a message's stored fields; the stream name is the row's key."""
    crc = zlib.crc32(_CRC_HEAD.pack(seq, time_ns, flags))
    crc = zlib.crc32(topic.encode("utf-8"), crc)
    crc = zlib.crc32(msg_id, crc)
    return zlib.crc32(payload, crc)


class StoredMessage(NamedTuple):
    """One message of a stream, as stored."""

    seq: int
    topic: str
    msg_id: bytes
    flags: int
    payload: bytes
    time_ns: int


class ConsumerRow(NamedTuple):
    """A durable consumer's persistent state."""

    prefix: str
    ack_floor: int
    acked: frozenset[int]


@dataclass
class StreamStats:
    """What a stream holds now. Sizes are payload bytes."""

    messages: int = 0
    bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0


class Store:
    """One relay's SQLite file. Not thread-safe: one thread uses it.

    Before SQLite opens the file, its write-ahead log is walked (walcheck.py):
    a torn tail or damage is logged loudly and counted (:meth:`wal_faults`),
    and every stream then goes on above the sequence numbers reserved in
    ``<name>.seqs`` (highwater.py), so none that may have been confirmed is
    given out again.

    Raises StoreDamaged if SQLite finds the file damaged, sqlite3.Error or
    OSError if it cannot be opened.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        #: What the write-ahead log held at open, before SQLite replayed it.
        self.wal = _check_wal(self.path)
        self._highwater = HighWater(self.path.with_suffix(".seqs"))
        #: Records refused because they failed their checksum, since open.
        self.corrupt = 0
        self._corrupt_seen: set[tuple[str, int]] = set()
        #: Problems PRAGMA quick_check found at open (a hidden record, say).
        self.integrity_problems = 0
        self._in_transaction = False
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreDamaged(self.path, str(exc)) from None
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit returns only once the WAL is fsynced; a confirm may
        # then be sent.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (secrets.token_hex(16),)
        )
        #: This file's identity, kept across restarts (relays announce it).
        self.store_id = str(
            self._db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
        )
        # Once per start (time grows with the file): a damaged b-tree would
        # otherwise show only as queries failing later, one by one.
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            self.integrity_problems = len(problems)
            log.error(
                "INTEGRITY CHECK FAILED for relay store %s: %d problem(s), first %s; records "
                "may be hidden. Restore it from a backup, or salvage it (meshq relay --salvage)",
                self.path,
                len(problems),
                problems[:3],
            )
        if self.wal.state in ("torn", "damaged"):
            self._continue_above_reservations()
            key = "wal_damaged" if self.wal.state == "damaged" else "wal_torn"
            self._db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                " SET value = CAST(value AS INTEGER) + excluded.value",
                (key, self.wal.lost_commits if self.wal.state == "damaged" else 1),
            )

    def _continue_above_reservations(self) -> None:
        """After a WAL that lost its end: every stream goes on above its reserved numbers.

        The transactions lost may have been confirmed: their sequence numbers
        are never given out again (a gap instead).
        """
        for stream, reserved in sorted(self._highwater.reserved.items()):
            if reserved > self.last_seq(stream):
                self.raise_last_seq(stream, reserved)
                self.commit()
                log.error(
                    "relay store %s: stream %r continues after seq %d (reserved before the "
                    "WAL lost its end): numbers the lost transactions may have confirmed are "
                    "never given out again",
                    self.path,
                    stream,
                    reserved,
                )

    def claim(self, stream: str) -> int:
        """When this store first claimed ``stream`` (ns since the epoch), recorded now if new.

        A store from before claims were recorded claims its streams from
        their oldest stored message.
        """
        key = f"claimed:{stream}"
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return int(row[0])
        oldest = self._db.execute(
            "SELECT min(time_ns) FROM messages WHERE stream = ?", (stream,)
        ).fetchone()[0]
        claimed = int(oldest) if oldest is not None else time.time_ns()
        self._db.execute("INSERT INTO meta VALUES (?, ?)", (key, str(claimed)))
        return claimed

    def wal_faults(self) -> dict[str, int]:
        """Faults of the write-ahead log found at opens, over the file's life.

        ``wal_damaged``: committed transactions lost to a damaged WAL;
        ``wal_torn``: opens that found the WAL's last write cut short.
        """
        rows = self._db.execute(
            "SELECT key, value FROM meta WHERE key IN ('wal_damaged', 'wal_torn')"
        ).fetchall()
        found = {"wal_damaged": 0, "wal_torn": 0}
        found.update({str(key): int(value) for key, value in rows})
        return found

    # ------------------------------------------------------------------
    # Transactions

    def _begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_transaction = True

    def commit(self) -> None:
        """Make everything written since the last commit durable (fsync).

        Raises sqlite3.Error (disk full, I/O error): then nothing since the
        last commit is stored; call :meth:`rollback` before going on.
        """
        if self._in_transaction:
            self._db.execute("COMMIT")
            self._in_transaction = False

    def rollback(self) -> None:
        """Forget everything written since the last commit (after an error)."""
        self._in_transaction = False
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    @property
    def dirty(self) -> bool:
        """True while writes wait for :meth:`commit`."""
        return self._in_transaction

    # ------------------------------------------------------------------
    # Streams

    def last_seq(self, stream: str) -> int:
        """The highest sequence ever stored in ``stream`` (0 for none), trimmed ones included."""
        row = self._db.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM messages WHERE stream = ?), 0),"
            " coalesce((SELECT last_seq FROM streams WHERE stream = ?), 0))",
            (stream, stream),
        ).fetchone()
        return int(row[0])

    def raise_last_seq(self, stream: str, seq: int) -> None:
        """Make ``seq`` the lowest :meth:`last_seq` of ``stream`` may be from now on."""
        self._begin()
        self._db.execute(
            "INSERT INTO streams VALUES (?, ?) ON CONFLICT (stream)"
            " DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            (stream, seq),
        )

    def append(
        self,
        stream: str,
        seq: int,
        topic: str,
        msg_id: bytes,
        flags: int,
        payload: bytes,
        time_ns: int,
    ) -> None:
        """Store one message as ``seq`` (the caller assigns it: last_seq + 1)."""
        try:
            self._highwater.cover(stream, seq)
        except OSError as exc:  # a full disk, as for the database: the caller's store error
            raise sqlite3.OperationalError(f"sequence reservation not written: {exc}") from exc
        self._begin()
        crc = checksum(seq, time_ns, flags, topic, msg_id, payload)
        self._db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (stream, seq, topic, msg_id, flags, payload, time_ns, crc),
        )

    def seq_of(self, stream: str, msg_id: bytes) -> int | None:
        """The sequence number a message id was stored under, if it is stored or was
        removed by retention within the dedup window."""
        row = (
            self._db.execute(
                "SELECT seq FROM messages WHERE stream = ? AND msg_id = ?", (stream, msg_id)
            ).fetchone()
            or self._db.execute(
                "SELECT seq FROM ids WHERE stream = ? AND msg_id = ?", (stream, msg_id)
            ).fetchone()
        )
        return int(row[0]) if row else None

    def read(
        self,
        stream: str,
        after: int,
        limit: int,
        prefix: str = "",
        max_bytes: int = 1 << 62,
        upto: int = 1 << 62,
    ) -> list[StoredMessage]:
        """Up to ``limit`` intact messages with ``after`` < seq <= ``upto`` under ``prefix``.

        Stops early once ``max_bytes`` of payload are collected (at least one
        message is returned). Records failing their checksum are skipped, and
        the reading goes on past them: an empty list means no intact message
        is left in the range, never "only corrupt ones in this window".
        """
        found: list[StoredMessage] = []
        size = 0
        while True:
            wanted = limit - len(found)
            rows = self._db.execute(
                "SELECT seq, topic, msg_id, flags, payload, time_ns, crc FROM messages"
                " WHERE stream = ? AND seq > ? AND seq <= ? AND substr(topic, 1, ?) = ?"
                " ORDER BY seq LIMIT ?",
                (stream, after, upto, len(prefix), prefix, wanted),
            ).fetchall()
            for row in rows:
                after = row[0]
                message = self._intact(stream, row)
                if message is None:
                    continue
                found.append(message)
                size += len(message.payload)
                if size >= max_bytes:
                    return found
            if len(rows) < wanted or len(found) == limit:
                return found

    def get(self, stream: str, seq: int) -> StoredMessage | None:
        """One intact message, or None if it is gone (retention) or corrupt."""
        found = self.read(stream, seq - 1, 1, upto=seq)
        return found[0] if found else None

    def _intact(self, stream: str, row: tuple[Any, ...]) -> StoredMessage | None:
        """The message of a (seq, topic, msg_id, flags, payload, time_ns, crc) row, if intact.

        A row failing its checksum is refused (counted, logged once): None.
        """
        seq, topic, msg_id, flags, payload, time_ns, crc = row
        if checksum(seq, time_ns, flags, topic, msg_id, payload) != crc:
            self._refuse(stream, seq)
            return None
        return StoredMessage(seq, topic, msg_id, flags, payload, time_ns)

    def _refuse(self, stream: str, seq: int) -> None:
        if (stream, seq) not in self._corrupt_seen:
            self._corrupt_seen.add((stream, seq))
            self.corrupt += 1
            log.error(
                "CORRUPT RECORD in %s: stream %r seq %d fails its checksum; it is not served",
                self.path,
                stream,
                seq,
            )

    def first_seq_at(self, stream: str, time_ns: int) -> int:
        """The first sequence stored at or after ``time_ns``, or last_seq + 1."""
        row = self._db.execute(
            "SELECT min(seq) FROM messages WHERE stream = ? AND time_ns >= ?", (stream, time_ns)
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else self.last_seq(stream) + 1

    def stats(self, stream: str) -> StreamStats:
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0), coalesce(min(seq), 0)"
            " FROM messages WHERE stream = ?",
            (stream,),
        ).fetchone()
        return StreamStats(int(row[0]), int(row[1]), int(row[2]), self.last_seq(stream))

    def trim(
        self,
        stream: str,
        *,
        max_age: float | None,
        max_messages: int | None,
        max_bytes: int | None,
        dedup_window: float,
    ) -> int:
        """Apply retention (age in seconds, count, payload bytes); return messages deleted.

        The ids of removed messages are kept (a trigger) until they are older
        than ``dedup_window`` seconds.
        """
        self._begin()
        now = time.time_ns()
        deleted = 0
        if max_age is not None:
            cursor = self._db.execute(
                "DELETE FROM messages WHERE stream = ? AND time_ns < ?",
                (stream, now - int(max_age * 1e9)),
            )
            deleted += cursor.rowcount
        if max_messages is not None:
            cursor = self._db.execute(
                "DELETE FROM messages WHERE stream = ? AND seq <= ("
                " SELECT seq FROM messages WHERE stream = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (stream, stream, max_messages),
            )
            deleted += cursor.rowcount
        if max_bytes is not None:
            # The newest messages whose running total fits stay.
            cursor = self._db.execute(
                "DELETE FROM messages WHERE stream = ? AND seq <= (SELECT max(seq) FROM ("
                "  SELECT seq, sum(length(payload)) OVER (ORDER BY seq DESC) AS total"
                "  FROM messages WHERE stream = ?) WHERE total > ?)",
                (stream, stream, max_bytes),
            )
            deleted += cursor.rowcount
        self._db.execute(
            "DELETE FROM ids WHERE stream = ? AND time_ns < ?",
            (stream, now - int(dedup_window * 1e9)),
        )
        return deleted

    # ------------------------------------------------------------------
    # Consumers

    def consumer(self, stream: str, name: str) -> ConsumerRow | None:
        row = self._db.execute(
            "SELECT prefix, ack_floor FROM consumers WHERE stream = ? AND name = ?",
            (stream, name),
        ).fetchone()
        if row is None:
            return None
        acked = frozenset(
            int(seq)
            for (seq,) in self._db.execute(
                "SELECT seq FROM acks WHERE stream = ? AND name = ?", (stream, name)
            )
        )
        return ConsumerRow(str(row[0]), int(row[1]), acked)

    def consumers(self, stream: str) -> Iterator[tuple[str, int]]:
        """(name, ack floor) of every consumer of ``stream``."""
        rows = self._db.execute(
            "SELECT name, ack_floor FROM consumers WHERE stream = ? ORDER BY name", (stream,)
        )
        for name, floor in rows.fetchall():
            yield str(name), int(floor)

    def create_consumer(self, stream: str, name: str, prefix: str, ack_floor: int) -> None:
        self._begin()
        self._db.execute(
            "INSERT INTO consumers VALUES (?, ?, ?, ?)", (stream, name, prefix, ack_floor)
        )

    def save_acks(self, stream: str, name: str, ack_floor: int, added: list[int]) -> None:
        """Record acknowledgements: the new floor, and acked sequences above it."""
        self._begin()
        self._db.execute(
            "UPDATE consumers SET ack_floor = ? WHERE stream = ? AND name = ?",
            (ack_floor, stream, name),
        )
        self._db.executemany(
            "INSERT OR IGNORE INTO acks VALUES (?, ?, ?)",
            [(stream, name, seq) for seq in added if seq > ack_floor],
        )
        self._db.execute(
            "DELETE FROM acks WHERE stream = ? AND name = ? AND seq <= ?", (stream, name, ack_floor)
        )

    def save_consumer(
        self, stream: str, name: str, prefix: str, ack_floor: int, acked: list[int]
    ) -> None:
        """Write a consumer's whole state (made if missing): its floor and acks above it."""
        self._begin()
        self._db.execute(
            "INSERT INTO consumers VALUES (?, ?, ?, ?) ON CONFLICT (stream, name)"
            " DO UPDATE SET ack_floor = excluded.ack_floor",
            (stream, name, prefix, ack_floor),
        )
        self._db.execute("DELETE FROM acks WHERE stream = ? AND name = ?", (stream, name))
        self._db.executemany(
            "INSERT INTO acks VALUES (?, ?, ?)",
            [(stream, name, seq) for seq in sorted(set(acked)) if seq > ack_floor],
        )

    def put_dead_letter(
        self, stream: str, name: str, row: tuple[object, ...], deliveries: object
    ) -> None:
        """Store a dead letter from its (seq, topic, msg_id, flags, payload, time_ns, crc) row."""
        self._begin()
        self._db.execute(
            "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (stream, name, row[0], deliveries, *row[1:7]),
        )

    def dead_letter(self, stream: str, name: str, seq: int, deliveries: int) -> None:
        """Keep a copy of message ``seq`` as a dead letter of consumer ``name``.

        A copy, so that retention of the stream does not take it away.
        """
        self._begin()
        self._db.execute(
            "INSERT OR REPLACE INTO dead_letters SELECT stream, ?, seq, ?, topic, msg_id, flags,"
            " payload, time_ns, crc FROM messages WHERE stream = ? AND seq = ?",
            (name, deliveries, stream, seq),
        )

    def dead_letters(
        self, stream: str, name: str, after: int = 0, limit: int = 1 << 30, max_bytes: int = 1 << 62
    ) -> list[tuple[StoredMessage, int]]:
        """Consumer ``name``'s dead letters after seq ``after``: (message, deliveries) by seq.

        At most ``limit`` of them and about ``max_bytes`` of payload (at least
        one). Copies failing their checksum are refused, as in :meth:`read`.
        """
        rows = self._db.execute(
            "SELECT seq, topic, msg_id, flags, payload, time_ns, crc, deliveries"
            " FROM dead_letters WHERE stream = ? AND name = ? AND seq > ? ORDER BY seq LIMIT ?",
            (stream, name, after, limit),
        )
        found = []
        size = 0
        for row in rows:
            message = self._intact(stream, row[:7])
            if message is None:
                continue
            found.append((message, row[7]))
            size += len(message.payload)
            if size >= max_bytes:
                break
        return found

    def dead_letter_count(self, stream: str) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM dead_letters WHERE stream = ?", (stream,)
        ).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Commit what is pending and close the file."""
        try:
            self.commit()
        finally:
            self._db.close()


def _check_wal(path: Path) -> WalCheck:
    """Walk the WAL before SQLite replays it; say loudly what SQLite would drop silently.

    A damaged WAL is copied aside first (SQLite would checkpoint over it), so
    what it held can still be looked at.
    """
    found = check_wal(path)
    if found.state == "damaged":
        keep = found.wal.with_name(f"{found.wal.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        shutil.copyfile(found.wal, keep)
        log.error("WAL DAMAGE: %s; the damaged log is kept as %s", found.describe(), keep)
    elif found.state == "torn":
        log.error("TORN WAL: %s", found.describe())
    elif found.state == "unfinished":
        log.warning("relay store WAL: %s", found.describe())
    elif found.stale:
        log.info("relay store WAL: %s", found.describe())
    return found
