"""meshq: a brokerless messaging mesh on ZeroMQ, found by mDNS.

import meshq
with meshq.Node("sensor", interfaces=["127.0.0.1"]) as node:
    node.publish("sensors/temp", {"celsius": 21.5})
"""

from __future__ import annotations

from .aio import AsyncNode, AsyncSubscription
from .config import MeshConfig
from .durable import (
    Confirm,
    DurableMessage,
    DurablePublisher,
    DurableSubscription,
    PublishFailed,
    RelayConflict,
    Start,
)
from .durable.aio import AsyncConfirm, AsyncDurablePublisher, AsyncDurableSubscription
from .errors import (
    BindError,
    Closed,
    KeyFileError,
    MeshqError,
    NoProviders,
    PayloadTooLarge,
    ProtocolError,
    RemoteError,
    Timeout,
    TransportError,
)
from .message import Message
from .node import Node
from .peers import EventKind, Peer, PeerEvent, PeerState
from .relay import Relay, StreamConfig
from .requester import GatherResult, RequestFuture
from .security import Curve, Rejection
from .subscription import Gap, Subscription
from .wire import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "AsyncConfirm",
    "AsyncDurablePublisher",
    "AsyncDurableSubscription",
    "AsyncNode",
    "AsyncSubscription",
    "BindError",
    "Closed",
    "Curve",
    "Confirm",
    "DurableMessage",
    "DurablePublisher",
    "DurableSubscription",
    "EventKind",
    "Gap",
    "MeshConfig",
    "MeshqError",
    "NoProviders",
    "PayloadTooLarge",
    "PublishFailed",
    "Relay",
    "RelayConflict",
    "RemoteError",
    "Start",
    "StreamConfig",
    "GatherResult",
    "KeyFileError",
    "RequestFuture",
    "Message",
    "Node",
    "Peer",
    "PeerEvent",
    "PeerState",
    "ProtocolError",
    "Rejection",
    "Subscription",
    "Timeout",
    "TransportError",
]

__version__ = "0.1.0"
