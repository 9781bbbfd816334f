"""Idle cost: CPU that a mesh of idle nodes burns, against bare pyzmq holding the same links.

What is measured, per mesh size (``--peers``: 1, 7, 15, 31 peers per node,
so 2, 8, 16, 32 processes, all on 127.0.0.1):

* meshq: each process runs one ``meshq.Node`` that joins the others by seed
  (``discovery=False``: mDNS is left out, it is zeroconf's cost, not the
  mesh's) and, once it sees every other node, does nothing. Its control
  thread sends a PING to every peer every ``heartbeat_interval`` (0.5 s)
  and a HELLO every ``gossip_interval``; its sockets carry ZMTP heartbeats.
* raw: each process binds one ROUTER and connects one DEALER to every other
  process's ROUTER (the same number of TCP connections as the control
  plane's), exchanges one message on each, then blocks, sending nothing.

Once every process is ready and a second has passed, the CPU time of each
(utime + stime from /proc/PID/stat) is read twice, ``--duration`` seconds
(10) apart. Reported: % of one core per process (mean over the processes
of a mesh, as /proc counts in 10 ms ticks; then the median over
``--repeat`` runs, min-max of the runs), the part of it spent in libzmq's
background threads (ZMTP heartbeats, TCP), and for meshq the
control loop's wake-ups per second and the CPU cost per heartbeat (a
process's CPU time divided by the PINGs it sent and received: an upper
bound, as it includes everything else the process did).

``--coalesce S`` lets meshq's control loop look at its ROUTER at most every
S seconds (ControlLoop.coalesce), to see whether reading heartbeats in
batches per wake-up helps.

    .venv/bin/python bench/idle.py                       # about 8 minutes
    .venv/bin/python bench/idle.py --peers 1 31 --repeat 5 --duration 10
    .venv/bin/python bench/idle.py --quick               # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "idle.json"
ROOT = Path(__file__).resolve().parent.parent
SETUP_TIMEOUT = 60.0  # seconds for a mesh to form
SETTLE = 1.0  # seconds between "all ready" and the first CPU reading
TICKS = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------
# Child processes: one line of JSON per event on stdout, commands on stdin.


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def child_meshq(index: int, mesh: str, seed: str, peers: int, coalesce: float) -> None:
    import meshq
    from meshq.control import ControlLoop

    ControlLoop.coalesce = coalesce
    with meshq.Node(
        f"idle-{index}",
        mesh=mesh,
        interfaces=["127.0.0.1"],
        seeds=[seed] if seed else [],
        discovery=False,
    ) as node:
        _say(event="endpoint", endpoint=node.control_endpoints[0])
        node.wait_for_peers(peers, timeout=SETUP_TIMEOUT)
        _say(event="ready")
        sys.stdin.readline()  # "measure": take the loop's counters now
        loop = node.runtime.control_loop
        assert loop is not None
        start = (loop.wakeups, loop.timer_runs)
        sys.stdin.readline()  # "report"
        _say(
            event="report",
            wakeups=loop.wakeups - start[0],
            timer_runs=loop.timer_runs - start[1],
            peers=len(node.peers()),
            stats=node.stats(),
        )
        sys.stdin.readline()  # "stop"


def child_raw(index: int) -> None:
    import zmq

    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    _say(event="endpoint", endpoint=f"tcp://127.0.0.1:{port}")
    others = json.loads(sys.stdin.readline())
    dealers = []
    for endpoint in others:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        dealer.send(b"hello")
        dealers.append(dealer)
    for _ in others:  # every connection carried a message both ways
        router.recv_multipart()
    _say(event="ready")
    sys.stdin.readline()  # "measure"
    sys.stdin.readline()  # "report"
    _say(event="report")
    sys.stdin.readline()  # "stop"
    for dealer in dealers:
        dealer.close()
    router.close()
    context.term()


# ----------------------------------------------------------------------
# The parent


def _ticks(stat: Path) -> int:
    fields = stat.read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


class Child:
    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.idle", *argv],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def expect(self, event: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"child {self.process.pid} ended before {event!r}")
        message: dict[str, Any] = json.loads(line)
        if message.get("event") != event:
            raise RuntimeError(f"child {self.process.pid}: {message} instead of {event!r}")
        return message

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def cpu_seconds(self) -> tuple[float, float]:
        """(CPU seconds of the whole process, of its libzmq background threads) so far."""
        total = _ticks(Path(f"/proc/{self.process.pid}/stat"))
        zmq_threads = 0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                if (task / "comm").read_text().startswith("ZMQbg"):
                    zmq_threads += _ticks(task / "stat")
            except OSError:
                continue  # a thread that just ended
        return total / TICKS, zmq_threads / TICKS

    def stop(self) -> None:
        try:
            self.send("stop")
            self.process.stdin.close()  # type: ignore[union-attr]
            self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


def run_once(system: str, peers: int, duration: float, coalesce: float) -> dict[str, Any]:
    """One mesh of ``peers + 1`` processes: CPU % per process, and the meshq counters."""
    children: list[Child] = []
    try:
        if system == "meshq":
            mesh = f"idle-{secrets.token_hex(4)}"
            first = Child(["--child", "meshq", "0", mesh, "", str(peers), str(coalesce)])
            children.append(first)
            seed = first.expect("endpoint")["endpoint"]
            for index in range(1, peers + 1):
                argv = ["--child", "meshq", str(index), mesh, seed, str(peers), str(coalesce)]
                children.append(Child(argv))
            for child in children[1:]:
                child.expect("endpoint")
        else:
            children = [Child(["--child", "raw", str(i)]) for i in range(peers + 1)]
            endpoints = [child.expect("endpoint")["endpoint"] for child in children]
            for index, child in enumerate(children):
                child.send(json.dumps(endpoints[:index] + endpoints[index + 1 :]))
        for child in children:
            child.expect("ready")
        time.sleep(SETTLE)  # the mesh's first gossip and answers settle
        for child in children:
            child.send("measure")
        before = [child.cpu_seconds() for child in children]
        started = time.monotonic()
        time.sleep(duration)  # the measurement itself: nothing to wait for but time
        after = [child.cpu_seconds() for child in children]
        elapsed = time.monotonic() - started
        for child in children:
            child.send("report")
        reports = [child.expect("report") for child in children]
    finally:
        for child in children:
            child.stop()
    # Ticks are 10 ms: the mean over the processes of one mesh resolves
    # finer than any one process can.
    cpu = statistics.mean(b[0] - a[0] for a, b in zip(before, after, strict=True))
    zmq_cpu = statistics.mean(b[1] - a[1] for a, b in zip(before, after, strict=True))
    result: dict[str, Any] = {
        "system": system,
        "peers": peers,
        "cpu_percent": 100.0 * cpu / elapsed,
        "zmq_thread_percent": 100.0 * zmq_cpu / elapsed,
        "seconds": elapsed,
    }
    if system == "meshq":
        wakeups = statistics.median(r["wakeups"] for r in reports) / elapsed
        # Each node sends a PING to every peer every 0.5 s and receives as many.
        heartbeats = 2 * peers * elapsed / 0.5
        result["wakeups_per_s"] = wakeups
        result["us_per_heartbeat"] = 1e6 * cpu / heartbeats
        result["peers_seen"] = min(r["peers"] for r in reports)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--peers", type=int, nargs="+", default=[1, 7, 15, 31])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--coalesce", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="1 and 7 peers, 2 runs of 3 s")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.child:
        role, *rest = args.child
        if role == "meshq":
            index, mesh, seed, peers, coalesce = rest
            child_meshq(int(index), mesh, seed, int(peers), float(coalesce))
        else:
            child_raw(int(rest[0]))
        return 0
    if args.quick:
        args.peers, args.repeat, args.duration = [1, 7], 2, 3.0

    if __package__ in (None, ""):  # run as a script: make `bench` importable
        sys.path.insert(0, str(ROOT))
    from bench._common import environment, write_results

    runs: list[dict[str, Any]] = []
    failures: list[str] = []
    for peers in args.peers:
        for repeat in range(args.repeat):
            systems = ["meshq", "raw"] if repeat % 2 == 0 else ["raw", "meshq"]
            for system in systems:
                try:
                    runs.append(run_once(system, peers, args.duration, args.coalesce))
                except Exception as exc:  # one failed run is reported, the rest go on
                    failures.append(f"{system} with {peers} peers: {exc}")
    print(
        f"\n{'peers':>5} {'system':6} {'CPU % of a core':>16} {'(min-max of runs)':>18}"
        f" {'of it libzmq':>12} {'wake-ups/s':>10} {'us/heartbeat':>12}"
    )
    print("-" * 85)
    table = []
    for peers in args.peers:
        for system in ("meshq", "raw"):
            mine = [r for r in runs if r["system"] == system and r["peers"] == peers]
            if not mine:
                continue
            cpu = [r["cpu_percent"] for r in mine]
            row = {
                "peers": peers,
                "system": system,
                "cpu_percent": statistics.median(cpu),
                "min": min(cpu),
                "max": max(cpu),
                "runs": len(mine),
                "zmq_thread_percent": statistics.median(r["zmq_thread_percent"] for r in mine),
            }
            extra = ""
            if system == "meshq":
                row["wakeups_per_s"] = statistics.median(r["wakeups_per_s"] for r in mine)
                row["us_per_heartbeat"] = statistics.median(r["us_per_heartbeat"] for r in mine)
                extra = f" {row['wakeups_per_s']:>10.1f} {row['us_per_heartbeat']:>12.1f}"
            table.append(row)
            spread = f"{min(cpu):.3f}-{max(cpu):.3f}"
            print(
                f"{peers:>5} {system:6} {row['cpu_percent']:>16.3f} {spread:>18}"
                f" {row['zmq_thread_percent']:>12.3f}{extra}"
            )
    document = {
        "environment": environment(),
        "duration": args.duration,
        "coalesce": args.coalesce,
        "table": table,
        "runs": runs,
    }
    return write_results(args.json, document, failures)


if __name__ == "__main__":
    sys.exit(main())
