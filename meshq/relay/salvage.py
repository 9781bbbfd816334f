"""Salvage a damaged relay store: move it aside, copy every record that passes its checksum.

For a store SQLite calls damaged (StoreDamaged), when there is no backup to
restore. What can be read is read around the damage: a scan in sequence
order that fails goes on past the damaged page with lookups of one
sequence number at a time. Every message and dead letter copied passes its
CRC-32; consumers' positions are copied where readable (a lost one starts
again from the stream's first message: at least once, so redeliveries,
never a loss). Every stream goes on above the highest sequence number the
old store or its reservation file knew, so none is given out twice.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .directory import STORE_NAME, lock_directory
from .errors import StoreUnusable
from .highwater import HighWater
from .store import Store, checksum

__all__ = ["SalvageReport", "salvage"]

log = logging.getLogger("meshq.relay")

_SCAN = 500  # rows per query of a scan


@dataclass
class SalvageReport:
    """What :func:`salvage` did: where the old files went and what was copied or refused."""

    moved_to: Path
    messages: int = 0
    dead_letters: int = 0
    consumers: int = 0
    refused: int = 0  # records failing their checksum
    unreadable: int = 0  # reads SQLite refused (damaged pages)
    last_seq: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        return (
            f"salvaged {self.messages} messages, {self.dead_letters} dead letters and "
            f"{self.consumers} consumers; {self.refused} records failed their checksum, "
            f"{self.unreadable} reads were refused by SQLite; the damaged files are in "
            f"{self.moved_to}"
        )


def salvage(data_dir: str | Path) -> SalvageReport:
    """Move the store in ``data_dir`` aside and copy what is intact into a new one there.

    The old files (the SQLite file, its WAL and reservations) go to
    ``data_dir/damaged-<UTC time>/``. Raises StoreInUse if a relay serves
    the directory, StoreUnusable if there is no store or it cannot be read.
    """
    directory = Path(data_dir)
    lock = lock_directory(directory)
    try:
        old_path = directory / STORE_NAME
        if not old_path.exists():
            raise StoreUnusable(directory, f"no {STORE_NAME} to salvage")
        aside = directory / f"damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        aside.mkdir()
        for suffix in ("", "-wal", "-shm"):
            source = directory / (STORE_NAME + suffix)
            if source.exists():
                shutil.move(source, aside / source.name)
        reservations = old_path.with_suffix(".seqs")
        if reservations.exists():
            shutil.copyfile(reservations, aside / reservations.name)  # it stays too
        report = SalvageReport(aside)
        old = sqlite3.connect(aside / STORE_NAME, isolation_level=None)
        try:
            _copy(old, Store(old_path), HighWater(reservations), report)
        finally:
            old.close()
    finally:
        lock.close()
    log.warning("relay store %s: %s", old_path, report.describe())
    return report


def _copy(old: sqlite3.Connection, new: Store, reserved: HighWater, report: SalvageReport) -> None:
    try:
        known = dict(reserved.reserved)
        for stream, last in _rows(old, "SELECT stream, last_seq FROM streams", report):
            known[stream] = max(known.get(stream, 0), int(last))
        for (stream,) in _rows(old, "SELECT DISTINCT stream FROM messages", report):
            known.setdefault(str(stream), 0)
        for stream in sorted(known):
            upto = known[stream]
            for row in _scan(old, "messages", stream, "", upto, report):
                if _intact(stream, row, report):
                    new.append(stream, *row[:6])
                    report.messages += 1
                    upto = max(upto, row[0])
            report.last_seq[stream] = upto
            new.raise_last_seq(stream, upto)
            consumers = _rows(
                old,
                "SELECT name, prefix, ack_floor FROM consumers WHERE stream = ?",
                report,
                (stream,),
            )
            for name, prefix, floor in consumers:
                acked = [
                    int(seq)
                    for (seq,) in _rows(
                        old,
                        "SELECT seq FROM acks WHERE stream = ? AND name = ?",
                        report,
                        (stream, name),
                    )
                ]
                new.save_consumer(stream, str(name), str(prefix), int(floor), acked)
                report.consumers += 1
                for row in _scan(old, "dead_letters", stream, str(name), upto, report):
                    if _intact(stream, row, report):
                        new.put_dead_letter(stream, str(name), row, deliveries=row[7])
                        report.dead_letters += 1
            new.commit()
    finally:
        new.close()


def _rows(
    db: sqlite3.Connection, sql: str, report: SalvageReport, args: tuple[object, ...] = ()
) -> list[tuple[Any, ...]]:
    try:
        return list(db.execute(sql, args).fetchall())
    except sqlite3.DatabaseError:
        report.unreadable += 1
        return []


def _scan(
    db: sqlite3.Connection, table: str, stream: str, name: str, upto: int, report: SalvageReport
) -> Iterator[tuple[Any, ...]]:
    """Rows of ``table`` for ``stream`` (and consumer ``name``) by seq, read around damage.

    A range read that fails goes on with lookups of one seq at a time,
    up to ``upto`` (or until one succeeds): a damaged page hides only its own rows.
    """
    columns = "seq, topic, msg_id, flags, payload, time_ns, crc" + (
        ", deliveries" if table == "dead_letters" else ""
    )
    where = "stream = ?" + (" AND name = ?" if table == "dead_letters" else "")
    keys: tuple[object, ...] = (stream, name) if table == "dead_letters" else (stream,)
    after = 0
    while True:
        try:
            rows = db.execute(
                f"SELECT {columns} FROM {table} WHERE {where} AND seq > ? ORDER BY seq LIMIT ?",
                (*keys, after, _SCAN),
            ).fetchall()
        except sqlite3.DatabaseError:
            report.unreadable += 1
            found = _probe(db, table, columns, where, keys, after, upto, report)
            end = upto + 1 if found is None else int(found[0])
            # Rows next to the damage can be reachable only from above (an
            # interior cell whose left child is the damaged page): read down.
            yield from reversed(_read_down(db, table, columns, where, keys, after, end, report))
            if found is None:
                return
            yield found
            after = end
            continue
        yield from rows
        if len(rows) < _SCAN:
            return
        after = rows[-1][0]


def _read_down(
    db: sqlite3.Connection,
    table: str,
    columns: str,
    where: str,
    keys: tuple[object, ...],
    after: int,
    before: int,
    report: SalvageReport,
) -> list[tuple[Any, ...]]:
    """Rows with ``after`` < seq < ``before``, read downwards until SQLite refuses.

    One row per query: sqlite3 steps a cursor one row ahead, so a failing
    step would also take the row before it.
    """
    found: list[tuple[Any, ...]] = []
    while True:
        try:
            row = db.execute(
                f"SELECT {columns} FROM {table} WHERE {where} AND seq > ? AND seq < ?"
                " ORDER BY seq DESC LIMIT 1",
                (*keys, after, before),
            ).fetchone()
        except sqlite3.DatabaseError:
            report.unreadable += 1
            return found
        if row is None:
            return found
        found.append(tuple(row))
        before = int(row[0])


def _probe(
    db: sqlite3.Connection,
    table: str,
    columns: str,
    where: str,
    keys: tuple[object, ...],
    after: int,
    upto: int,
    report: SalvageReport,
) -> tuple[Any, ...] | None:
    """The first row after seq ``after`` found by single lookups, up to ``upto``."""
    for seq in range(after + 1, upto + 1):
        try:
            row = db.execute(
                f"SELECT {columns} FROM {table} WHERE {where} AND seq = ?", (*keys, seq)
            ).fetchone()
        except sqlite3.DatabaseError:
            report.unreadable += 1
            continue
        if row is not None:
            return tuple(row)
    return None


def _intact(stream: str, row: tuple[Any, ...], report: SalvageReport) -> bool:
    seq, topic, msg_id, flags, payload, time_ns, crc = row[:7]
    try:
        ok = bool(checksum(seq, time_ns, flags, topic, msg_id, payload) == crc)
    except (TypeError, AttributeError, ValueError):  # a field of the wrong type: damage too
        ok = False
    if not ok:
        report.refused += 1
        log.error("salvage: %r seq %s fails its checksum; not copied", stream, seq)
    return ok
