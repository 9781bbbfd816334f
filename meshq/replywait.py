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
    """A descriptor that becomes readable when :meth:`ring` is called.

    Rung once, from any thread, when the node closes. A poll takes the
    descriptor with :meth:`hold` (None once rung: nothing to wait for) and
    gives it back with :meth:`release`. Once rung and given back by every
    poll, the descriptors are closed: a node that closes keeps none, and
    no poll ever holds a number that was closed (and maybe reused). An
    alarm never rung closes them when it is collected.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._rung = False
        self._holders = 0  # polls holding the descriptor now
        self._lock = threading.Lock()
        self._release = weakref.finalize(self, _close_both, self._read, self._write)

    def hold(self) -> int | None:
        """The descriptor to poll, open until :meth:`release`; None once rung."""
        with self._lock:
            if self._rung:
                return None
            self._holders += 1
            return self._read

    def release(self) -> None:
        """Give back what :meth:`hold` returned (a descriptor, not None)."""
        with self._lock:
            self._holders -= 1
            if self._rung and not self._holders:
                self._release()  # the last poll of a rung alarm is over

    def ring(self) -> None:
        """Make the descriptor readable (once; later calls do nothing). Never blocks.

        The descriptors are closed now if no poll holds them, else by the
        last :meth:`release`.
        """
        with self._lock:
            if self._rung:
                return
            self._rung = True
            if self._holders:
                os.write(self._write, b"!")
            else:
                self._release()


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
        ringing = alarm.hold()
        if ringing is None:  # rung
            requester.close()
            raise Closed("node is closed")
        try:
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
            poller.register(ringing, _POLLIN)
            try:
                ready = dict(poller.poll(limit))
            except zmq.ZMQError as exc:  # the context ended meanwhile
                requester.close()
                raise translate(exc, "wait for replies") from exc
        finally:
            alarm.release()
        ready.pop(ringing, None)
        requester.handle(ready)
    return True
