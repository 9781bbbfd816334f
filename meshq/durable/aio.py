"""Durable publishing and consuming for asyncio (see meshq.AsyncNode).

The same relay protocol and the same consumer bookkeeping
(:class:`~meshq.durable.consumer.ConsumerState`) as the sync forms; only
the waiting differs: every request is awaited, and no thread is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..errors import Closed, MeshqError, NoProviders, ProtocolError, RemoteError, Timeout
from ..relaywire import RELAY_SERVICE_PREFIX
from .consumer import ConsumerShell, DurableMessage, log
from .lookup import ATTEMPT, relay_holding, relay_stream
from .publisher import prepare

if TYPE_CHECKING:
    from ..seams import AsyncMeshNode

__all__ = ["AsyncDurablePublisher", "AsyncDurableSubscription"]


class AsyncDurablePublisher:
    """Publishes to relays with confirms from asyncio; ``asyncio.gather`` many publishes.

    Each publish is its own request; an unanswered attempt (1 s) is resent
    with the same message id until ``timeout`` seconds have passed.
    """

    def __init__(self, node: AsyncMeshNode, *, timeout: float = 5.0) -> None:
        if timeout <= 0:
            raise ValueError("need timeout > 0 seconds")
        self.node = node
        self.timeout = timeout
        #: Messages confirmed, and attempts resent after going unanswered.
        self.confirmed = 0
        self.resent = 0

    async def publish(self, topic: str, data: object, *, msg_id: bytes | None = None) -> int:
        """Store ``data`` on the relay holding ``topic``'s stream; return its sequence number.

        Raises NoProviders at once if no relay holds the stream,
        RelayConflict, meshq.Timeout, meshq.RemoteError if the relay refused
        it, ValueError for a bad topic or id or a message over half of
        ``max_msgpack_bytes``, TypeError if msgpack cannot encode ``data``.
        """
        out = prepare(self.node.node, topic, data, msg_id)
        request = ["pub", topic, out.msg_id, out.flags, out.payload]
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"durable publish to {topic!r} not confirmed")
            try:
                seq = await self.node.request(
                    RELAY_SERVICE_PREFIX + out.stream,
                    request,
                    timeout=min(ATTEMPT, remaining),
                    retries=0,
                )
            except NoProviders:  # the relay is restarting: wait for it
                await self._wait_for_relay(topic, remaining)
                continue
            except Timeout:
                self.resent += 1
                continue
            if type(seq) is not int or seq <= 0:
                raise ProtocolError(f"relay confirmed with {seq!r}")
            self.confirmed += 1
            return seq

    async def _wait_for_relay(self, topic: str, timeout: float) -> None:
        """Wait up to ``timeout`` s for a relay holding ``topic`` (woken by directory changes)."""
        with contextlib.suppress(Timeout):
            await self.node.wait_for_providers(
                lambda services: relay_holding(services, topic), timeout=timeout
            )


class AsyncDurableSubscription(ConsumerShell):
    """A named durable consumer for asyncio; see :meth:`meshq.AsyncNode.subscribe_durable`.

    ``await sub.recv()``, ``async for message in sub``, ``async with``;
    acknowledgement and redelivery as in :class:`meshq.DurableSubscription`.
    Use it from the loop that made it.
    """

    node: AsyncMeshNode
    _opening: asyncio.Task[None] | None = None

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
            await self.node.request(
                state.service(), state.open_request(), timeout=ATTEMPT, retries=2
            )
        except (NoProviders, Timeout):
            state.stream = None

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
            await self._fetch(1.0 if remaining is None else min(remaining, 1.0))

    def __aiter__(self) -> AsyncIterator[DurableMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[DurableMessage]:
        while not self._closed:
            yield await self.recv()

    async def _send_naks(self) -> None:
        state = self._state
        if state.naks and state.stream is not None:
            request, count = state.nak_request()
            try:
                await self.node.request(state.service(), request, timeout=ATTEMPT, retries=0)
            except MeshqError as exc:
                log.info("naks of %s not sent (%s): redelivered after ack_wait", state.name, exc)
            state.naks_sent(count)

    async def _fetch(self, wait: float) -> None:
        state = self._state
        try:
            if state.stream is None:
                state.stream = relay_stream(self.node.node, state.prefix)
            await self._send_naks()
            reply = await self.node.request(
                state.service(), state.fetch_request(wait), timeout=wait + ATTEMPT, retries=0
            )
        except NoProviders:
            state.no_relay()
            with contextlib.suppress(Timeout):
                await self.node.wait_for_providers(
                    lambda services: relay_holding(services, state.prefix), timeout=wait
                )
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
            await self._send_naks()
            last = state.ack_request(release=True)
            if last is not None:
                request, count = last
                await self.node.request(state.service(), request, timeout=1.0, retries=0)
                state.acks_sent(count)
        except (MeshqError, RemoteError) as exc:
            log.info("last acks of %r not sent (%s): they will be redelivered", state.name, exc)

    async def __aenter__(self) -> AsyncDurableSubscription:
        return self

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None and self._state.unacked is not None:
            self._state.nak(self._state.unacked)  # the block failed on it, probably
        await self.close()
