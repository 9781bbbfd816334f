"""Waiting on the calling thread for the first of several replies, or for the node to close.

A thread waiting on one request (``RequestFuture.result``) hears only its
own sockets, so a ``close()`` from another thread reaches it only when the
request ends. A durable client waiting on a relay's long poll, or on
several requests at once, wants to stop at once instead: :func:`wait_any`
polls the thread's reply sockets together with the node's
:class:`CloseAlarm`, a descriptor that turns readable when the node closes.
It wakes on a reply, on one of the caller side's own deadlines (an
attempt's expiry), or on the close; never on a timer of its own.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Sequence

import zmq

from .errors import Closed
from .requester import Requester, RequestFuture
from .zmqerrors import translate

__all__ = ["CloseAlarm", "wait_any"]

_POLLIN = int(zmq.POLLIN)


class CloseAlarm:
    """A descriptor that becomes readable when :meth:`ring` is called, and stays so.

    Rung once, from any thread, when the node closes; never drained, so a
    poll that starts after the close returns at once too. The descriptors
    are released when the alarm is collected: a thread polling it holds a
    reference, so its number is never reused under a poll.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._rung = False
        self._lock = threading.Lock()
        weakref.finalize(self, _close_both, self._read, self._write)

    def fileno(self) -> int:
        return self._read

    @property
    def rung(self) -> bool:
        return self._rung

    def ring(self) -> None:
        """Make the descriptor readable (once; later calls do nothing). Never blocks."""
        with self._lock:
            if self._rung:
                return
            self._rung = True
            os.write(self._write, b"!")


def _close_both(read: int, write: int) -> None:
    os.close(read)
    os.close(write)


def wait_any(
    requester: Requester,
    alarm: CloseAlarm,
    futures: Sequence[RequestFuture],
    timeout: float | None,
) -> bool:
    """Read ``requester``'s replies until one of ``futures`` ends; True then.

    False once ``timeout`` s (None: no limit) pass first. Each future ends by
    its own request timeout at the latest. Raises meshq.Closed as soon as
    ``alarm`` rings, after closing ``requester`` (whose sockets this thread
    owns: closed here, the node's context can end); RuntimeError for
    futures another thread made. Call with the calling thread's requester.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    # done() reads what is in already, and raises RuntimeError for a future
    # of another thread (whose replies never reach this thread's sockets).
    if any([future.done() for future in futures]):
        return True
    while not any(future.ready for future in futures):
        if alarm.rung:
            requester.close()
            raise Closed("node is closed")
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        # Until a reply, the caller side's next expiry scan, or ``remaining``.
        limit = requester.poll_limit(remaining)
        if limit is None:  # nothing in flight here, no time limit: they are not ours
            raise RuntimeError("wait_any: the futures are not in flight on this thread")
        poller = zmq.Poller()
        for sock in requester.sockets():
            poller.register(sock, _POLLIN)
        poller.register(alarm.fileno(), _POLLIN)
        try:
            ready = dict(poller.poll(limit))
        except zmq.ZMQError as exc:  # the context ended meanwhile
            requester.close()
            raise translate(exc, "wait for replies") from exc
        ready.pop(alarm.fileno(), None)
        requester.handle(ready)
    return True
