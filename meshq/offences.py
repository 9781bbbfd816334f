"""Repeat offenders: count a remote peer's malformed input and say when to cut it off.

Pure code with an injected clock, like meshq/peers.py. An offender is named
by whatever the caller can tell apart: the CURVE key a peer proved (which it
cannot change at will) or, without security, the node id in its routing id
(which it can: without security this only slows a deliberate attacker down,
and stops a buggy peer from flooding the log).
"""

from __future__ import annotations

import collections
from typing import Any

__all__ = ["Offences"]


class Offences:
    """``limit`` offences within ``window`` seconds ban an offender for ``ban`` seconds.

    Bounded: at most ``capacity`` offenders are tracked, the oldest
    forgotten first, so a flood of fresh names cannot grow memory.
    """

    def __init__(self, limit: int, window: float, ban: float, capacity: int = 1024) -> None:
        self._limit = limit
        self._window = window
        self._ban = ban
        self._capacity = capacity
        # offender -> (first offence of the current window, count)
        self._counts: collections.OrderedDict[bytes, tuple[float, int]] = collections.OrderedDict()
        self._banned: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        #: Whether anyone is (or was, until asked again) banned: a cheap test
        #: first, a plain attribute (read for every control message).
        self.active = False

    def offend(self, who: bytes, now: float) -> bool:
        """Count one offence; True when it is the one that gets ``who`` banned."""
        start, count = self._counts.pop(who, (now, 0))
        if now - start > self._window:
            start, count = now, 0
        count += 1
        if count < self._limit:
            self._counts[who] = (start, count)
            _trim(self._counts, self._capacity)
            return False
        self._banned.pop(who, None)
        self._banned[who] = now + self._ban
        _trim(self._banned, self._capacity)
        self.active = True
        return True

    def banned(self, who: bytes, now: float) -> bool:
        """Whether ``who`` is banned at ``now``; an expired ban is forgotten."""
        until = self._banned.get(who)
        if until is None:
            return False
        if now < until:
            return True
        del self._banned[who]
        self.active = bool(self._banned)
        return False


def _trim(table: collections.OrderedDict[bytes, Any], capacity: int) -> None:
    while len(table) > capacity:
        table.popitem(last=False)
