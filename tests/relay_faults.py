"""Figures for issue 16: a flipped byte in a committed WAL frame, and a full disk with a consumer.

Uses only the public API that meshq had before the fixes, so the same
script measures an old tree and the new one (run it with PYTHONPATH set to
the tree under test). Needs root (it mounts a tmpfs). Prints one JSON line
per scenario.

    python tests/relay_faults.py wal  [--count 2000] [--frame 512]
    python tests/relay_faults.py disk [--seconds 8] [--count 200]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import meshq

LOOPBACK = "127.0.0.1"


def spawn(*argv: str, log: Path) -> subprocess.Popen[str]:
    """Run a role of this script; its stderr goes to ``log`` (a pipe could fill and stall it)."""
    with open(log, "a") as handle:
        return subprocess.Popen(
            [sys.executable, __file__, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=handle,
            text=True,
        )


def wait_line(process: subprocess.Popen[str], want: str, budget: float = 30) -> str:
    """Read ``process``'s stdout until a line starting with ``want`` (bounded by its exit)."""
    assert process.stdout is not None
    deadline = time.monotonic() + budget
    for line in process.stdout:
        if line.startswith(want):
            return line
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"no {want!r} from {process.args!r}")


def stop(process: subprocess.Popen[str], log: Path) -> str:
    """Close the process's stdin (it exits), return what it logged."""
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return log.read_text()


def wait_for_relay(node: meshq.Node, budget: float = 15) -> None:
    deadline = time.monotonic() + budget
    while "meshq/relay/s/" not in node.services():
        if time.monotonic() > deadline:
            raise RuntimeError("no relay")
        time.sleep(0.02)


def run_relay(mesh: str, data: str) -> None:
    node = meshq.Node("relay", mesh=mesh, interfaces=[LOOPBACK])
    relay = meshq.Relay(node, data, ["s/"])
    print("ready", flush=True)
    sys.stdin.read()  # until closed
    relay.close()


def run_consumer(mesh: str) -> None:
    """Consume and acknowledge; at the end print delivered, redeliveries seen and skipped."""
    with meshq.Node("consumer", mesh=mesh, interfaces=[LOOPBACK]) as node:
        wait_for_relay(node)
        sub = node.subscribe("s/", durable="c", ack="explicit", ack_wait=60.0)
        print("ready", flush=True)
        seen, redelivered = set(), 0
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(sys.stdin, selectors.EVENT_READ)
        while not selector.select(0):
            try:
                message = sub.recv(timeout=0.1)
            except meshq.Timeout:
                continue
            redelivered += message.deliveries > 1
            seen.add(message.data)
            message.ack()
        print(
            "done",
            json.dumps(
                {"distinct": len(seen), "redelivered": redelivered, "skipped": sub.duplicates}
            ),
            flush=True,
        )
        sub.close()


def wal_scenario(count: int, frame: int) -> dict[str, Any]:
    mesh = f"faults-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "relay")
        relay_log = Path(tmp) / "relay.log"
        relay = spawn("relay", mesh, data, log=relay_log)
        wait_line(relay, "ready")
        with meshq.Node("producer", mesh=mesh, interfaces=[LOOPBACK]) as node:
            wait_for_relay(node)
            publisher = meshq.DurablePublisher(node, timeout=30, max_in_flight=64)
            for i in range(count):
                publisher.send("s/x", i)
            publisher.flush(timeout=120)
            assert publisher.confirmed == count
        relay.send_signal(signal.SIGKILL)
        relay.wait()
        relay_log.write_text("")  # what the restarted relay says
        wal = Path(data) / "relay.sqlite-wal"
        raw = bytearray(wal.read_bytes())
        page_size = struct.unpack_from(">I", raw, 8)[0]
        salts = raw[16:24]
        step = 24 + page_size
        current = [
            n
            for n in range(1, (len(raw) - 32) // step + 1)
            if raw[32 + (n - 1) * step + 8 : 32 + (n - 1) * step + 16] == salts
        ]
        chosen = frame if frame in current else current[len(current) // 2]
        raw[32 + (chosen - 1) * step + 24 + 100] ^= 0x01
        wal.write_bytes(bytes(raw))
        relay = spawn("relay", mesh, data, log=relay_log)
        wait_line(relay, "ready")
        with meshq.Node("checker", mesh=mesh, interfaces=[LOOPBACK]) as node:
            wait_for_relay(node)
            info = node.request("meshq/relay/s/", ["info"], timeout=5)
            assert isinstance(info, dict)
            next_seq = node.publish("s/x", "after", durable=True)
        log = stop(relay, relay_log)
    return {
        "scenario": "wal",
        "confirmed": count,
        "frames_in_wal": (len(raw) - 32) // step,
        "current_generation_frames": len(current),
        "flipped_frame": chosen,
        "served_after_restart": info["messages"],
        "confirmed_lost": count - int(info["messages"]),
        "corrupt_counter": info.get("corrupt"),
        "wal_damaged_counter": info.get("wal_damaged", "absent"),
        "next_seq_given": next_seq,
        "seq_reused": bool(next_seq is not None and next_seq <= count),
        "log_lines_about_it": sum(
            1 for line in log.splitlines() if "WAL" in line or "DAMAGE" in line
        ),
    }


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def disk_scenario(seconds: float, count: int) -> dict[str, Any]:
    mesh = f"faults-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp) / "disk"
        disk.mkdir()
        name = f"meshq-faults-{secrets.token_hex(4)}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", name, str(disk)], check=True)
        try:
            relay_log = Path(tmp) / "relay.log"
            relay = spawn("relay", mesh, str(disk / "r"), log=relay_log)
            wait_line(relay, "ready")
            with meshq.Node("producer", mesh=mesh, interfaces=[LOOPBACK]) as node:
                wait_for_relay(node)
                publisher = meshq.DurablePublisher(node, timeout=30)
                for i in range(count):
                    publisher.send("s/x", i)
                publisher.flush(timeout=60)
                filler = fill(disk)
                consumer_log = Path(tmp) / "consumer.log"
                consumer = spawn("consumer", mesh, log=consumer_log)  # comes with the disk full
                wait_line(consumer, "ready")
                time.sleep(seconds)  # the disk stays full this long: what is measured
                filler.unlink()
                seen = json.loads(wait_line_after_close(consumer, consumer_log).split(" ", 1)[1])
            log = stop(relay, relay_log)
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)
    return {
        "scenario": "disk",
        "full_for_s": seconds,
        "messages": count,
        "consumer_distinct": seen["distinct"],
        "redeliveries_handed_out": seen["redelivered"],
        "redeliveries_skipped_by_dedup": seen["skipped"],
        "store_failed_log_lines": log.count("RELAY STORE FAILED"),
        "log_bytes": len(log),
    }


def wait_line_after_close(process: subprocess.Popen[str], log: Path) -> str:
    assert process.stdin is not None
    process.stdin.write("stop\n")
    process.stdin.flush()
    line = wait_line(process, "done", budget=60)
    stop(process, log)
    return line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("wal", "disk", "relay", "consumer"))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--frame", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    if args.what == "relay":
        run_relay(*args.args)
    elif args.what == "consumer":
        run_consumer(*args.args)
    elif args.what == "wal":
        print(json.dumps(wal_scenario(args.count or 2000, args.frame)))
    else:
        print(json.dumps(disk_scenario(args.seconds, args.count or 200)))


if __name__ == "__main__":
    main()
