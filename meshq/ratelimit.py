"""Failures that cannot flood: logging at one line per interval, and retries that back off."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["HandlerErrorLog", "RateLimitedLog", "retry_delay"]

_RETRY_FIRST = 0.001  # seconds before the second retry
_RETRY_MAX = 0.1  # ... doubling up to this


def retry_delay(failures: int) -> float:
    """Seconds to wait before trying again after ``failures`` failed tries in a row.

    The first failure is retried at once (0.0); one that keeps failing is
    retried after 1, 2, 4 ... ms, at most 0.1 s apart, instead of spinning.
    """
    if failures <= 1:
        return 0.0
    return min(_RETRY_MAX, _RETRY_FIRST * 2.0 ** min(failures - 2, 30))


class RateLimitedLog:
    """Logs at most one line per ``interval`` seconds; says how many were held back.

    ``level``: the level each line is logged at (a warning unless told).
    """

    def __init__(
        self, logger: logging.Logger, interval: float, level: int = logging.WARNING
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, text: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next = now + self._interval
        if suppressed:
            text += f" ({suppressed} similar suppressed)"
        self._logger.log(self._level, text, *args, exc_info=exc_info)


class HandlerErrorLog:
    """How a failing message handler is logged: each new kind of error with its traceback,
    then one counted summary line per ``interval`` seconds.

    A durable handler that always raises is redelivered with backoff until
    ``max_deliver``, and a plain one may fail on every message: a traceback
    each time would bury everything else in the log. ``failures`` counts
    every failure; the node counts them too (``message_handler_errors``).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._what = what
        self._interval = interval
        self._clock = clock
        self._seen: set[type[BaseException]] = set()  # kinds logged with a traceback
        self._next = 0.0  # monotonic s: no summary line before this
        self._since_line = 0  # failures since the last line
        self.failures = 0

    def failed(self, error: BaseException) -> None:
        """Log (or count) one failure of the handler with ``error``."""
        self.failures += 1
        now = self._clock()
        kind = type(error)
        if kind not in self._seen and len(self._seen) < 16:
            self._seen.add(kind)
            self._logger.error(
                "%s failed (further failures: one line per %.0f s)",
                self._what,
                self._interval,
                exc_info=error,
            )
            self._next = max(self._next, now + self._interval)
            return
        self._since_line += 1
        if now < self._next:
            return
        self._logger.error(
            "%s failed %d time(s) since the last line, %d in all; last: %s: %s",
            self._what,
            self._since_line,
            self.failures,
            kind.__name__,
            error,
        )
        self._since_line = 0
        self._next = now + self._interval
