"""Awaiting with a deadline in asyncio, without ``asyncio.wait_for``'s cancel race.

Before Python 3.12, ``asyncio.wait_for`` returns the awaited result instead
of raising ``CancelledError`` when the caller is cancelled in the same loop
step as the result arrives: a cancelled ``recv()`` goes on and consumes the
message meant for the next call. ``asyncio.timeout`` (3.11) has the mirror
problem: a result that arrives in the step its deadline fires is dropped
for a timeout. :func:`within` keeps both rules on every Python meshq supports:

* a cancel of the caller always propagates (and a result that arrived with
  it is handed to ``keep``, not lost);
* a result that is in when the deadline fires is returned, not dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import Timeout

__all__ = ["within"]

T = TypeVar("T")


async def within(
    awaitable: Awaitable[T],
    timeout: float | None,
    *,
    keep: Callable[[T], None] | None = None,
    message: str = "deadline passed",
) -> T:
    """Await ``awaitable`` for at most ``timeout`` s (None: no limit); return its result.

    Raises meshq.Timeout(``message``) once the deadline passes, after
    cancelling the awaitable; if the awaitable ignores that cancel and
    finishes anyway, its result is returned. A cancel of the calling task
    cancels the awaitable and raises ``CancelledError``, always: a result
    that arrived in the same loop step is passed to ``keep`` (when given)
    rather than returned.
    """
    inner = asyncio.ensure_future(awaitable)
    if inner.done():
        return inner.result()
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        _resolve(woken)

    inner.add_done_callback(wake)
    expiry = None if timeout is None else loop.call_later(max(0.0, timeout), wake)
    try:
        await woken  # only a cancel of the caller can raise here: nobody else has it
    except asyncio.CancelledError:
        if inner.done():
            _hand_over(inner, keep)
        else:
            inner.cancel()
        raise
    finally:
        inner.remove_done_callback(wake)
        if expiry is not None:
            expiry.cancel()
    if not inner.done():  # the deadline passed first: cancel, and wait until it took
        inner.cancel()
        ended: asyncio.Future[None] = loop.create_future()
        inner.add_done_callback(lambda _: _resolve(ended))
        try:
            await ended
        except asyncio.CancelledError:
            _hand_over(inner, keep)
            raise
        if inner.cancelled():
            raise Timeout(message)
    return inner.result()


def _hand_over(inner: asyncio.Future[T], keep: Callable[[T], None] | None) -> None:
    """A result the caller's cancel overtook: to ``keep``; its exception is retrieved."""
    if not inner.done() or inner.cancelled():
        return
    if inner.exception() is None and keep is not None:
        keep(inner.result())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
