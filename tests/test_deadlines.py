"""meshq.deadlines.within: awaiting with a deadline, with the cancel rules wait_for breaks.

Each race is built in one loop step, not left to timing: the result and the
cancel (or the deadline) are both made ready before the waiting task runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

import meshq
from meshq.deadlines import within

#: A wait with a deadline: ``within`` itself, or asyncio.wait_for as a
#: reference that shows which race each test builds.
Waiting = Callable[[Awaitable[int], float], Coroutine[Any, Any, int]]


async def plain_wait_for(awaitable: Awaitable[int], timeout: float) -> int:
    return await asyncio.wait_for(awaitable, timeout)


async def cancelled_as_the_result_arrives(wait: Waiting) -> tuple[bool, int | None]:
    """Whether the waiting task ended cancelled; and what it returned if it did not."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[int] = loop.create_future()
    task = asyncio.create_task(wait(result, 30.0))
    await asyncio.sleep(0)  # the task now waits
    result.set_result(7)  # in one step: the result arrives and the task is cancelled
    task.cancel()
    try:
        returned = await task
    except asyncio.CancelledError:
        return True, None
    return False, returned


def test_a_cancel_that_lands_with_the_result_propagates() -> None:
    assert asyncio.run(cancelled_as_the_result_arrives(within)) == (True, None)


@pytest.mark.skipif(
    not (3, 10) <= __import__("sys").version_info[:2] < (3, 12),
    reason="asyncio.wait_for lost the cancel only before Python 3.12",
)
def test_plain_wait_for_swallows_that_cancel_here() -> None:
    """The reference: the same race through asyncio.wait_for returns the result instead.

    If this fails, the race is not built as described, and the test above proves nothing.
    """
    assert asyncio.run(cancelled_as_the_result_arrives(plain_wait_for)) == (False, 7)


def test_a_result_overtaken_by_a_cancel_goes_to_keep() -> None:
    async def scenario() -> tuple[bool, list[int]]:
        kept: list[int] = []
        loop = asyncio.get_running_loop()
        result: asyncio.Future[int] = loop.create_future()
        task = asyncio.create_task(within(result, 30.0, keep=kept.append))
        await asyncio.sleep(0)
        result.set_result(7)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return task.cancelled(), kept

    assert asyncio.run(scenario()) == (True, [7])


def test_a_result_in_when_the_deadline_fires_is_returned() -> None:
    """The deadline and the result are both due in one loop step: the result wins."""

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[int] = loop.create_future()
        task = asyncio.create_task(within(result, 0.001))
        await asyncio.sleep(0)  # the task waits, its deadline set
        time.sleep(0.01)  # holds the loop: the deadline is past when it next runs
        result.set_result(7)  # and the result is in, in the same step
        return await task

    assert asyncio.run(scenario()) == 7


def test_the_deadline_cancels_the_awaitable_and_raises_timeout() -> None:
    async def scenario() -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        never: asyncio.Future[int] = loop.create_future()
        with pytest.raises(meshq.Timeout) as raised:
            await within(never, 0.01, message="nothing came")
        return never.cancelled(), str(raised.value)

    assert asyncio.run(scenario()) == (True, "nothing came")


def test_an_awaitable_that_finishes_despite_the_cancel_keeps_its_result() -> None:
    """A deadline's cancel that the awaitable absorbs (a socket read that completed)."""

    async def stubborn() -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return 7
        return 0

    assert asyncio.run(within(stubborn(), 0.01)) == 7


def test_a_cancel_during_the_deadlines_own_cancel_propagates() -> None:
    """The caller is cancelled while the timed-out awaitable winds down: not a Timeout."""

    async def scenario() -> bool:
        winding, release = asyncio.Event(), asyncio.Event()

        async def slow_to_stop() -> int:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                winding.set()
                await release.wait()  # winds down until told
                raise
            return 0

        task = asyncio.create_task(within(slow_to_stop(), 0.01))
        await asyncio.wait_for(winding.wait(), 10)  # the deadline fired and cancelled it
        task.cancel()
        release.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert asyncio.run(scenario())


def test_no_deadline_waits_for_the_result() -> None:
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[int] = loop.create_future()
        loop.call_soon(result.set_result, 7)
        return await within(result, None)

    assert asyncio.run(scenario()) == 7


def test_a_message_whose_recv_is_cancelled_as_it_arrives_goes_to_the_next_recv(
    mesh: str,
) -> None:
    """AsyncSubscription.recv hands ``within`` its keep: the frame is not lost to the cancel.

    The cancel is made by a done-callback of the socket's own receive (a spy
    on the real socket's recv, not a mock), so it lands in the very step the
    frame arrives, after recv's wake-up was queued.
    """

    async def scenario() -> tuple[bool, object]:
        with meshq.Node("pub", mesh=mesh, interfaces=["127.0.0.1"]) as pub:
            async with meshq.AsyncNode("sub", mesh=mesh, interfaces=["127.0.0.1"]) as node:
                sub = node.subscribe("race/")
                pub.wait_for_subscribers("race/", 1, timeout=10)
                sock = sub._sock
                real_recv = sock.recv
                task: asyncio.Task[meshq.Message] | None = None

                def spying_recv() -> asyncio.Future[bytes]:
                    future: asyncio.Future[bytes] = real_recv()  # type: ignore[assignment]
                    waiting = task
                    assert waiting is not None
                    future.add_done_callback(lambda _: waiting.cancel())
                    return future

                sock.recv = spying_recv  # type: ignore[method-assign, assignment]
                task = asyncio.create_task(sub.recv(timeout=30))
                await asyncio.sleep(0)  # recv waits, its socket empty
                pub.publish("race/1", "kept")
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                sock.recv = real_recv  # type: ignore[method-assign]
                message = await sub.recv(timeout=10)
                return task.cancelled(), message.data

    assert asyncio.run(scenario()) == (True, "kept")
