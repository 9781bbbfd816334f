"""Thread ownership: objects whose ZeroMQ socket one thread alone may touch.

A ZeroMQ socket used from two threads at once corrupts libzmq's state and
aborts the process (``Bad address (src/fq.cpp:56)``), with no Python
traceback. So every object that owns such a socket (a Subscription, a
request future, a pipeline) records the thread that made it and compares
``threading.get_ident()`` on each call: one C call and one comparison on
the hot path. A call from any other thread raises RuntimeError before it
reaches libzmq.
"""

from __future__ import annotations

import threading

__all__ = ["Owner", "current"]

#: ``threading.get_ident``, bound once: the hot paths compare its result.
current = threading.get_ident


class Owner:
    """The thread that made an object: its ident and its name, for the error."""

    __slots__ = ("ident", "name")

    def __init__(self) -> None:
        thread = threading.current_thread()
        self.ident = current()
        self.name = thread.name

    def error(self, what: str) -> RuntimeError:
        """The RuntimeError for ``what`` used from the calling thread instead of the owner."""
        here = threading.current_thread()
        return RuntimeError(
            f"{what} belongs to thread {self.name!r} (ident {self.ident}) and was used from "
            f"thread {here.name!r} (ident {here.ident}): use it from its own thread only"
        )
