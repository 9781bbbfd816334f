"""What a node's control thread shares with the threads that call its API.

Each part is a named object with the Condition its waiters block on, so
that no API call polls:

* peers: the snapshot ``peers()`` returns, the queue ``events()`` reads,
  and the registered callbacks (``peers_changed``); when each peer was
  last heard and its round trip come from the control protocol's live,
  read-only views (``follow_liveness``), not from a copy per heartbeat;
* stats: the counters ``stats()`` returns (a plain lock: nobody waits);
* directories: where publishers listen (subscriptions watch it) and who
  offers which service (``providers_changed``, for ``wait_for_service``);
* subscribers: whenever the publish sockets' subscriber counts change, or
  the publisher directory does, the process-wide :data:`SUBSCRIBERS` signal
  (for ``wait_for_subscribers``, whose thread may own subscriptions to connect);
* consumers: the node's durable consumers, which introspection reports.

The control thread writes; any thread reads. Nothing here touches a socket.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol, TypeVar

from .errors import Closed, Timeout
from .peers import EventKind, Peer, PeerEvent
from .security import Rejection
from .services import ServiceDirectory
from .subscription import PublisherDirectory

__all__ = [
    "SUBSCRIBERS",
    "DispatchItem",
    "NodeState",
    "PeerCallback",
    "Providers",
    "RejectionCallback",
    "Reporting",
]

PeerCallback = Callable[[Peer], None]
RejectionCallback = Callable[[Rejection], None]
#: (callbacks registered when the event happened, event); None stops the dispatcher.
DispatchItem = tuple[list[PeerCallback], PeerEvent] | tuple[list[RejectionCallback], Rejection]
#: service name -> {provider node id (hex): service endpoint}
Providers = Mapping[str, Mapping[str, str]]
T = TypeVar("T")


class ChangeSignal:
    """A change counter with the Condition its waiters block on, and listeners.

    Listeners are called (from any thread) after each change; they must not
    block. AsyncNode hops to its event loop from one.
    """

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.version = 0
        #: Threads blocked on the condition now (kept by the waiters).
        self.waiting = 0
        self._listeners: list[Callable[[], None]] = []

    def changed(self) -> None:
        with self.condition:
            self.version += 1
            self.condition.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def add_listener(self, listener: Callable[[], None]) -> None:
        with self.condition:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        with self.condition:
            if listener in self._listeners:
                self._listeners.remove(listener)


#: Subscriber counts or a publisher directory changed, in any node of this
#: process. One signal for all nodes, because the thread waiting for
#: subscribers of one node may own subscriptions of another node that must
#: connect before anyone subscribes (its subscriptions connect only when it
#: calls): a change anywhere wakes it to connect them.
SUBSCRIBERS = ChangeSignal()


class Reporting(Protocol):
    """A durable consumer as introspection sees it (meshq/durable/consumer.py)."""

    def report(self) -> dict[str, object] | None: ...


class NodeState:
    """The state a node's control thread shares with API threads; see the module docstring."""

    def __init__(self, event_queue_size: int) -> None:
        self.closed = False
        # Peers: guarded by peers_changed.
        self.peers_changed = threading.Condition()
        self._snapshot: list[Peer] = []  # last_seen on the monotonic clock
        # The control protocol's live views, by raw peer id: when each peer
        # was last heard (monotonic s), its smoothed round-trip time (s).
        # Read here, one lookup at a time, so that a heartbeat costs the
        # control thread no hand-over; empty until follow_liveness().
        self._seen: Mapping[bytes, float] = {}
        self._rtt: Mapping[bytes, float] = {}
        self._events: collections.deque[PeerEvent] = collections.deque(maxlen=event_queue_size)
        self._callbacks: dict[EventKind, list[PeerCallback]] = collections.defaultdict(list)
        #: Called with each batch of events on the control thread, and with
        #: [] when subscribers or services changed (any thread) or the node
        #: closed; must not block. AsyncNode hops to its event loop from here.
        self._listeners: list[Callable[[list[PeerEvent]], None]] = []
        self.dispatch: queue.SimpleQueue[DispatchItem | None] = queue.SimpleQueue()
        self._event_queue_size = event_queue_size
        # Stats.
        self._stats: collections.Counter[str] = collections.Counter()
        self._stats_lock = threading.Lock()
        # Directories.
        self.publishers = PublisherDirectory()
        self.services = ServiceDirectory()
        self.providers_changed = threading.Condition()
        # Durable consumers, held weakly: one its owner dropped is forgotten.
        self._consumers: weakref.WeakSet[Reporting] = weakref.WeakSet()
        self._consumers_lock = threading.Lock()

    # ------------------------------------------------------------------
    # Counters

    def count(self, what: str, n: int = 1) -> None:
        """Add ``n`` to counter ``what``. Thread-safe."""
        with self._stats_lock:
            self._stats[what] += n

    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._stats)

    # ------------------------------------------------------------------
    # Durable consumers

    def track_consumer(self, consumer: Reporting) -> None:
        """Report ``consumer`` in introspection while it lives. Thread-safe."""
        with self._consumers_lock:
            self._consumers.add(consumer)

    def consumers(self) -> list[Reporting]:
        """The durable consumers made on this node that are still referenced."""
        with self._consumers_lock:
            return list(self._consumers)

    # ------------------------------------------------------------------
    # Peers

    def peers(self) -> list[Peer]:
        """The peers now, ``last_seen`` in seconds since the epoch."""
        to_wall = time.time() - time.monotonic()
        with self.peers_changed:
            seen_now, rtt_now = self._seen, self._rtt
            peers = []
            for peer in self._snapshot:
                raw = bytes.fromhex(peer.id)
                seen = seen_now.get(raw)
                if seen is None:  # no longer in the table: as the snapshot says
                    seen, rtt = peer.last_seen, peer.rtt
                else:
                    rtt = rtt_now.get(raw)
                peers.append(replace(peer, last_seen=seen + to_wall, rtt=rtt))
            return peers

    def follow_liveness(self, seen: Mapping[bytes, float], rtt: Mapping[bytes, float]) -> None:
        """Read when peers were last heard and their round trips from these live,
        read-only views (ControlProtocol.liveness()) from now on: by raw peer id,
        monotonic seconds and seconds. The control thread calls it once."""
        with self.peers_changed:
            self._seen, self._rtt = seen, rtt

    def publish_peers(self, peers: list[Peer], events: list[PeerEvent]) -> None:
        """A new peer snapshot and the events that led to it: queue them, wake waiters.

        One lock for the snapshot and the callbacks, so that a callback
        registered meanwhile gets each peer exactly once (see add_callback),
        and peers() never lags behind an event.
        """
        to_wall = time.time() - time.monotonic()
        user_events = [replace(e, peer=_wall(e.peer, to_wall)) for e in events]
        with self.peers_changed:
            self._snapshot = peers
            self.peers_changed.notify_all()
            for event in user_events:
                if len(self._events) == self._events.maxlen:
                    self.count("events_dropped")
                self._events.append(event)
                callbacks = self._callbacks.get(event.kind)
                if callbacks:
                    self._enqueue((list(callbacks), event))
            listeners = list(self._listeners)
        if user_events:
            for listener in listeners:
                listener(user_events)

    def add_callback(self, kind: EventKind, callback: PeerCallback) -> None:
        """Register a peer callback; JOINED ones hear of every current peer too, once."""
        with self.peers_changed:
            self._callbacks[kind].append(callback)
            if kind is EventKind.JOINED:
                for peer in self.peers_locked():
                    self._enqueue(([callback], PeerEvent(EventKind.JOINED, peer)))

    def peers_locked(self) -> list[Peer]:
        to_wall = time.time() - time.monotonic()
        return [_wall(peer, to_wall) for peer in self._snapshot]

    def add_listener(self, listener: Callable[[list[PeerEvent]], None]) -> None:
        """Call ``listener(events)`` on the control thread after each batch; must not block."""
        with self.peers_changed:
            self._listeners.append(listener)

    def enqueue_rejection(self, callbacks: list[RejectionCallback], rejection: Rejection) -> None:
        if not self.closed:
            self._enqueue((callbacks, rejection))

    def _enqueue(self, item: DispatchItem) -> None:
        if self.dispatch.qsize() >= self._event_queue_size:
            self.count("callback_events_dropped")  # a callback is stuck
        else:
            self.dispatch.put(item)

    def next_event(self, timeout: float | None) -> PeerEvent | None:
        """The oldest event not yet taken, waiting up to ``timeout`` s; None at the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.peers_changed:
            while not self._events:
                if self.closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self.peers_changed.wait(remaining)
            return self._events.popleft()

    def wait_peers(self, test: Callable[[list[Peer]], T | None], timeout: float | None) -> T:
        """Block until ``test(peers)`` returns something other than None; return it.

        Raises meshq.Timeout after ``timeout`` s (with the last peers in the
        message), meshq.Closed if the node closes meanwhile.
        """
        return _wait(self.peers_changed, lambda: test(self.peers_locked()), self, timeout)

    # ------------------------------------------------------------------
    # Directories

    def set_directories(self, publishers: Mapping[str, str], providers: Providers) -> None:
        """New publisher and service directories (control thread)."""
        version = self.publishers.version
        self.publishers.update(publishers)
        if self.publishers.version != version:
            # A thread waiting for subscribers may own subscriptions that
            # should connect to a publisher now: wake it to do so.
            self.subscribers_moved()
        if providers != self.services.all():
            self.services.update(providers)
            with self.providers_changed:
                self.providers_changed.notify_all()
            self._tell_listeners()

    def wait_providers(self, test: Callable[[Providers], T | None], timeout: float | None) -> T:
        """Block until ``test(providers)`` is not None; return it. Timeout, Closed as above."""
        return _wait(self.providers_changed, lambda: test(self.services.all()), self, timeout)

    def retry_refused(self) -> None:
        """Refused links are due a retry: subscriptions make them anew on their next call."""
        self.publishers.touch()
        self.subscribers_moved()

    # ------------------------------------------------------------------
    # Subscriber counts

    def subscribers_moved(self) -> None:
        """A publish socket's subscriber counts changed (any thread)."""
        SUBSCRIBERS.changed()

    def _tell_listeners(self) -> None:
        if self._listeners:
            with self.peers_changed:
                listeners = list(self._listeners)
            for listener in listeners:
                listener([])

    # ------------------------------------------------------------------

    def close(self) -> None:
        """Wake every waiter; they raise meshq.Closed (or end) from now on."""
        self.closed = True
        for condition in (self.peers_changed, self.providers_changed, SUBSCRIBERS.condition):
            with condition:
                condition.notify_all()
        self._tell_listeners()  # so asyncio waiters notice the close


def _wall(peer: Peer, to_wall: float) -> Peer:
    return replace(peer, last_seen=peer.last_seen + to_wall)


def _wait(
    condition: threading.Condition,
    test: Callable[[], T | None],
    state: NodeState,
    timeout: float | None,
) -> T:
    deadline = None if timeout is None else time.monotonic() + timeout
    with condition:
        while True:
            result = test()
            if result is not None:
                return result
            if state.closed:
                raise Closed("node is closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"condition not met within {timeout} s")
            condition.wait(remaining)
