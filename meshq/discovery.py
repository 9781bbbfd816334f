"""Discovery: finds candidate peers and hands their control endpoints to the node.

Backends share one small interface (:class:`Discovery`): mDNS/DNS-SD through
python-zeroconf, and a static list of seed endpoints. Discovery never decides
liveness; the heartbeat does. A withdrawn mDNS record only stops the node
from dialling that endpoint.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

from .errors import Timeout
from .interfaces import local_networks, machine_addresses, rank_endpoints
from .security import check_key, split_seed
from .wire import NODE_ID_BYTES, PROTOCOL_VERSION, parse_endpoint

__all__ = [
    "SERVICE_TYPE",
    "Candidate",
    "Discovery",
    "MdnsDiscovery",
    "SeedDiscovery",
    "read_txt",
]

log = logging.getLogger("meshq.discovery")

SERVICE_TYPE = "_meshq._tcp.local."
_RESOLVE_TIMEOUT_MS = 3000
#: Records resolved at once; the others wait their turn (each resolve waits
#: up to _RESOLVE_TIMEOUT_MS for a record that may have gone away).
_MAX_RESOLVING = 8
_REGISTER_TIMEOUT = 5.0
_STOP_TIMEOUT = 2.0  # seconds close() waits for the browser and its resolves to stop


@dataclass(frozen=True)
class Candidate:
    """A control endpoint that may lead to a peer; ``node_id`` if the source knew it."""

    endpoint: str
    node_id: bytes | None
    source: str  # "mdns" or "seed"
    #: The CURVE public key the TXT record claims (Z85), a hint for connecting.
    key: bytes | None = None
    #: The source's other endpoints for the same node, best first: where to
    #: turn if ``endpoint`` never answers.
    alternatives: tuple[str, ...] = ()


Found = Callable[[Candidate], None]


class Discovery(Protocol):
    """A source of candidate peers. Callbacks may run on any thread."""

    def start(self, on_found: Found, on_lost: Found) -> None:
        """Begin reporting candidates."""

    def close(self) -> None:
        """Stop, withdrawing this node's own advertisement if any."""


class SeedDiscovery:
    """A fixed list of control endpoints, such as ``tcp://198.18.0.5:7600``.

    With security a seed carries its CURVE public key after a ``#``:
    ``tcp://198.18.0.5:7600#<40 Z85 characters>``.
    """

    def __init__(self, seeds: Sequence[str]) -> None:
        self._seeds = []
        for seed in seeds:
            endpoint, key = split_seed(seed)
            parse_endpoint(endpoint)  # raises ValueError with the bad seed named
            self._seeds.append(Candidate(endpoint, None, "seed", key))

    @property
    def keyless(self) -> list[str]:
        """Seeds given without a key."""
        return [seed.endpoint for seed in self._seeds if seed.key is None]

    def start(self, on_found: Found, on_lost: Found) -> None:
        for seed in self._seeds:
            on_found(seed)

    def close(self) -> None:
        pass


def read_txt(txt: Mapping[str, str | None], mesh: str) -> tuple[bytes, bytes | None] | None:
    """The node id and CURVE key (Z85, None if absent) a TXT record announces.

    ``txt`` is python-zeroconf's ``decoded_properties``: a bare ``key`` maps
    to None, ``key=`` to "", and for a key present twice the first counts.
    Returns None when docs/PROTOCOL.md 5.1 says to ignore the record: another
    version or mesh, a bad id, or a ``key`` that is present but not a valid
    Z85 key (empty and bare included: present is not absent).
    """
    if txt.get("v") != str(PROTOCOL_VERSION) or txt.get("mesh") != mesh:
        return None
    try:
        node_id = bytes.fromhex(txt.get("id") or "")
    except ValueError:
        return None
    if len(node_id) != NODE_ID_BYTES:
        return None
    if "key" not in txt:
        return node_id, None
    text_key = txt["key"]
    # Not ASCII, not Z85: check_key would read such a character as "?", a
    # Z85 character, and accept another key than the one written.
    if text_key is None or not text_key.isascii():
        return None
    try:
        return node_id, check_key(text_key)
    except ValueError:
        return None


