"""Durable publishing and consuming for asyncio (see meshq.AsyncNode).

The same relay protocol and the same consumer bookkeeping
(:class:`~meshq.durable.consumer.ConsumerState`) as the sync forms; only
the waiting differs: every request is awaited, and no thread is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Generator
from typing import TYPE_CHECKING, Any

from ..deadlines import within
from ..errors import Closed, MeshqError, NoProviders, RemoteError, Timeout
from ..relaywire import RELAY_SERVICE_PREFIX
from .confirms import ConfirmBook, Unconfirmed
from .consumer import LONG_POLL, ConsumerShell, DurableMessage, log
from .lookup import (
    ATTEMPT,
    NO_RELAY_PAUSE,
    pause_async,
    relay_holding,
    relay_request_async,
    relay_stream,
    retry_later,
)
from .publisher import max_message_size, prepare

if TYPE_CHECKING:
    from ..seams import AsyncMeshNode, MeshNode

__all__ = ["AsyncConfirm", "AsyncDurablePublisher", "AsyncDurableSubscription"]


class AsyncConfirm:
    """A durable publish in flight from asyncio; ``await confirm`` for its sequence number."""

    __slots__ = ("_entry", "_publisher", "_settled")

    def __init__(
        self, publisher: AsyncDurablePublisher, entry: Unconfirmed, settled: asyncio.Future[None]
    ) -> None:
        self._publisher = publisher
        self._entry = entry
        self._settled = settled

    @property
    def msg_id(self) -> bytes:
        return self._entry.msg_id

    def done(self) -> bool:
        """True once confirmed or failed."""
        return self._entry.settled

    async def result(self, timeout: float | None = None) -> int:
        """The stream sequence number the relay stored it under.

        Raises meshq.Timeout once the publish's own timeout passed unconfirmed
        (or this wait's ``timeout``), meshq.RemoteError if the relay refused it.
        """
        if not self._entry.settled:
            with contextlib.suppress(Timeout):  # (a settled future raises nothing)
                await within(asyncio.shield(self._settled), timeout)
        return self._publisher.outcome(self._entry)

    def __await__(self) -> Generator[Any, None, int]:
        return self.result().__await__()


class AsyncDurablePublisher(ConfirmBook["asyncio.Task[object]"]):
    """Publishes to relays with confirms from asyncio; many publishes may be in flight.

    The same batching, resends, timeouts, failures and counters as
    :class:`meshq.DurablePublisher` (they share one bookkeeping), on the
    running loop: ``await send(...)`` returns an :class:`AsyncConfirm` (it
    waits only while ``max_in_flight`` are unconfirmed), ``await confirm``
    its sequence number, ``await publish(...)`` both; ``await flush()``
    raises :class:`PublishFailed` for failures no confirm raised. Confirms
    progress on the loop whether or not anybody awaits them. Use it from
    the loop that made it.

    Args: as :class:`meshq.DurablePublisher`.
    """

    def __init__(
        self,
        node: AsyncMeshNode,
        *,
        timeout: float = 5.0,
        max_in_flight: int = 1024,
        max_requests: int = 4,
        max_batch: int = 256,
    ) -> None:
        super().__init__(
            timeout=timeout,
            max_in_flight=max_in_flight,
            max_requests=max_requests,
            max_batch=max_batch,
            max_request_bytes=max_message_size(node.node),
        )
        self.node = node
        self._waiting: dict[int, asyncio.Future[None]] = {}  # id(entry): its confirm's future
        self._changed = asyncio.Event()  # set whenever messages settle
        self._idle: asyncio.Task[None] | None = None  # waits out a pause or a missing relay

    async def send(self, topic: str, data: object, *, msg_id: bytes | None = None) -> AsyncConfirm:
        """Send ``data`` to the relay holding ``topic``'s stream; return its pending confirm.

        Waits while ``max_in_flight`` messages are unconfirmed. Raises
        NoProviders at once if no relay holds the stream, RelayConflict,
        ValueError for a bad topic or id or a message over half of
        ``max_msgpack_bytes``, TypeError if msgpack cannot encode ``data``,
        meshq.Closed.
        """
        out = prepare(self.node.node, topic, data, msg_id)
        while self._unconfirmed >= self.max_in_flight:
            await self._next_settled(None)
        if self.node.closed:
            raise Closed("node is closed")
        entry = self._add(topic, out)
        settled = asyncio.get_running_loop().create_future()
        self._waiting[id(entry)] = settled
        self._pump()
        return AsyncConfirm(self, entry, settled)

    async def publish(self, topic: str, data: object, *, msg_id: bytes | None = None) -> int:
        """Send and await the confirm; return the stream sequence number.

        Raises NoProviders at once if no relay holds the stream,
        RelayConflict, meshq.Timeout, meshq.RemoteError if the relay refused
        it, ValueError, TypeError (as :meth:`send`).
        """
        confirm = await self.send(topic, data, msg_id=msg_id)
        return await confirm

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent is confirmed or has failed.

        Raises PublishFailed (listing the message ids) if any message sent
        before failed and its confirm did not raise it already;
        meshq.Timeout if some are still unconfirmed after ``timeout`` s.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._unconfirmed:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"{self._unconfirmed} durable publishes unconfirmed")
            await self._next_settled(remaining)
        failed = self._take_failures()
        if failed is not None:
            raise failed

    async def _next_settled(self, timeout: float | None) -> None:
        """Wait until some message settles, or ``timeout`` s pass."""
        self._changed.clear()
        with contextlib.suppress(Timeout):
            await within(self._changed.wait(), timeout)

    def _request(self, stream: str, request: list[object], timeout: float) -> asyncio.Task[object]:
        if not self.node.node.providers().get(RELAY_SERVICE_PREFIX + stream):
            raise NoProviders(RELAY_SERVICE_PREFIX + stream)  # (gone since prepare(), say)
        task = asyncio.get_running_loop().create_task(
            relay_request_async(self.node, stream, request, timeout=timeout)
        )
        task.add_done_callback(self._replied)
        return task

    def _replied(self, task: asyncio.Task[object]) -> None:
        for batch in self._batches:
            if batch.future is task:
                self._settle(batch, functools.partial(_task_result, task))
                break
        self._pump()

    def _settled(self, entries: list[Unconfirmed]) -> None:
        for entry in entries:
            settled = self._waiting.pop(id(entry), None)
            if settled is not None and not settled.done():
                settled.set_result(None)
        self._changed.set()

    def _pump(self) -> None:
        """Send what can go now; if nothing can, wait (in a task) for the pause or a relay."""
        if self.node.closed:
            self._fail_everything(Closed("node is closed"))
            return
        self._dispatch()
        if self._unsent and not self._batches and (self._idle is None or self._idle.done()):
            self._idle = asyncio.get_running_loop().create_task(self._wait_idle())

    async def _wait_idle(self) -> None:
        """Nothing in flight, messages unsent: the store asked for a pause, or no relay is known."""
        now = time.monotonic()
        try:
            if now < self._hold_until:
                await pause_async(self.node, self._hold_until - now)
            else:
                # Until a relay holds the topic, or the oldest message is due to time out.
                first = self._unsent[0]
                limit = (first.deadline or now + first.timeout) - now
                with contextlib.suppress(Timeout):
                    await self.node.wait_for_providers(
                        lambda services: relay_holding(services, first.topic),
                        timeout=max(0.0, limit),
                    )
        except Closed:
            pass  # the pump below fails what is left
        self._idle = None
        self._pump()


def _task_result(task: asyncio.Task[object]) -> object:
    """A request task's reply; raises its error (a cancelled one as meshq.Closed)."""
    if task.cancelled():
        raise Closed("durable publish cancelled (the loop or node is closing)")
    return task.result()


class AsyncDurableSubscription(ConsumerShell):
    """A named durable consumer for asyncio; see :meth:`meshq.AsyncNode.subscribe_durable`.

    ``await sub.recv()``, ``async for message in sub``, ``async with``;
    acknowledgement and redelivery as in :class:`meshq.DurableSubscription`.
    Use it from the loop that made it.
    """

    node: AsyncMeshNode
    _opening: asyncio.Task[None] | None = None

    def _mesh_node(self) -> MeshNode:
        return self.node.node

    def open_soon(self) -> None:
        """Start :meth:`open` in a task of the running loop; ``recv`` waits for it."""
        self._opening = asyncio.get_running_loop().create_task(self.open())

    async def open(self) -> None:
        """Create the consumer now if a relay is known, so ``Start.NEW`` means "from now".

        Raises RemoteError if the name exists with another prefix, RelayConflict.
        """
        state = self._state
        try:
            state.stream = relay_stream(self.node.node, state.prefix)
            await relay_request_async(
                self.node, state.stream, state.open_request(), timeout=ATTEMPT, retries=2
            )
        except (NoProviders, Timeout):
            state.stream = None
        except RemoteError as exc:
            if not retry_later(exc):
                raise
            state.stream = None  # the first fetch creates it

    async def recv(self, timeout: float | None = None) -> DurableMessage:
        """The next message, stored ones first; see :meth:`DurableSubscription.recv`."""
        if self._closed or self.node.closed:
            raise Closed("durable subscription or its node is closed")
        if self._opening is not None:
            opening, self._opening = self._opening, None
            await opening  # RemoteError if the name reads another prefix
        state = self._state
        state.begin_recv()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = state.next_message()
            if message is not None:
                return message
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"no durable message on {state.prefix!r} within {timeout} s")
            longest = LONG_POLL if remaining is None else min(remaining, LONG_POLL)
            await self._fetch(state.next_nak_in(longest))

    def __aiter__(self) -> AsyncIterator[DurableMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[DurableMessage]:
        while not self._closed:
            yield await self.recv()

    async def _send_naks(self) -> None:
        state = self._state
        state.release_due()
        if state.naks and state.stream is not None:
            request, count = state.nak_request()
            try:
                await relay_request_async(self.node, state.stream, request, timeout=ATTEMPT)
            except MeshqError as exc:
                log.info("naks of %s not sent (%s): redelivered after ack_wait", state.name, exc)
            state.naks_sent(count)

    async def _fetch(self, wait: float) -> None:
        state = self._state
        try:
            if state.stream is None:
                state.stream = relay_stream(self.node.node, state.prefix)
            await self._send_naks()
            reply = await relay_request_async(
                self.node, state.stream, state.fetch_request(wait), timeout=wait + ATTEMPT
            )
        except NoProviders:
            state.no_relay()
            with contextlib.suppress(Timeout):
                await self.node.wait_for_providers(
                    lambda services: relay_holding(services, state.prefix), timeout=wait
                )
            return
        except RemoteError as exc:
            if not retry_later(exc):
                raise
            await pause_async(self.node, min(wait, NO_RELAY_PAUSE))  # not the owner (yet)
            return
        except Timeout:
            return  # a stopped or restarting relay: ask again
        state.take(reply, self.node.node.limits)

    async def close(self) -> None:
        """Send the last naks and acknowledgements, give back what was fetched but not read."""
        if self._closed:
            return
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
        if self.node.closed:
            return
        state = self._state
        try:
            state.release_due(everything=True)  # handing everything back
            await self._send_naks()
            last = state.ack_request(release=True)
            if last is not None and state.stream is not None:  # (a request needs a stream)
                request, count = last
                await relay_request_async(self.node, state.stream, request, timeout=1.0)
                state.acks_sent(count)
        except (MeshqError, RemoteError) as exc:
            log.info("last acks of %r not sent (%s): they will be redelivered", state.name, exc)

    async def __aenter__(self) -> AsyncDurableSubscription:
        return self

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None and self._state.unacked is not None:
            self._state.nak(self._state.unacked)  # the block failed on it, probably
        await self.close()
