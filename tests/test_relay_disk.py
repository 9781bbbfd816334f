"""The relay on a full disk: no busy loop, nothing redelivered for it, refusals resent.

The data directory is a small tmpfs mounted by the test (root only; it is
unmounted afterwards, also on failure) and filled up by a file; the relay
and the consumer are processes of their own (tests/relay_agent.py).
"""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import meshq
from tests.harness import Agent
from tests.test_relay import LOOPBACK, wait_for_relay
from tests.test_relay_failures import relay_argv, start


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs of this test's own."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    name = f"meshq-test-{secrets.token_hex(4)}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", name, str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full, down to its last byte; return it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def info(node: meshq.Node) -> dict[str, object]:
    found = node.request("meshq/relay/s/", ["info"], timeout=5)
    assert isinstance(found, dict)
    return found


@pytest.mark.timeout(240)
def test_a_full_disk_with_a_consumer_attached_is_no_busy_loop(
    mesh: str, small_disk: Path, agents: list[Agent]
) -> None:
    count, during = 200, 50
    relay = start(
        agents, relay_argv("relay", mesh, LOOPBACK[0], "--data", str(small_disk / "r")), "relay"
    )
    with meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as node:
        wait_for_relay(node, "s/")
        publisher = meshq.DurablePublisher(node, timeout=120)
        for i in range(count):
            publisher.send("s/x", f"before-{i}")
        publisher.flush(timeout=60)
        filler = fill(small_disk)
        started = time.monotonic()
        # The consumer comes now: creating it, and every ack it sends, needs a commit.
        # (ack_wait 60 s: a redelivery now could only be the full disk's doing.)
        consume = ("--durable", "c", "--ack-wait", "60")
        consumer = start(agents, relay_argv("consume", mesh, LOOPBACK[0], *consume), "consumer")
        for i in range(during):  # and producers keep trying
            publisher.send("s/x", f"during-{i}")
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, info(node)
            try:
                publisher.flush(timeout=0.5)  # resends what was refused: nothing is stored
            except meshq.Timeout:
                pass
            got = {e["data"] for e in consumer.events if e["ev"] == "message"}
            if len(got) == count and int(info(node)["store_errors"]) >= 5:  # type: ignore[call-overload]
                break
            try:
                consumer.expect(lambda e: False, timeout=0.2)  # collect its events
            except AssertionError:
                pass
        full = info(node)
        elapsed = time.monotonic() - started
        assert full["messages"] == count  # nothing stored while the disk is full
        redelivered_while_full = full["redelivered"]
        filler.unlink()  # room again
        publisher.flush(timeout=60)  # every refused publish was resent, and now confirmed
        assert publisher.confirmed == count + during and publisher.failed == 0
        want = {f"before-{i}" for i in range(count)} | {f"during-{i}" for i in range(during)}
        consumer.expect(lambda e: e["ev"] == "message" and e["data"] == f"during-{during - 1}", 60)
        delivered = Counter(e["data"] for e in consumer.events if e["ev"] == "message")
        assert set(delivered) == want and max(delivered.values()) == 1
        assert info(node)["messages"] == count + during  # each resent publish stored once
    relay.send(cmd="close")
    relay.process.wait(timeout=10)
    lines = relay.stderr().count("RELAY STORE FAILED")
    print(
        f"disk full for {elapsed:.1f} s: {full['store_errors']} failed attempts, {lines} log "
        f"lines, {redelivered_while_full} redeliveries, {publisher.resent} publishes resent"
    )
    # One line per 10 s (plus the first), not one per attempt; no redelivery storm.
    assert 1 <= lines <= 2 + elapsed / 10
    assert redelivered_while_full == 0
