"""SIGTERM handled as Ctrl-C while a node serves in the foreground.

systemd and docker stop a service with SIGTERM, which by default ends a
Python process at once: no goodbye, and peers notice only when heartbeats
stop. While :meth:`meshq.Node.run` waits, SIGTERM instead raises
``KeyboardInterrupt`` in the main thread, as Ctrl-C does, so the waiting
call returns and the node's ``with`` block says goodbye. The handler found
before is put back afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["sigterm_as_interrupt"]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises KeyboardInterrupt (main thread only; elsewhere a no-op).

    A handler the application installed for SIGTERM is left alone: it
    decided what SIGTERM means.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
