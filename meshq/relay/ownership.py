"""Which of this relay's streams it may serve, and the conflicts with other relays.

The rule (meshq/durable/lookup.py): of the relays claiming a stream, the
store with the oldest claim owns it; the others refuse to store into it
or to serve its consumers, and so does every relay in its first
``settle`` seconds, while discovery finds the others. Used on the relay's
service thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..durable.lookup import NOT_OWNER, SETTLING, relay_stores, stream_owner
from ..errors import MeshqError
from ..relaywire import RELAY_SERVICE_PREFIX, stream_of_service

if TYPE_CHECKING:
    from ..seams import MeshNode

__all__ = ["Ownership"]

log = logging.getLogger("meshq.relay")


class Ownership:
    """The relay on ``node`` serving ``store_id``: its right to serve, and its conflicts."""

    def __init__(self, node: MeshNode, store_id: str, settle: float) -> None:
        self.node = node
        self.store_id = store_id
        self.settle = settle
        self._settled_at = time.monotonic() + settle
        #: What is wrong per stream ('' or missing: nothing), as of the last review.
        self.conflicts: dict[str, str] = {}

    def check(self, stream: str) -> None:
        """Raise the refusal if another relay owns ``stream``, or this one is still settling.

        Only for what only the owner may do: store ("pub", "pubs") and serve
        a consumer ("open", "fetch"); acks and naks are for a consumer this
        relay has, and reads are of its own store. Call it once the request
        is parsed: a malformed one is a protocol error, settling or not.
        """
        if time.monotonic() < self._settled_at:
            raise MeshqError(f"{SETTLING}: started less than {self.settle} s ago")
        relays = self.node.providers().get(RELAY_SERVICE_PREFIX + stream, {})
        if len(relays) < 2:
            return
        owner = stream_owner(self.node, stream, list(relays))
        if owner is not None and relay_stores(self.node, [owner]) != {self.store_id}:
            raise MeshqError(f"{NOT_OWNER} {stream!r}: relay {owner[:8]} owns it (older claim)")

    def review(self, streams: Iterable[str]) -> None:
        """Look for relays claiming or overlapping ``streams``; log each new conflict once."""
        services = self.node.services()
        advertised = [stream_of_service(service) or "" for service in services]
        for name in streams:
            problem = self._claim_conflict(name, services.get(RELAY_SERVICE_PREFIX + name, []))
            overlapping = [
                other
                for other in advertised
                if other and other != name and (other.startswith(name) or name.startswith(other))
            ]
            if overlapping:
                problem = (
                    f"overlaps stream {overlapping[0]!r} of another relay; durable publishes "
                    "to its topics fail until that is fixed"
                )
            if problem and self.conflicts.get(name) != problem:
                log.error("CONFIGURATION ERROR: stream %r %s", name, problem)
            if problem:
                self.conflicts[name] = problem
            else:
                self.conflicts.pop(name, None)

    def _claim_conflict(self, stream: str, relays: list[str]) -> str:
        """What is wrong when relays of several stores claim ``stream`` ('' if nothing)."""
        if len(relays) < 2 or len(relay_stores(self.node, relays)) < 2:
            return ""
        owner = stream_owner(self.node, stream, relays)
        ours = owner is None or relay_stores(self.node, [owner]) == {self.store_id}
        holder = "this relay" if ours else f"relay {(owner or '')[:8]}"
        return (
            f"is claimed by {len(relays)} relays ({', '.join(r[:8] for r in sorted(relays))}); "
            f"{holder} owns it (the oldest claim) and the others refuse it"
        )