class MdnsDiscovery:
    """Advertise this node and browse for others as ``_meshq._tcp.local.``.

    The TXT record carries only what is needed to connect: ``v`` (protocol
    version), ``id`` (node id, hex), ``mesh``, and with security ``key`` (the
    node's CURVE public key, Z85). Records of another mesh, another version,
    or this node itself are ignored, as are TXT records over ``max_txt_bytes``
    and, beyond ``max_records`` remembered services, new names (counted in
    ``flooded``): a flood of unique names cannot grow memory without bound.

    Records are handled on zeroconf's event loop, as python-zeroconf's own
    async browser example does: a record complete in the cache is reported
    at once; one that is not is resolved by a task of its own, at most
    ``_MAX_RESOLVING`` at a time, so one record that went away (3 s until
    its resolve gives up) never holds up the others. Callbacks run on
    that loop's thread and must not block.
    """

    def __init__(
        self,
        *,
        node_id: bytes,
        name: str,
        mesh: str,
        interfaces: Sequence[str],
        control_port: int,
        public_key: bytes | None = None,
        max_records: int = 1024,
        max_txt_bytes: int = 1024,
    ) -> None:
        self._node_id = node_id
        self._max_records = max_records
        self._max_txt_bytes = max_txt_bytes
        #: mDNS records ignored because ``max_records`` were remembered already.
        self.flooded = 0
        self._mesh = mesh
        self._networks = local_networks(interfaces)
        self._own = machine_addresses() | {ipaddress.IPv4Address(ip) for ip in interfaces}
        self._interfaces = list(interfaces)
        # Where this node itself listens: a record that lists one of these
        # (every docker host's docker0 address, with a shared fixed port) must
        # never make us dial ourselves.
        self._own_endpoints = [f"tcp://{ip}:{control_port}" for ip in interfaces]
        # ASCII only, so 40 characters are 40 bytes: the instance label must
        # fit DNS's 63-byte limit together with the id.
        label = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in name)
        label = label[:40]
        self._info = ServiceInfo(
            SERVICE_TYPE,
            f"{label}-{node_id.hex()[:12]}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(ip) for ip in interfaces],
            port=control_port,
            properties={
                "v": str(PROTOCOL_VERSION),
                "id": node_id.hex(),
                "mesh": mesh,
                **({"key": public_key.decode()} if public_key else {}),
            },
            server=f"meshq-{node_id.hex()[:16]}.local.",
        )
        self._zeroconf: Zeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._endpoints: dict[str, Candidate] = {}  # service name -> what we reported
        self._lock = threading.Lock()  # _endpoints, flooded and _closed: read off the loop
        self._closed = False
        self._on_found: Found = _ignore
        self._on_lost: Found = _ignore
        # Only on zeroconf's loop: the resolve tasks, the token of the
        # resolve whose answer still counts per name, and names waiting for
        # a free resolve (oldest first).
        self._tasks: set[asyncio.Task[None]] = set()
        self._resolving: dict[str, object] = {}
        self._waiting: collections.OrderedDict[str, None] = collections.OrderedDict()

    def start(self, on_found: Found, on_lost: Found) -> None:
        zc = self._start_zeroconf()
        self._zeroconf = zc
        # The instance name embeds our random id, so it cannot conflict:
        # cooperating_responders skips the ~1.5 s probe and announces at once.
        # Waiting for registration but not for the three announcements keeps
        # Node() fast.
        assert zc.loop is not None
        future = asyncio.run_coroutine_threadsafe(
            zc.async_register_service(self._info, cooperating_responders=True), zc.loop
        )
        try:
            future.result(_REGISTER_TIMEOUT)
        except concurrent.futures.TimeoutError:
            zc.close()
            raise Timeout(f"mDNS registration took over {_REGISTER_TIMEOUT} s") from None

        self._on_found, self._on_lost = on_found, on_lost
        browsing = asyncio.run_coroutine_threadsafe(self._async_browse(zc), zc.loop)
        try:
            self._browser = browsing.result(_REGISTER_TIMEOUT)
        except concurrent.futures.TimeoutError:
            zc.close()
            raise Timeout(f"mDNS browser took over {_REGISTER_TIMEOUT} s to start") from None

    async def _async_browse(self, zc: Zeroconf) -> AsyncServiceBrowser:
        def handler(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            # On zeroconf's loop: nothing here may block (see the class docstring).
            try:
                self._on_change(zeroconf, name, state_change)
            except Exception:  # a bad record must never break the browser
                log.exception("mDNS record %s could not be handled", name)

        return AsyncServiceBrowser(zc, SERVICE_TYPE, handlers=[handler])

    def _start_zeroconf(self) -> Zeroconf:
        # Zeroconf adopts the caller's running event loop if there is one; we
        # block on it below, so it must get a loop thread of its own. Creating
        # it on a helper thread (which has no loop) guarantees that.
        made: list[Zeroconf] = []
        failed: list[BaseException] = []

        def create() -> None:
            try:
                made.append(Zeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only))
            except BaseException as exc:
                failed.append(exc)

        creator = threading.Thread(target=create, name="meshq-zeroconf-start")
        creator.start()
        creator.join()
        if failed:
            raise failed[0]
        return made[0]

    def _on_change(self, zeroconf: Zeroconf, name: str, state_change: ServiceStateChange) -> None:
        """One browser event, on zeroconf's loop."""
        if state_change is ServiceStateChange.Removed:
            # An answer still on its way for this name no longer counts.
            self._resolving.pop(name, None)
            self._waiting.pop(name, None)
            with self._lock:
                lost = self._endpoints.pop(name, None)
            if lost is not None:
                self._on_lost(lost)
            return
        if self._closed:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if info.load_from_cache(zeroconf):
            self._resolving.pop(name, None)  # the cache is as new as any answer to come
            self._report(name, info)
            return
        if name in self._resolving or name in self._waiting:
            return  # its resolve reads the newest records when they are complete
        if len(self._tasks) < _MAX_RESOLVING:
            self._resolve_soon(zeroconf, name)
        elif len(self._waiting) < self._max_records:
            self._waiting[name] = None
        else:
            with self._lock:
                self.flooded += 1

    def _resolve_soon(self, zeroconf: Zeroconf, name: str) -> None:
        token = object()
        self._resolving[name] = token
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name, token))
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._resolved(zeroconf, done))

    async def _resolve(self, zeroconf: Zeroconf, name: str, token: object) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            complete = await info.async_request(zeroconf, _RESOLVE_TIMEOUT_MS)
        finally:
            current = self._resolving.get(name) is token
            if current:
                del self._resolving[name]
        if not current or self._closed:
            return  # removed meanwhile, or reported from the cache
        if not complete:
            log.debug("mDNS record %s did not resolve", name)
            return
        self._report(name, info)

    def _resolved(self, zeroconf: Zeroconf, task: asyncio.Task[None]) -> None:
        """A resolve ended: log what went wrong, start the next waiting one."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("mDNS record could not be resolved", exc_info=task.exception())
        while self._waiting and len(self._tasks) < _MAX_RESOLVING and not self._closed:
            name, _ = self._waiting.popitem(last=False)
            self._resolve_soon(zeroconf, name)

    def _report(self, name: str, info: ServiceInfo) -> None:
        candidate = self._candidate(info)
        if candidate is None:
            return
        with self._lock:
            if self._closed:
                return
            previous = self._endpoints.get(name)
            if previous is None and len(self._endpoints) >= self._max_records:
                self.flooded += 1
                return
            self._endpoints[name] = candidate
        if previous is not None and previous != candidate:
            self._on_lost(previous)
        self._on_found(candidate)

    def _candidate(self, info: ServiceInfo) -> Candidate | None:
        if info.text is not None and len(info.text) > self._max_txt_bytes:
            return None
        announced = read_txt(info.decoded_properties, self._mesh)
        if announced is None:
            return None
        node_id, key = announced
        if node_id == self._node_id or not info.port:
            return None
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses:
            return None
        # python-zeroconf lists a record's addresses in no useful order (last
        # heard first), so rank them: never our own endpoints, addresses of
        # this machine only when nothing else is left (a peer on this host).
        # Sorted first, so that ties rank the same on every resolve.
        endpoints = rank_endpoints(
            [f"tcp://{address}:{info.port}" for address in sorted(addresses, key=_numeric)],
            self._networks,
            own=self._own,
            exclude=self._own_endpoints,
        )
        if not endpoints:
            return None
        return Candidate(endpoints[0], node_id, "mdns", key, alternatives=endpoints[1:])

    def close(self) -> None:
        with self._lock:
            self._closed = True
        zc = self._zeroconf
        if zc is None:
            return
        if self._browser is not None and zc.loop is not None and zc.loop.is_running():
            stopping = asyncio.run_coroutine_threadsafe(self._async_stop(), zc.loop)
            try:
                stopping.result(_STOP_TIMEOUT)
            except (concurrent.futures.TimeoutError, RuntimeError):
                log.warning("mDNS browser did not stop within %s s", _STOP_TIMEOUT)
        # Sends mDNS goodbyes so browsers drop us before the TTL runs out.
        zc.close()

    async def _async_stop(self) -> None:
        """Stop browsing and end every resolve (an answer on its way is dropped)."""
        if self._browser is not None:
            await self._browser.async_cancel()
        self._waiting.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _ignore(candidate: Candidate) -> None:
    """The callbacks before start()."""


def _numeric(address: str) -> tuple[int, str]:
    try:
        return (int(ipaddress.IPv4Address(address)), address)
    except ValueError:
        return (-1, address)
