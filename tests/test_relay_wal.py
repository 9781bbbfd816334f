"""The relay's write-ahead log under damage: what SQLite would drop silently is found first.

Real SQLite files in WAL mode. A crash is a copy of the files taken while
the writing connection is still open (everything committed is in the
copy's WAL, nothing is checkpointed), or a relay process killed with
SIGKILL. Damage is a flipped byte or a cut, made in the file itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import meshq
from meshq.relay.store import Store
from meshq.relay.walcheck import check_wal
from tests.harness import Agent
from tests.test_relay_failures import LOOPBACK, relay_argv, start, wait_for_relay

PAGE_DATA = 24  # a WAL frame's header, before its page


def wal_frames(wal: Path) -> tuple[int, tuple[int, int], list[tuple[int, tuple[int, int]]]]:
    """(page size, the header's salts, each frame's (commit size, salts)), read plainly."""
    raw = wal.read_bytes()
    page_size = struct.unpack_from(">I", raw, 8)[0]
    salts = struct.unpack_from(">II", raw, 16)
    frames = []
    for offset in range(32, len(raw) - PAGE_DATA - page_size + 1, PAGE_DATA + page_size):
        commit, salt1, salt2 = struct.unpack_from(">III", raw, offset + 4)
        frames.append((commit, (salt1, salt2)))
    return page_size, salts, frames


def flip_in_page(wal: Path, frame: int, at: int = 100) -> None:
    """Flip one byte of frame ``frame``'s page (frames count from 1)."""
    page_size, _, _ = wal_frames(wal)
    raw = bytearray(wal.read_bytes())
    raw[32 + (frame - 1) * (PAGE_DATA + page_size) + PAGE_DATA + at] ^= 0x01
    wal.write_bytes(bytes(raw))


def crash_copy(db: sqlite3.Connection, source: Path, target: Path) -> Path:
    """The files as a crash would leave them (the connection stays open: no checkpoint)."""
    target.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{source}{suffix}", target / f"{source.name}{suffix}")
    return target / source.name


def writer(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")  # the test decides when
    db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, data BLOB)")
    return db


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM t").fetchone()[0])


