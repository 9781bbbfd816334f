"""The optional persistence relay: durable streams on SQLite, served to the mesh.

``Relay(node, "data/", ["orders/"])`` makes ``node`` store every message
published durably on a topic under ``orders/`` and serve it to durable
consumers. See meshq/relay/server.py for the behaviour and guarantees.
``Relay(node, streams=["orders/"], store=JetStreamStore(urls, replicas=3))``
keeps them on a NATS JetStream cluster instead (meshq/relay/jetstream.py).
"""

from __future__ import annotations

from .interface import StreamStore
from .jetstream import JetStreamStore
from .server import Relay, StoreInUse, StreamConfig

__all__ = ["JetStreamStore", "Relay", "StoreInUse", "StreamConfig", "StreamStore"]
