"""Logging that cannot flood: one line per interval, with a count of the rest."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimitedLog"]


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
