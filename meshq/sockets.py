"""The one place where meshq creates ZeroMQ sockets.

Every socket a node opens comes from :class:`SocketFactory`, so options that
must hold everywhere (size limits, linger, ZMTP heartbeats, and later CURVE
keys) are applied once and cannot be forgotten by a new pattern.
"""

from __future__ import annotations

from typing import TypeVar

import zmq

from .config import MeshConfig
from .errors import MeshqError

__all__ = ["SocketFactory"]

S = TypeVar("S", bound=zmq.Socket)  # type: ignore[type-arg]


class SocketFactory:
    """Creates sockets with the node's common options on a given context.

    Sockets must be used only by the thread (or event loop) that asks for
    them; pass a ``zmq.asyncio.Context`` shadow to get asyncio sockets.
    """

    def __init__(self, config: MeshConfig) -> None:
        self._config = config

    def make(
        self, context: zmq.Context[S], socket_type: int, *, max_message_bytes: int | None = None
    ) -> S:
        """A new socket of ``socket_type`` with the common options set.

        Raises meshq.MeshqError if the process cannot open another socket.
        """
        try:
            sock = context.socket(socket_type)
        except zmq.ZMQError as exc:  # e.g. too many open files
            raise MeshqError(f"cannot open a ZeroMQ socket: {exc.strerror}") from exc
        config = self._config
        sock.setsockopt(zmq.LINGER, 0)
        # The largest message a peer may send us; bigger ones make ZeroMQ drop
        # the connection before we buffer them.
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes or config.max_message_bytes)
        # ZMTP heartbeats drop a TCP connection whose peer vanished (a cable
        # pulled, a host frozen) so ZeroMQ reconnects instead of waiting on
        # TCP retransmission timeouts that last minutes.
        heartbeat_ms = int(config.heartbeat_interval * 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(config.gone_after * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TTL, int(config.gone_after * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, heartbeat_ms)
        if socket_type in (zmq.PUB, zmq.XPUB):
            sock.setsockopt(zmq.SNDHWM, config.publish_hwm)
        elif socket_type == zmq.SUB:
            sock.setsockopt(zmq.RCVHWM, config.subscribe_hwm)
        elif socket_type == zmq.ROUTER:
            # A peer that reconnects with the same id (new TCP connection after
            # a link flap) takes over its old, half-dead pipe.
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        return sock
