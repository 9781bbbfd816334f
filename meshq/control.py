"""The control loop: the node's background thread, carrying out the control protocol.

It owns the control ROUTER and one DEALER per endpoint it talks to; all of
them are used from this thread only. It waits in one poll until the next
deadline of the protocol (meshq/protocol.py), a control message, a command
in the mailbox (meshq/mailbox.py), or a change of the publish sockets'
subscribers, whichever comes first: an idle node sleeps until its next
heartbeat. What it learns goes to the node's shared state (meshq/state.py).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import select
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

import zmq
import zmq.backend

from .config import MeshConfig
from .gatekeeper import Gatekeeper
from .mailbox import Announce, Found, Lost, Mailbox, Redial, Stop, WatchPublisher
from .protocol import (
    Action,
    Ban,
    CloseLinks,
    ControlProtocol,
    Count,
    Directories,
    LocalNode,
    PeersChanged,
    Send,
    SendEach,
)
from .publishing import TAIL_INTERVAL, PublishSocket, bind_all
from .ratelimit import RateLimitedLog, retry_delay
from .sockets import SocketFactory
from .state import SUBSCRIBERS, NodeState
from .wire import PING_HEAD, Limits, routing_id
from .zmqerrors import translated

__all__ = ["ControlLoop"]

log = logging.getLogger("meshq.control")

_DEALER_HWM = 8  # control messages queued per peer while it is unreachable
_MAX_BATCH = 256  # control messages handled before looking at the clock again
# zmq.Socket.send is a Python wrapper over the backend's send, for the
# routing_id and group arguments of draft socket types: for a frame of
# bytes it only passes it on. Calling the backend directly halves the cost
# of a control message sent (a round of 31 heartbeats: 28 us -> 13 us).
_send_frame = zmq.backend.Socket.send


class ControlLoop:
    """Sockets and protocol of the control thread; made, run and closed on that thread.

    ``describe(control_endpoints)`` tells what this node says about itself
    (asked at start and on every Announce). Raises meshq.BindError if the
    control port cannot be bound.
    """

    #: Seconds after a wake-up that read only heartbeats (PINGs, and the
    #: periodic HELLOs that stand in for them every gossip_interval), fewer
    #: than there are peers, during which the loop does not look at the ROUTER again
    #: (commands and deadlines still wake it), so that the rest of the
    #: mesh's PINGs, sent on the same wall-clock instants, are read in one
    #: wake-up more. What is read at the end counts as read when the spell
    #: began. Anything but a PING (a HELLO, say) ends no spell early: it
    #: waits at most this long too. 0: read every message as it comes
    #: (bench/idle.py --coalesce compares).
    #:
    #: The first message to arrive within this long after the loop's own
    #: heartbeat round, with two peers or more, begins a spell unread: the
    #: mesh's round is arriving, so it is read with the rest at the end of
    #: the spell (as read when it came) instead of in a wake-up of its own.
    coalesce: ClassVar[float] = 0.05

    def __init__(
        self,
        *,
        config: MeshConfig,
        limits: Limits,
        context: zmq.Context,  # type: ignore[type-arg]
        sockets: SocketFactory,
        state: NodeState,
        mailbox: Mailbox,
        publisher: PublishSocket,
        interfaces: Sequence[str],
        networks: Sequence[ipaddress.IPv4Network],
        describe: Callable[[tuple[str, ...]], LocalNode],
        gatekeeper: Gatekeeper | None,
    ) -> None:
        self._config = config
        self._context = context
        self._sockets = sockets
        self._state = state
        self._mailbox = mailbox
        self._publisher = publisher
        self._describe = describe
        self._gatekeeper = gatekeeper
        # Only control messages arrive here: ZeroMQ drops a peer that sends
        # more than the largest valid one, before we buffer it.
        # No ZMTP heartbeats on control links: the protocol's PINGs flow
        # every heartbeat_interval anyway, and a dialled link that goes
        # unanswered is remade (protocol.py). ZMTP heartbeats on every
        # control connection cost an idle node as much CPU as all the rest.
        self._router = sockets.make(
            context,
            zmq.ROUTER,
            max_message_bytes=config.max_control_bytes + 64,
            heartbeats=False,
        )
        try:
            with translated("bind the control socket"):
                port = bind_all(self._router, interfaces, config.control_port)
        except BaseException:
            self._router.close(linger=0)  # or the node's context.term() waits forever
            raise
        self.endpoints = tuple(f"tcp://{ip}:{port}" for ip in interfaces)
        local = describe(self.endpoints)
        self._node_id = local.node_id
        self.protocol = ControlProtocol(
            config,
            local,
            time.monotonic(),
            limits=limits,
            networks=networks,
            keys=sockets.keys if sockets.curve is not None else None,
            clock_offset=time.time() - time.monotonic(),
        )
        self._dealers: dict[str, zmq.Socket] = {}  # type: ignore[type-arg]
        self._links = 0  # DEALERs made so far; numbers their routing ids
        # One poll(2) on plain descriptors per wake-up, not zmq_poll (which
        # polls twice and asks every socket's ZMQ_EVENTS twice). The
        # ROUTER's ZMQ_FD turns readable when the socket has work: reading
        # until zmq.Again (which runs that work) rearms it, so _receive()
        # always reads until then, or the loop looks again without sleeping.
        self._router_fd: int = self._router.getsockopt(zmq.FD)
        self._poller = select.poll()
        self._poller.register(self._router_fd, select.POLLIN)
        self._poller.register(mailbox.fd, select.POLLIN)
        self._quiet_poller = select.poll()  # the same without the ROUTER (see coalesce)
        self._quiet_poller.register(mailbox.fd, select.POLLIN)
        self._watched: set[int] = set()
        self._watch_publisher()
        self._internal_log = RateLimitedLog(log, interval=5.0)
        self._running = True
        #: Wake-ups of the loop so far, and how many found a deadline due.
        self.wakeups = 0
        self.timer_runs = 0
        self._next_tail = 0.0  # when tail markers are next due (monotonic s)
        # Whether a topic needs tail markers: then they have a deadline of
        # their own, else they are looked for with each heartbeat round.
        self._tails_live = False
        directories = self.protocol.directories()
        state.set_directories(directories.publishers, directories.providers)
        # Liveness and round trips: read from the protocol's table when asked,
        # not handed over per heartbeat.
        state.follow_liveness(*self.protocol.liveness())

    def _watch_publisher(self) -> None:
        # The publish sockets belong to API threads (under their lock); their
        # ZMQ_FD is only a descriptor, safe to poll from here. It turns
        # readable when subscriptions arrive or leave.
        for fd in self._publisher.wake_fds():
            if fd not in self._watched:
                self._watched.add(fd)
                self._poller.register(fd, select.POLLIN)
                self._quiet_poller.register(fd, select.POLLIN)

    def run(self) -> None:
        """Serve until a Stop command; every failure is counted and survived."""
        protocol = self.protocol
        router_fd, mailbox_fd = self._router_fd, self._mailbox.fd
        refused = self._sockets.refused
        quiet_until = 0.0  # see coalesce
        quiet_since = 0.0  # when the heartbeats that began the quiet spell were read
        unread = True  # the ROUTER may hold messages that its descriptor did not signal
        # Reads of the ROUTER in a row that raised. The first is retried at
        # once: its ZMQ_FD signals only new work, so what waits must not be
        # left unread. Later ones back off (retry_delay), while deadlines,
        # commands and new messages still wake the loop.
        failures = 0
        retry_at = 0.0  # when to read it again after the latest of them
        reading = False
        while self._running:
            deadline = protocol.next_deadline()
            if self._tails_live and self._next_tail < deadline:
                deadline = self._next_tail
            ripe = refused.next_ripe()
            if ripe is not None and ripe < deadline:
                deadline = ripe
            now = time.monotonic()
            poller = self._poller
            spell = now < quiet_until
            if spell:
                poller = self._quiet_poller
                if quiet_until < deadline:
                    deadline = quiet_until
            elif failures and now < retry_at:
                # Backing off from a read that fails: its descriptor may stay
                # readable, so look away from it until the retry is due.
                poller = self._quiet_poller
                if retry_at < deadline:
                    deadline = retry_at
            elif unread:
                deadline = now
            wait_ms = max(0, math.ceil((deadline - now) * 1000))
            try:
                events = poller.poll(wait_ms)
                self.wakeups += 1
                commands = router = publisher = False
                for fd, _ in events:
                    if fd == mailbox_fd:
                        commands = True
                    elif fd == router_fd:
                        router = True
                    else:
                        publisher = True
                if commands:
                    self._run_commands()
                if (
                    router
                    and not unread
                    and poller is self._poller
                    and (woke := time.monotonic()) - protocol.last_round < self.coalesce
                    and protocol.peer_count > 1
                ):
                    # Just after our round: the mesh's round is arriving.
                    # Begin its spell now, read it all at the end (coalesce).
                    quiet_since, quiet_until = woke, woke + self.coalesce
                    unread = True  # the ROUTER holds it: read it after the spell
                elif (router or unread) and poller is self._poller:
                    woke = time.monotonic()
                    unread = reading = True  # until _receive() returns: a failed read is retried
                    heartbeats = self._receive()
                    unread = reading = False
                    failures = 0
                    if heartbeats < 0:
                        unread = True  # stopped with more waiting: look again at once
                    elif heartbeats and self.coalesce and heartbeats < protocol.peer_count:
                        # Heartbeats woke us: the rest of the mesh's are on
                        # their way; read them together a moment later.
                        quiet_since, quiet_until = woke, time.monotonic() + self.coalesce
                elif spell and (not events or time.monotonic() >= quiet_until):
                    # The end of a quiet spell: read what came meanwhile, as
                    # if read when the spell began. They arrived between the
                    # two; the PINGs of a round leave together (7.6), so the
                    # start is the closer guess, and an echo PING's round
                    # trip (16.4) then does not count the spell as delay.
                    unread = reading = True  # as above
                    unread = self._receive(quiet_since) < 0
                    reading = False
                    failures = 0
                if publisher:
                    self._publisher.process_commands()  # subscribers came or went
                now = time.monotonic()
                if now >= protocol.next_deadline():
                    self.timer_runs += 1
                    # No quiet spell after our own heartbeats: the first of
                    # the mesh's to arrive wakes us and begins one, so that
                    # what is read is timed from a real arrival (16.4).
                    self._execute(protocol.on_timer(now))
                    if SUBSCRIBERS.waiting:
                        # A publishing thread that sent meanwhile may have
                        # taken the descriptor's wake-up: read anyway.
                        self._publisher.process_commands()
                    if not self._tails_live and self._publisher.has_topics:
                        self._announce_tails(now)  # with the heartbeat: no wake-up of its own
                if self._tails_live and now >= self._next_tail:
                    self._announce_tails(now)
                if ripe is not None and refused.ripe():
                    self._state.retry_refused()  # subscriptions retry refused links
            except Exception:  # a bug must not leave the node deaf and mute
                self._state.count("internal_errors")
                self._internal_log.warning("control loop error", exc_info=True)
                if reading:
                    reading = False
                    failures += 1
                    retry_at = time.monotonic() + retry_delay(failures)

    def _announce_tails(self, now: float) -> None:
        """Tail markers (PublishSocket.announce_tails), every TAIL_INTERVAL while needed."""
        self._tails_live = self._publisher.announce_tails()
        self._next_tail = now + TAIL_INTERVAL

    def _run_commands(self) -> None:
        protocol = self.protocol
        for command in self._mailbox.drain():
            now = time.monotonic()
            if isinstance(command, Stop):
                self._running = False
            elif isinstance(command, Found):
                self._execute(protocol.on_found(command.candidate, now))
            elif isinstance(command, Lost):
                self._execute(protocol.on_lost(command.candidate, now))
            elif isinstance(command, Redial):
                self._execute(protocol.on_redial(command.endpoint))
            elif isinstance(command, Announce):
                self._execute(protocol.on_announce(self._describe(self.endpoints)))
            elif isinstance(command, WatchPublisher):
                self._watch_publisher()

    def _receive(self, read_at: float | None = None) -> int:
        """Handle what waits on the ROUTER; how many messages, if all were heartbeats.

        Heartbeats: what the mesh sends every round, PINGs and periodic
        HELLOs that repeat the last (ControlProtocol.signs_of_life). 0:
        nothing, or something else too (a new HELLO, say); -1: it stopped
        after _MAX_BATCH messages with more waiting.

        ``read_at``: the monotonic time to hand the protocol as when each
        message was read (None: the clock at each message).
        """
        secure = self._sockets.curve is not None
        recv, protocol = self._router.recv, self.protocol
        lively = protocol.signs_of_life
        # Read until the ROUTER is empty, which also rearms its descriptor
        # (see __init__). Where a read most likely ends (after a message
        # alone, or after one per peer: a round), ask ZMQ_EVENTS whether
        # more waits, rather than read until zmq.Again: raising it costs a
        # cold wake-up some 30-60 us of Python, and asking before every
        # message would cost more than that in a batch.
        likely_ends, events = (1, protocol.peer_count), self._router.get
        count = 0
        while count < _MAX_BATCH:
            if count in likely_ends and not events(zmq.EVENTS) & zmq.POLLIN:
                break
            try:
                routing = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            count += 1
            # A ROUTER hands out whole messages: the rest is there already.
            last = recv(zmq.NOBLOCK, copy=False)
            body = last.bytes
            proven = b""
            if secure:
                # The key the sender proved in its CURVE handshake, as our
                # ZAP handler admitted it (its User-Id).
                try:
                    proven = last.get("User-Id").encode()
                except zmq.ZMQError:
                    proven = b""  # no ZAP verdict on this message: a HELLO is refused
            when = time.monotonic() if read_at is None else read_at
            try:
                if not last.more and body[:4] == PING_HEAD:
                    # A heartbeat, the common case: None when it changed
                    # nothing that the state must be told of.
                    actions = protocol.on_heartbeat(routing, body, when, proven)
                    if actions is None:
                        continue
                else:
                    actions = self._other(routing, last, body, when, proven)
                self._execute(actions)
            except Exception:  # a bug must not make the node deaf to everyone else
                self._state.count("internal_errors")
                self._internal_log.warning(
                    "control message from %s could not be handled",
                    routing[:16].hex(),
                    exc_info=True,
                )
        else:
            return -1
        return count if protocol.signs_of_life - lively == count else 0

    def _other(
        self, routing: bytes, last: zmq.Frame, body: bytes, when: float, proven: bytes
    ) -> list[Action]:
        """A message that is not a one-frame PING (a HELLO, a BYE, a malformed one)."""
        frames = [routing, body]
        recv = self._router.recv
        while last.more:  # malformed (a control message is one frame): the protocol counts it
            last = recv(zmq.NOBLOCK, copy=False)
            frames.append(last.bytes)
        # Where the message came from: the address to reach its sender at
        # when it lists several, some shared with other hosts (3.3).
        try:
            address = last.get("Peer-Address")
        except zmq.ZMQError:
            address = None
        source = address if isinstance(address, str) and address else None
        return self.protocol.on_frames(frames, when, proven, source)

    def _execute(self, actions: list[Action]) -> None:
        state = self._state
        for action in actions:
            if isinstance(action, SendEach):
                self._send_each(action.messages)
            elif isinstance(action, Send):
                for endpoint in action.endpoints:
                    self._send(endpoint, action.frame)
            elif isinstance(action, Count):
                state.count(action.what, action.n)
            elif isinstance(action, CloseLinks):
                for endpoint in action.endpoints:
                    dealer = self._dealers.pop(endpoint, None)
                    if dealer is not None:
                        dealer.close(linger=0)
            elif isinstance(action, Directories):
                state.set_directories(action.publishers, action.providers)
            elif isinstance(action, PeersChanged):
                state.publish_peers(action.peers, action.events)
            elif isinstance(action, Ban) and self._gatekeeper is not None:
                self._gatekeeper.ban(action.key, action.seconds)

    def _send_each(self, messages: tuple[tuple[str, bytes], ...]) -> None:
        """A round of heartbeats, in one tight loop over links that exist already."""
        dealers = self._dealers
        send, noblock = _send_frame, zmq.NOBLOCK
        dropped = 0
        for endpoint, frame in messages:
            dealer = dealers.get(endpoint)
            if dealer is None:
                self._send(endpoint, frame)
                continue
            try:
                send(dealer, frame, noblock)
            except zmq.Again:
                dropped += 1  # unreachable peer, queue full
        if dropped:
            self._state.count("control_dropped", dropped)

    def _send(self, endpoint: str, frame: bytes) -> None:
        dealer = self._dealers.get(endpoint)
        if dealer is None:
            sockets = self._sockets
            if not sockets.admits(endpoint):
                self._state.count("dial_refused_key")
                return
            dealer = sockets.make(self._context, zmq.DEALER, heartbeats=False)
            self._links += 1
            dealer.setsockopt(zmq.IDENTITY, routing_id(self._node_id, self._links))
            dealer.setsockopt(zmq.SNDHWM, _DEALER_HWM)
            sockets.connect(dealer, endpoint)
            self._dealers[endpoint] = dealer
        try:
            _send_frame(dealer, frame, zmq.NOBLOCK)
        except zmq.Again:
            self._state.count("control_dropped")  # unreachable peer, queue full

    def close(self) -> None:
        """Say goodbye to every peer, then close every control socket."""
        _, bye = self.protocol.goodbye()
        linger_ms = int(self._config.linger * 1000)
        for dealer in self._dealers.values():
            try:
                dealer.send(bye, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # unreachable peer: it will time us out instead
            dealer.close(linger=linger_ms)
        self._dealers.clear()
        self._router.close(linger=0)
