"""How the security policy is enforced: one thread per node for ZAP and handshake events.

The policy (which keys may talk to us) is :class:`meshq.security.Curve`;
this module is the mechanism. The gatekeeper thread

* answers ZeroMQ's ZAP requests (RFC 27) for every CURVE server socket of
  the node's context: a key in the allowlist is admitted, anything else is
  refused and recorded;
* reads the monitor events of every socket the node made, so that a
  handshake that fails for any other reason (a peer without CURVE, a wrong
  server key, our key refused by the other side) is recorded too, never a
  silent hang.

Failing closed does not depend on this thread: every server socket sets
``ZAP_ENFORCE_DOMAIN`` (meshq/sockets.py), so with the handler gone libzmq
refuses every client instead of admitting them all.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import struct
import threading
import time
from collections.abc import Callable

import zmq
from zmq.utils import z85

from .security import Curve, KeyBook, Rejection

__all__ = ["ZAP_DOMAIN", "Gatekeeper"]

log = logging.getLogger("meshq.security")

#: The ZAP domain every meshq server socket uses.
ZAP_DOMAIN = "meshq"
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_MONITOR_STOPPED
)
_EVENT_HEAD = struct.Struct("=HI")
_LOG_AGAIN = 10.0  # seconds before a refusal of the same key (or of no key) is logged again
_MAX_LOGGED = 1024
#: A client that hung up during the handshake: most often one without CURVE.
_HUNG_UP = "client hung up during the handshake (a node without security?)"
_PROTOCOL_REASONS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "no CURVE (a node without security?)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "wrong key (decryption failed)",
    zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE: "wrong key (key exchange failed)",
}

OnReject = Callable[[Rejection], None]
OnFailed = Callable[[str], None]


class Gatekeeper:
    """The ZAP handler and handshake watcher of one zmq Context; see the module docstring.

    ``on_reject`` is called on the gatekeeper thread with each refusal, and
    ``on_client_failed`` with the endpoint of each failed outgoing
    handshake; neither may block.
    """

    def __init__(
        self,
        context: zmq.Context,  # type: ignore[type-arg]
        curve: Curve,
        keys: KeyBook,
        on_reject: OnReject,
        on_client_failed: OnFailed | None = None,
    ) -> None:
        self._context = context
        self._curve = curve
        self._keys = keys
        self._on_reject = on_reject
        self._on_client_failed = on_client_failed
        self._pending: collections.deque[tuple[zmq.Socket, bool]] = collections.deque()  # type: ignore[type-arg]
        self._numbers = itertools.count(1)  # next() is atomic: watch() runs on many threads
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._zap_closing = threading.Event()
        self._zap_closed = threading.Event()
        # Written to when there is news for the thread (a new monitor, stop,
        # close_zap): it sleeps in its poll until then, never on a timer.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._logged: dict[tuple[str, str], float] = {}  # (kind, key) -> next log time
        self._banned: dict[bytes, float] = {}  # Z85 key -> monotonic time the ban ends
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the ZAP endpoint and start the thread. Raises zmq.ZMQError if it is taken."""
        zap = self._context.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        try:
            zap.bind(_ZAP_ENDPOINT)
        except zmq.ZMQError:
            zap.close()
            self._close_pipe()
            raise
        self._thread = threading.Thread(
            target=self._main, args=(zap,), name="meshq-gatekeeper", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop answering; from now on libzmq refuses every CURVE client (fail closed)."""
        self._stop.set()
        self._wake()
        if self._thread is None:
            self._close_pipe()
        elif self._thread is not threading.current_thread():
            self._thread.join()  # the thread closes the pipe as it ends

    def close_zap(self, timeout: float = 5.0) -> None:
        """Stop answering ZAP but keep reporting handshakes: a dead handler, for tests.

        From then on libzmq refuses every CURVE client (fail closed). Waits up
        to ``timeout`` seconds for the thread to close the ZAP socket.
        """
        self._zap_closing.set()
        self._wake()
        self._zap_closed.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def watch(self, sock: zmq.Socket, *, server: bool) -> None:  # type: ignore[type-arg]
        """Report ``sock``'s failed handshakes. Call from the socket's owner, right after making it.

        The monitor's reading end is connected here, before ``sock`` can be
        closed, so the final MONITOR_STOPPED always arrives and lets the
        thread close it; then it is handed to the gatekeeper thread.
        """
        if self._stop.is_set():
            return
        address = f"inproc://meshq-monitor-{id(self):x}-{next(self._numbers)}"
        sock.monitor(address, _EVENTS)
        reader = self._context.socket(zmq.PAIR)
        reader.setsockopt(zmq.LINGER, 0)
        reader.connect(address)
        self._pending.append((reader, server))
        self._wake()
        if self._stop.is_set() and not self.running:
            # The thread is gone (the node is closing): nobody else closes it.
            try:
                self._pending.remove((reader, server))
            except ValueError:
                return  # the thread took it after all, and closed it on its way out
            reader.close()

    def _main(self, zap: zmq.Socket) -> None:  # type: ignore[type-arg]
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        readers: dict[zmq.Socket, bool] = {}  # type: ignore[type-arg]
        try:
            while not self._stop.is_set():
                if self._zap_closing.is_set() and not self._zap_closed.is_set():
                    poller.unregister(zap)
                    zap.close()
                    self._zap_closed.set()
                while self._pending:
                    reader, server = self._pending.popleft()
                    readers[reader] = server
                    poller.register(reader, zmq.POLLIN)
                for sock, _ in poller.poll():
                    if sock == self._wake_read:
                        _drain(self._wake_read)
                        continue
                    try:
                        if sock is zap:
                            self._answer(zap)
                        elif not self._on_event(sock, readers[sock]):
                            poller.unregister(sock)
                            del readers[sock]
                            sock.close()
                    except Exception:  # a bug here must not leave ZAP unanswered
                        log.exception("gatekeeper failed to handle an event")
        finally:
            zap.close()  # closing twice is harmless
            self._zap_closed.set()
            for reader in readers:
                reader.close()
            while self._pending:
                self._pending.popleft()[0].close()
            self._close_pipe()

    def _wake(self) -> None:
        with self._lock:
            if self._wake_write >= 0:
                try:
                    os.write(self._wake_write, b"w")
                except BlockingIOError:
                    pass  # a wake-up is pending already

    def _close_pipe(self) -> None:
        with self._lock:
            if self._wake_write >= 0:
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_read = self._wake_write = -1

    def _answer(self, zap: zmq.Socket) -> None:  # type: ignore[type-arg]
        frames = zap.recv_multipart()
        if len(frames) < 6:
            log.warning("malformed ZAP request of %d frames", len(frames))
            zap.send_multipart([b"1.0", b"", b"500", b"malformed request", b"", b""])
            return
        version, request_id, domain, address, _identity, mechanism = frames[:6]
        credentials = frames[6:]
        key = b""
        if mechanism != b"CURVE":
            reason = f"mechanism {mechanism.decode(errors='replace')} not allowed"
        elif len(credentials) != 1 or len(credentials[0]) != 32:
            reason = "malformed CURVE credentials"
        else:
            key = z85.encode(credentials[0])
            if domain.decode(errors="replace") != ZAP_DOMAIN:
                reason = "wrong ZAP domain"
            elif self._banned and self._is_banned(key):
                reason = "key banned for a while: malformed input"
            elif self._curve.allows(key):
                zap.send_multipart([version, request_id, b"200", b"OK", key, b""])
                return
            else:
                reason = "key not in allowlist"
        zap.send_multipart([version, request_id, b"400", reason.encode(), b"", b""])
        self._reject(address.decode(errors="replace"), key.decode(), reason)

    def _on_event(self, reader: zmq.Socket, server: bool) -> bool:  # type: ignore[type-arg]
        """Handle one monitor event; False once the monitored socket is gone."""
        frames = reader.recv_multipart()
        if len(frames) != 2 or len(frames[0]) != _EVENT_HEAD.size:
            return True
        event, value = _EVENT_HEAD.unpack(frames[0])
        endpoint = frames[1].decode(errors="replace")
        if event == zmq.EVENT_MONITOR_STOPPED:
            return False
        if server:
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return True  # our own ZAP refusal, already recorded with address and key
            # The monitor names our listening endpoint, not the client's.
            where, key = f"client of {endpoint}", ""
        else:
            known = self._keys.get(endpoint)
            where, key = endpoint, "" if known is None else known.decode()
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            reason = f"refused our key (ZAP status {value})"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            reason = _PROTOCOL_REASONS.get(value, f"handshake protocol error 0x{value:x}")
        elif value == errno.EFAULT and server:
            # libzmq's word for "ZAP_ENFORCE_DOMAIN and no handler": fail closed.
            reason = "no ZAP handler running: refused"
        elif value == errno.EAGAIN:
            reason = "handshake timed out"
        elif server and value in (errno.EPIPE, errno.ECONNRESET):
            # Both sides send their mechanism at once; which one notices the
            # mismatch first is a race. When the client wins, it hangs up
            # and we see a broken pipe here, not MECHANISM_MISMATCH.
            reason = _HUNG_UP
        else:
            reason = f"handshake failed: {os.strerror(value) if value else 'no detail'}"
        self._reject(where, key, reason)
        if not server and self._on_client_failed is not None:
            # libzmq never reconnects a connection whose handshake was refused:
            # the owner must make a new socket to try again (after an
            # allowlist change on the other side, say).
            self._on_client_failed(endpoint)
        return True

    def _reject(self, address: str, key: str, reason: str) -> None:
        rejection = Rejection(address, key, reason, time.time())
        now = time.monotonic()
        # One warning per peer, not one per socket: a refused peer shows up
        # at the dial, at each listening socket (named by our endpoint, as
        # the monitor cannot name the client) and in the broken pipe after.
        # A key names the peer; keyless refusals cannot be told apart.
        seen = ("key", key) if key else ("keyless", "")
        with self._lock:
            due = now >= self._logged.get(seen, 0.0)
            if due:
                if len(self._logged) >= _MAX_LOGGED:
                    self._logged.clear()
                self._logged[seen] = now + _LOG_AGAIN
        if due:
            log.warning("peer %s rejected: %s (key %s)", address, reason, key or "none")
        self._on_reject(rejection)

    def ban(self, key: bytes, seconds: float) -> None:
        """Refuse new connections with the Z85 ``key`` for ``seconds``. Thread-safe."""
        with self._lock:
            if len(self._banned) >= _MAX_LOGGED:
                self._banned.clear()
            self._banned[key] = time.monotonic() + seconds

    def _is_banned(self, key: bytes) -> bool:
        with self._lock:
            until = self._banned.get(key)
            if until is not None and time.monotonic() >= until:
                del self._banned[key]
                until = None
        return until is not None

    def record(self, address: str, key: str, reason: str) -> None:
        """Record a refusal decided elsewhere (a dial to a key not in the allowlist)."""
        self._reject(address, key, reason)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
