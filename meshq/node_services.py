"""Node's request/reply calls and service seams: a part of the :class:`meshq.Node` facade.

Handlers run on the node's service thread (meshq/services.py); requests
leave from the calling thread's own sockets (meshq/requester.py). The seams
(deferred replies, tickers, headers, the providers snapshot and waits on
it) are what the relay, durable clients and pipeline workers build on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .errors import Timeout
from .introspect import INTROSPECT_SERVICE
from .requester import DEFAULT_RETRIES, DEFAULT_TIMEOUT, GatherResult, RequestFuture
from .runtime import Runtime
from .services import DeferredHandler, Handler, Ticker
from .servicewire import check_service_name
from .state import Providers

__all__ = ["DIRECT_SERVICE", "DirectHandler", "ServiceApi", "TaskHandler"]

DirectHandler = Callable[[str, object], object]
#: A pipeline worker's handler: takes one task, returns its result.
TaskHandler = Callable[[object], object]
#: The service through which send_to() reaches a peer's on_direct handler.
DIRECT_SERVICE = "meshq/direct"
T = TypeVar("T")


class ServiceApi:
    """Request/reply methods of :class:`meshq.Node` (documented there)."""

    runtime: Runtime

    def serve(self, name: str, handler: Handler | None = None) -> Any:
        """Offer service ``name``: ``handler(data)`` answers each request.

        Usable as ``node.serve("calc", fn)`` or as a decorator
        ``@node.serve("calc")``. Many nodes may offer one name; callers spread
        their requests over all of them. Handlers run one at a time on the
        node's service thread; what a handler raises reaches the caller as
        meshq.RemoteError and the service keeps serving. Returns the handler.
        Raises ValueError for a bad name or more than 64 services (the
        built-in ``meshq/introspect`` is one of them unless the config turns
        it off), meshq.BindError if ``service_port`` is taken.
        """
        if handler is None:
            return lambda function: self.serve(name, function)
        check_service_name(name)
        self.runtime.offer(name, handler, deferred=False)
        return handler

    def service(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`serve`: ``@node.service("calc")``."""
        return lambda handler: self.serve(name, handler)  # type: ignore[no-any-return]

    def serve_deferred(self, name: str, handler: DeferredHandler) -> None:
        """Offer ``name`` with ``handler(data, reply_to)``, which may answer later.

        The handler (on the service thread) keeps ``reply_to`` and calls
        ``reply_to.send(result)`` or ``reply_to.fail(error)`` once, from any
        thread: the handler itself, a ticker (:meth:`add_ticker`), or another
        thread (the reply is handed to the service thread, which sends it).
        Raises as :meth:`serve`.
        """
        check_service_name(name)
        self.runtime.offer(name, handler, deferred=True)

    def add_ticker(self, ticker: Ticker) -> None:
        """Call ``ticker(now, idle)`` on the service thread between requests.

        ``now`` is the monotonic time, ``idle`` whether no request waits; the
        ticker returns the seconds until it wants to run again (None: only
        when the thread is idle next). Raises RuntimeError before any serve()
        on a node without introspection (which offers no service until then).
        """
        self.runtime.add_ticker(ticker)

    def set_header(self, key: str, value: str) -> None:
        """Add or change one header; peers see it with the HELLO sent now.

        Raises ValueError if the headers no longer fit the limits.
        """
        self.runtime.set_header(key, value)

    def worker(self, stage: str) -> Callable[[TaskHandler], TaskHandler]:
        """Decorator: offer pipeline stage ``stage``; ``handler(task)`` returns the task's result.

        ``@node.worker("resize")`` is ``meshq.patterns.Worker(node, "resize",
        handler)``: producers (``meshq.patterns.Pipeline``) spread their tasks
        over every worker of the stage. A task whose handler raises fails
        alone. Raises ValueError for a bad stage name.
        """

        def register(handler: TaskHandler) -> TaskHandler:
            # The worker is a pattern; the core imports it only when asked.
            from meshq.patterns.worker import serve_worker

            serve_worker(self, stage, handler)
            return handler

        return register

    def request(
        self,
        service: str,
        data: object,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> object:
        """Ask one provider of ``service`` and return its reply's data.

        Each attempt waits ``timeout`` seconds; a silent provider is replaced
        by one not asked yet, for up to ``retries`` more attempts, so the
        call returns within about ``(retries + 1) * timeout`` seconds. A
        provider is never asked twice: with one provider a slow handler
        runs once, and the call raises meshq.Timeout after ``timeout`` s.
        Raises meshq.NoProviders at once if nobody offers the service,
        meshq.RemoteError if the handler raised, meshq.Timeout when every
        attempt went unanswered, meshq.PayloadTooLarge (a ValueError) for
        ``data`` that no provider would accept.
        """
        # As request_async(...).result(), without its two call layers: the
        # calling thread's own Requester needs no owner check.
        return self.runtime.requester().call(service, data, timeout, retries)

    def request_async(
        self,
        service: str,
        data: object,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        only: str | None = None,
    ) -> RequestFuture:
        """Send a request and return at once; ``future.result()`` waits for the reply.

        Many may be in flight together. The future belongs to the calling
        thread: wait on it there. ``only``: ask this provider (node id, hex)
        and no other, retries included. Raises meshq.NoProviders at once
        (also when ``only`` does not offer the service).
        """
        return self.runtime.requester().start(service, data, timeout, retries, only)

    def wait_any(self, futures: Sequence[RequestFuture], *, timeout: float | None = None) -> bool:
        """Wait until one of ``futures`` has its reply or final error; True then.

        False after ``timeout`` s (None: until one ends, which each does by
        its own request timeout). Raises meshq.Closed as soon as the node
        closes, from any thread, also in the middle of the wait. The futures
        are requests the calling thread made (the thread whose sockets get
        their replies); RuntimeError otherwise.
        """
        return self.runtime.wait_any(futures, timeout)

    def gather(self, service: str, data: object, *, timeout: float = 0.5) -> GatherResult:
        """Ask every provider of ``service`` at once; return what came back within ``timeout`` s.

        The result holds the replies and errors by provider id and the ids
        of the providers that did not answer. Raises meshq.NoProviders.
        """
        return self.runtime.requester().gather(service, data, timeout)

    def send_to(self, peer_id: str, data: object, *, timeout: float = 1.0) -> object:
        """Send ``data`` to one peer's :meth:`on_direct` handler; return what it returned.

        Delivered at most once, acknowledged by the reply. Raises
        meshq.NoProviders at once if that peer takes no direct messages (or
        is unknown), meshq.RemoteError if its handler raised, meshq.Timeout.
        """
        future = self.runtime.requester().start(
            DIRECT_SERVICE, {"from": self.runtime.id, "data": data}, timeout, 0, only=peer_id
        )
        return future.result()

    def on_direct(self, handler: DirectHandler) -> DirectHandler:
        """Take direct messages (:meth:`send_to`): ``handler(sender_id, data)``, a decorator too.

        Runs on the node's service thread; its return value is the reply.
        """

        def unwrap(envelope: object) -> object:
            if not (isinstance(envelope, dict) and isinstance(envelope.get("from"), str)):
                raise ValueError("not a direct message")
            return handler(envelope["from"], envelope.get("data"))

        self.serve(DIRECT_SERVICE, unwrap)
        return handler

    def services(self) -> dict[str, list[str]]:
        """Every service on the mesh (this node's included) and the ids of its providers.

        ``meshq/introspect``, which every node answers, is left out (it is in
        :meth:`providers`, and :meth:`wait_for_service` waits for it).
        """
        return {
            name: sorted(by_id)
            for name, by_id in self.providers().items()
            if name != INTROSPECT_SERVICE
        }

    def providers(self) -> Providers:
        """The service directory now: name -> {provider id: endpoint}. A read-only snapshot.

        Cheaper than :meth:`services` (no copy): for lookups per message.
        """
        return self.runtime.state.services.all()

    def wait_for_service(
        self, name: str, n: int = 1, *, timeout: float | None = None
    ) -> Mapping[str, str]:
        """Block until at least ``n`` providers offer ``name``; return them (id -> endpoint).

        Wakes when the service directory changes, no polling. Raises
        meshq.Timeout after ``timeout`` s, meshq.Closed if the node closes.
        """
        try:
            return self.wait_for_providers(
                lambda providers: _enough(providers.get(name), n), timeout=timeout
            )
        except Timeout:
            have = len(self.providers().get(name, {}))
            raise Timeout(f"{have} of {n} providers of {name!r} after {timeout} s") from None

    def wait_for_providers(
        self, test: Callable[[Providers], T | None], *, timeout: float | None
    ) -> T:
        """Block until ``test(providers)`` returns something other than None; return it.

        ``test`` gets the directory as :meth:`providers` returns it, and is
        asked again at each change; keep it quick (it runs under a lock).
        Raises meshq.Timeout after ``timeout`` s, meshq.Closed.
        """
        return self.runtime.state.wait_providers(test, timeout)


def _enough(by_id: Mapping[str, str] | None, n: int) -> Mapping[str, str] | None:
    return by_id if by_id is not None and len(by_id) >= n else None
