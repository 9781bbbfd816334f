"""Durable traffic, the client side: publishing with confirms and consuming with acks.

Both talk to the relay that holds the topic's stream (meshq/relay/, the
server side) over the ordinary request/reply path, using the relay protocol
(meshq/relaywire.py, docs/PROTOCOL.md 9.10).
"""

from __future__ import annotations

from .consumer import DurableMessage, DurableSubscription, Start
from .lookup import STORE_HEADER, RelayConflict, relay_stores, relay_stream, wait_for_relay
from .publisher import Confirm, DurablePublisher

__all__ = [
    "STORE_HEADER",
    "Confirm",
    "DurableMessage",
    "DurablePublisher",
    "DurableSubscription",
    "RelayConflict",
    "Start",
    "relay_stores",
    "relay_stream",
    "wait_for_relay",
]
