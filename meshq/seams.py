"""The public extension points that the relay, durable clients and pipeline workers use.

They are written against these protocols rather than against
:class:`meshq.Node` itself, so that the node (which offers durable
publishing) and its extensions never import each other. ``Node`` satisfies
:class:`MeshNode`, ``AsyncNode`` satisfies :class:`AsyncMeshNode`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from .config import MeshConfig
from .peers import Peer
from .requester import DEFAULT_RETRIES, DEFAULT_TIMEOUT, RequestFuture
from .services import DeferredHandler, Handler, Ticker
from .state import Providers, Reporting
from .wire import Limits

__all__ = ["AsyncMeshNode", "MeshNode", "Providers", "Reporting"]

T = TypeVar("T")


class MeshNode(Protocol):
    """What extensions may use of a node: the public API of :class:`meshq.Node`."""

    id: str
    name: str
    mesh: str
    config: MeshConfig

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def closed(self) -> bool: ...

    def peers(self) -> list[Peer]: ...

    def check_topic(self, topic: str) -> None: ...

    def publish(
        self, topic: str, data: object, *, durable: bool = False, timeout: float = 5.0
    ) -> int | None: ...

    def serve(self, name: str, handler: Handler | None = None) -> object: ...

    def serve_deferred(self, name: str, handler: DeferredHandler) -> None: ...

    def add_ticker(self, ticker: Ticker) -> None: ...

    def set_header(self, key: str, value: str) -> None: ...

    def track_consumer(self, consumer: Reporting) -> None: ...

    def request(
        self,
        service: str,
        data: object,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> object: ...

    def request_async(
        self,
        service: str,
        data: object,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        only: str | None = None,
    ) -> RequestFuture: ...

    def wait_any(
        self, futures: Sequence[RequestFuture], *, timeout: float | None = None
    ) -> bool: ...

    def services(self) -> dict[str, list[str]]: ...

    def providers(self) -> Providers: ...

    def wait_for_providers(
        self, test: Callable[[Providers], T | None], *, timeout: float | None
    ) -> T: ...

    def close(self) -> None: ...


class AsyncMeshNode(Protocol):
    """What asyncio extensions may use of an :class:`meshq.AsyncNode`."""

    @property
    def node(self) -> MeshNode: ...

    @property
    def closed(self) -> bool: ...

    async def request(
        self,
        service: str,
        data: object,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        only: str | None = None,
    ) -> object: ...

    async def wait_for_providers(
        self, test: Callable[[Providers], T | None], *, timeout: float | None
    ) -> T: ...
