"""What the benchmark scripts share: running their processes, and writing results."""

from __future__ import annotations

import json
import os
import platform
import queue
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import msgpack
import zmq

import meshq

__all__ = [
    "collect_reports",
    "environment",
    "load_average",
    "paired_ratios",
    "print_load",
    "ratio",
    "wait_for_service",
    "write_results",
]

REPORT_POLL = 0.25  # seconds between looks at processes that may have died


def collect_reports(
    processes: Mapping[str, BaseProcess],
    reports: Queue[Any],
    key: Callable[[Mapping[str, Any]], str],
    timeout: float,
    before_join: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Wait for one report from each process (``key(report)`` names its process).

    Ends early when a process died without reporting (say, an import error),
    and after ``timeout`` seconds at the latest; then joins every process,
    killing any still alive. Returns (reports by name, errors).
    """
    deadline = time.monotonic() + timeout
    found: dict[str, Any] = {}
    errors: list[str] = []
    exited_silently: set[str] = set()
    while len(found) < len(processes):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            errors.append(f"run exceeded {timeout} s")
            break
        try:
            report = reports.get(timeout=min(remaining, REPORT_POLL))
        except queue.Empty:
            # One that reported has flushed its report before exiting: give a
            # dead process one more look before giving up on it.
            missing = [
                name
                for name, process in processes.items()
                if name not in found and process.exitcode is not None
            ]
            if missing and all(name in exited_silently for name in missing):
                errors += [
                    f"{name} exited with code {processes[name].exitcode}, no report"
                    for name in missing
                ]
                break
            exited_silently.update(missing)
            continue
        found[key(report)] = report
    if before_join is not None:
        before_join()
    for name, process in processes.items():
        process.join(max(0.1, deadline - time.monotonic()) if not errors else 0.1)
        if process.is_alive():
            process.kill()
            process.join()
            errors.append(f"{name} killed")
    reports.close()
    return found, errors


def wait_for_service(node: meshq.Node, service: str, timeout: float) -> None:
    """Wait until some provider of ``service`` is known to ``node``.

    Raises TimeoutError (meshq.Timeout) after ``timeout`` seconds.
    """
    node.wait_for_service(service, timeout=timeout)


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when there is nothing to divide by."""
    return numerator / denominator if denominator > 0 else None


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> str:
    """Per-repeat ratios (run i over run i, same round), as "median [min-max]".

    The systems of one round run back to back, so each pair saw about the
    same machine: the spread of these ratios shows how steady the result is.
    """
    values = sorted(n / d for n, d in zip(numerators, denominators, strict=False) if d > 0)
    if not values:
        return "n/a"
    middle = (
        values[len(values) // 2]
        if len(values) % 2
        else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    )
    return f"{middle:.2f} [{values[0]:.2f}-{values[-1]:.2f}]"


def load_average() -> tuple[float, float, float]:
    """The machine's 1, 5 and 15 minute load averages (os.getloadavg)."""
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def print_load(when: str) -> tuple[float, float, float]:
    """Print the load average, saying ``when`` ("start", "end"); return it.

    The machines are shared: a ratio measured while the load was high is
    worth less, and the reader needs to see that next to it.
    """
    load = load_average()
    print(
        f"load average at {when}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"(1/5/15 min, {os.cpu_count()} cpus)",
        flush=True,
    )
    return load


def environment() -> dict[str, object]:
    """Versions and machine facts that every result file records."""
    return {
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(str(part) for part in msgpack.version),
        "meshq": meshq.__version__,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(path: Path, document: Mapping[str, Any], failures: Sequence[str]) -> int:
    """Write ``document`` as JSON to ``path``; report failures. Returns the exit status."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")
    if failures:
        print("failures:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0
