"""The one place where ZeroMQ's errors become meshq's.

pyzmq raises ``zmq.ZMQError`` with an errno for everything from a closed
socket to a full disk of file descriptors. Callers of meshq should see one
typed error per condition, with the errno kept in the message, so:

* a socket or context that is closed or terminating -> :class:`meshq.Closed`;
* ``EAGAIN`` (a full queue, nothing sent) -> :class:`meshq.Timeout`;
* anything else -> :class:`meshq.TransportError`, carrying ``errno``.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

import zmq

from .errors import Closed, MeshqError, Timeout, TransportError

__all__ = ["translate", "translated"]

#: errnos that mean "this socket or its context is gone".
_CLOSED = frozenset({zmq.ETERM, zmq.ENOTSOCK, errno.EBADF})


def translate(exc: zmq.ZMQError, doing: str) -> MeshqError:
    """The meshq error for ``exc``, raised while ``doing`` (e.g. "publish").

    The message names what was being done, the errno and its text.
    """
    code = exc.errno if exc.errno is not None else 0
    detail = f"{doing}: {exc.strerror} (errno {code})"
    if code in _CLOSED:
        return Closed(f"node is closed; {detail}", errno=code)
    if code == zmq.EAGAIN:
        return Timeout(detail)
    return TransportError(doing, code, exc.strerror)


@contextlib.contextmanager
def translated(doing: str) -> Iterator[None]:
    """Run a block whose ``zmq.ZMQError`` is raised as its meshq error (see :func:`translate`)."""
    try:
        yield
    except zmq.ZMQError as exc:
        raise translate(exc, doing) from exc
