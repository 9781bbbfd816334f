"""Per-service counts and latencies, kept by the provider as it answers.

The service thread records each request a handler answered: one counter
and one latency sample (seconds from taking the request to having encoded
its reply, so the handler's time, not the network's). Only the latest
``SAMPLES`` latencies are kept; percentiles are computed when asked
(introspection), never per request. Deferred handlers (the relay's) are
not timed: their answer comes later, from elsewhere.
"""

from __future__ import annotations

import collections
import time

__all__ = ["SAMPLES", "ServiceStats", "record_request"]

SAMPLES = 1024  # latest latencies kept per service


class ServiceStats:
    """What one service answered. Written by the service thread only."""

    __slots__ = ("errors", "latencies", "served")

    def __init__(self) -> None:
        self.served = 0  # answered with a result
        self.errors = 0  # the handler raised (the caller got RemoteError)
        self.latencies: collections.deque[float] = collections.deque(maxlen=SAMPLES)

    def percentiles(self) -> tuple[float, float, float] | None:
        """(p50, p90, p99) seconds of the latest latencies, or None before any request.

        The copy is one ``list()`` of the deque, atomic under the GIL, so a
        reader on another thread needs no lock.
        """
        samples = sorted(list(self.latencies))
        if not samples:
            return None
        last = len(samples) - 1
        return tuple(samples[round(q * last)] for q in (0.5, 0.9, 0.99))  # type: ignore[return-value]


def record_request(
    stats: dict[str, ServiceStats], service: str, started: float, *, error: bool = False
) -> None:
    """Count one request of ``service`` begun at ``started`` (``time.perf_counter()``)."""
    entry = stats.get(service)
    if entry is None:
        entry = stats[service] = ServiceStats()  # at most one per served name
    if error:
        entry.errors += 1
    else:
        entry.served += 1
    entry.latencies.append(time.perf_counter() - started)
