"""A relay store with a damaged page, and a data directory that cannot be used.

Real SQLite files damaged in place (a page's type byte or cell count), the
real ``meshq`` command in a child process.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import meshq
from meshq.relay.store import Store
from tests.test_relay import LOOPBACK, wait_for_relay

COUNT = 3000


def make_store(directory: Path) -> tuple[Path, int]:
    """A closed store of COUNT messages; returns its path and page size."""
    directory.mkdir()
    path = directory / "relay.sqlite"
    store = Store(path)
    for seq in range(1, COUNT + 1):
        store.append("s/", seq, "s/x", b"id-%06d" % seq, 0, b"payload-%06d" % seq, time.time_ns())
    store.save_consumer("s/", "billing", "s/", 10, [12])
    store.close()
    with open(path, "rb") as handle:
        handle.seek(16)
        page_size = int.from_bytes(handle.read(2), "big")
    return path, page_size


def page_of(raw: bytes | bytearray, needle: bytes, page_size: int) -> int:
    return raw.index(needle) // page_size


def seqs_on_page(raw: bytes | bytearray, page: int, page_size: int) -> set[int]:
    text = raw[page * page_size : (page + 1) * page_size]
    return {int(m) for m in re.findall(rb"payload-(\d{6})", text)}


def meshq_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshq.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_damaged_page_is_a_clean_cli_error_and_salvage_copies_what_passes_its_crc(
    mesh: str, tmp_path: Path
) -> None:
    path, page_size = make_store(tmp_path / "data")
    raw = bytearray(path.read_bytes())
    damaged = page_of(raw, b"payload-001502", page_size)
    raw[damaged * page_size] ^= 0x01  # the page's type byte: SQLite calls the file malformed
    lost = seqs_on_page(raw, damaged, page_size)
    assert 1502 in lost
    flipped = raw.index(b"payload-000100")  # and one record failing its CRC elsewhere
    raw[flipped + 8] ^= 0x01
    path.write_bytes(bytes(raw))
    relay = ["relay", "--data", str(path.parent), "--streams", "s/", "--mesh", mesh]
    relay += ["--interface", LOOPBACK[0], "--duration", "0.2"]

    refused = meshq_cli(*relay)
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert f"relay store {path} is damaged" in refused.stderr
    assert "Restore it from a backup, or start with --salvage" in refused.stderr

    salvaged = meshq_cli(*relay, "--salvage")
    assert salvaged.returncode == 0, salvaged.stderr
    assert "salvaged" in salvaged.stdout and "1 records failed their checksum" in salvaged.stdout
    assert list(path.parent.glob("damaged-*/relay.sqlite")), "the damaged file is kept"
    store = Store(path)
    try:
        got = store.read("s/", 0, 2 * COUNT)
        want = set(range(1, COUNT + 1)) - lost - {100}
        assert {m.seq for m in got} >= want  # every record off the damaged page, intact
        assert 100 not in {m.seq for m in got}
        assert all(m.payload == b"payload-%06d" % m.seq for m in got)
        assert store.integrity_problems == 0
        assert store.last_seq("s/") >= COUNT  # numbers never given out twice
        consumer = store.consumer("s/", "billing")
        assert consumer is not None and consumer.ack_floor == 10 and consumer.acked == {12}
    finally:
        store.close()


def test_integrity_check_findings_are_counted_and_shown(mesh: str, tmp_path: Path) -> None:
    path, page_size = make_store(tmp_path / "data")
    raw = bytearray(path.read_bytes())
    page = page_of(raw, b"payload-001502", page_size)
    header = page * page_size
    cells = int.from_bytes(raw[header + 3 : header + 5], "big")
    raw[header + 3 : header + 5] = (cells - 1).to_bytes(2, "big")  # hides one record
    path.write_bytes(bytes(raw))
    with meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK) as node:
        relay = meshq.Relay(node, path.parent, ["s/"])
        with meshq.Node("client", mesh=mesh, interfaces=LOOPBACK) as client:
            wait_for_relay(client, "s/")
            info = client.request("meshq/relay/s/", ["info"])
            assert isinstance(info, dict)
            assert info["integrity_problems"] >= 1
            assert info["messages"] == COUNT - 1  # what the problem hides
            shown = meshq_cli("streams", "--mesh", mesh, "--interface", LOOPBACK[0], "--wait", "20")
            assert "integrity check problems" in shown.stdout, shown
        relay.close()


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_an_unusable_data_directory_is_a_meshq_error_and_nothing_is_left_running(
    mesh: str, tmp_path: Path, kind: str
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    directory = afile if kind == "a file" else afile / "sub"
    node = meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK)
    with pytest.raises(meshq.relay.StoreUnusable) as caught:
        meshq.Relay(node, directory, ["s/"])
    assert caught.value.directory == directory
    assert str(directory) in str(caught.value) and "directory" in caught.value.reason
    assert node.closed  # the relay had taken it over; the thread check sees the rest
    shown = meshq_cli(
        "relay", "--data", str(directory), "--streams", "s/", "--mesh", mesh,
        "--interface", LOOPBACK[0],
    )  # fmt: skip
    assert shown.returncode == 2
    assert shown.stderr.startswith(f"meshq: relay data directory {directory} cannot be used")
    assert "Errno" not in shown.stderr and "Traceback" not in shown.stderr