def test_damage_in_the_middle_is_told_apart_from_a_torn_tail(tmp_path: Path) -> None:
    db = writer(tmp_path / "a.sqlite")
    for n in range(200):  # one transaction (and at least one commit frame) each
        db.execute("INSERT INTO t VALUES (?, ?)", (n, os.urandom(200)))
    intact = crash_copy(db, tmp_path / "a.sqlite", tmp_path / "intact")
    damaged = crash_copy(db, tmp_path / "a.sqlite", tmp_path / "damaged")
    torn = crash_copy(db, tmp_path / "a.sqlite", tmp_path / "torn")
    db.close()

    found = check_wal(intact)
    assert found.state == "intact" and found.commits >= 200 and found.first_bad == 0

    _, _, frames = wal_frames(damaged.with_name("a.sqlite-wal"))
    flip_in_page(damaged.with_name("a.sqlite-wal"), len(frames) // 2)
    found = check_wal(damaged)
    assert found.state == "damaged"
    assert found.first_bad == len(frames) // 2
    later_commits = sum(1 for commit, _ in frames[len(frames) // 2 - 1 :] if commit)
    assert found.lost_commits == later_commits > 50
    assert rows(damaged) < 200 - 50  # what SQLite itself keeps: the loss is real

    wal = torn.with_name("a.sqlite-wal")
    os.truncate(wal, wal.stat().st_size - 100)  # the last frame cut short
    found = check_wal(torn)
    assert found.state == "torn" and found.partial_bytes > 0 and found.lost_commits == 0
    assert rows(torn) == 199  # only the unfinished last write is dropped


def test_a_writer_stopped_mid_transaction_is_unfinished_not_torn(tmp_path: Path) -> None:
    db = writer(tmp_path / "a.sqlite")
    for n in range(10):
        db.execute("INSERT INTO t VALUES (?, ?)", (n, os.urandom(200)))
    db.execute("BEGIN")
    for n in range(10, 40):  # one transaction of many pages
        db.execute("INSERT INTO t VALUES (?, ?)", (n, os.urandom(3000)))
    db.execute("COMMIT")
    copy = crash_copy(db, tmp_path / "a.sqlite", tmp_path / "copy")
    db.close()
    wal = copy.with_name("a.sqlite-wal")
    page_size, _, frames = wal_frames(wal)
    assert frames[-1][0] and not frames[-2][0]  # the last frame commits several
    os.truncate(wal, wal.stat().st_size - (PAGE_DATA + page_size))  # no commit frame: whole frames
    found = check_wal(copy)
    assert found.state == "unfinished" and found.uncommitted > 0 and found.torn == 0
    assert rows(copy) == 10


def test_a_cut_among_stale_frames_of_an_older_generation_is_not_a_torn_wal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = writer(tmp_path / "a.sqlite")
    for n in range(100):
        db.execute("INSERT INTO t VALUES (?, ?)", (n, os.urandom(200)))
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # all of it in the main file now
    for n in range(100, 103):  # the WAL restarts from its start, with new salts
        db.execute("INSERT INTO t VALUES (?, ?)", (n, os.urandom(200)))
    copy = crash_copy(db, tmp_path / "a.sqlite", tmp_path / "copy")
    db.close()
    wal = copy.with_name("a.sqlite-wal")
    _, salts, frames = wal_frames(wal)
    current = [i for i, (_, s) in enumerate(frames) if s == salts]
    assert current == list(range(len(current))) and len(current) < len(frames) // 2
    os.truncate(wal, wal.stat().st_size - 100)  # cuts the last (stale) frame

    found = check_wal(copy)
    assert found.state == "intact"
    assert found.stale == len(frames) - len(current)
    assert rows(copy) == 103  # nothing was lost
    caplog.set_level(logging.INFO, "meshq.relay")
    # The relay's store says nothing alarming about it either.
    shutil.copyfile(copy, tmp_path / "relay.sqlite")
    shutil.copyfile(wal, tmp_path / "relay.sqlite-wal")
    with sqlite3.connect(tmp_path / "relay.sqlite") as fix:
        fix.execute("DROP TABLE t")  # a store file with the relay's own schema, same WAL
    store = Store(tmp_path / "relay.sqlite")
    assert store.wal_faults() == {"wal_damaged": 0, "wal_torn": 0}
    store.close()
    assert not [r for r in caplog.records if "TORN WAL" in r.getMessage()]


CLI = [sys.executable, "-m", "meshq.cli"]


@pytest.mark.timeout(180)
def test_a_damaged_wal_is_reported_counted_and_no_sequence_number_is_given_out_twice(
    mesh: str, tmp_path: Path, agents: list[Agent]
) -> None:
    count = 2000
    data = tmp_path / "relay"
    relay = start(agents, relay_argv("relay", mesh, LOOPBACK, "--data", str(data)), "relay")
    producer = start(
        agents,
        relay_argv("produce", mesh, LOOPBACK, "--topic", "s/x", "--count", str(count)),
        "producer",
    )
    assert producer.expect(lambda e: e["ev"] == "produced", timeout=120)["confirmed"] == count
    relay.signal(signal.SIGKILL)  # a crash: the WAL is not checkpointed
    relay.process.wait()
    wal = data / "relay.sqlite-wal"
    _, salts, frames = wal_frames(wal)
    current = [i + 1 for i, (_, s) in enumerate(frames) if s == salts]
    commits_after = [i for i in current if frames[i - 1][0] and i > current[len(current) // 2]]
    assert len(commits_after) > 1, "the current WAL generation holds too little to damage"
    flip_in_page(wal, current[len(current) // 2])

    relay = start(agents, relay_argv("relay", mesh, LOOPBACK, "--data", str(data)), "relay")
    with meshq.Node("consumer", mesh=mesh, interfaces=[LOOPBACK]) as node:
        wait_for_relay(node)
        info = node.request("meshq/relay/s/", ["info"], timeout=5)
        assert isinstance(info, dict)
        assert info["wal_damaged"] >= len(commits_after)  # counted, per lost transaction
        kept = info["messages"]
        assert kept < count  # SQLite did drop confirmed messages: the loss is real
        with node.subscribe("s/", durable="check") as sub:
            got = [sub.recv(timeout=5) for _ in range(kept)]
        assert [m.seq for m in got] == list(range(1, kept + 1))
        assert [m.data for m in got] == [f"s/x-{i}" for i in range(kept)]
        # Numbers the lost transactions confirmed are never given out again.
        seq = node.publish("s/x", "after", durable=True)
        assert seq is not None and seq > count
        shown = subprocess.run(
            [*CLI, "streams", "--mesh", mesh, "--interface", LOOPBACK, "--wait", "20"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "committed transactions lost to WAL damage" in shown.stdout, shown
    relay.send(cmd="close")
    relay.process.wait(timeout=10)
    assert "WAL DAMAGE" in relay.stderr()
    assert list(data.glob("relay.sqlite-wal.damaged-*")), "the damaged log is kept"


def test_sequence_numbers_go_on_above_the_reservation_after_a_torn_wal(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite"
    store = Store(path)
    for seq in range(1, 21):
        store.append("s/", seq, "s/x", b"id%d" % seq, 0, b"x", time.time_ns())
        store.commit()
    crash = crash_copy(store._db, path, tmp_path / "crash")
    shutil.copyfile(path.with_suffix(".seqs"), crash.with_suffix(".seqs"))
    store.close()
    wal = crash.with_name("relay.sqlite-wal")
    os.truncate(wal, wal.stat().st_size - 100)
    again = Store(crash)
    assert again.wal.state == "torn"
    assert again.wal_faults()["wal_torn"] == 1
    assert again.last_seq("s/") > 20  # 20 was confirmed and may be the one lost
    again.close()
