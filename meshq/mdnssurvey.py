"""One round of mDNS as ``meshq doctor`` sees it: a probe, the responders, the meshes.

:func:`survey_mdns` announces a probe service (``_meshq-doctor._tcp``),
browses for a fixed time for it, for every meshq node (``_meshq._tcp``) and
for the service types anyone announces, then resolves the meshq nodes seen.
Traffic: mDNS on the given interfaces only, for ``wait`` seconds plus at
most one second per unresolved node (at most 64 resolved).
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["MESHQ_TYPE", "PROBE_TYPE", "MdnsSurvey", "MeshqInstance", "survey_mdns"]

PROBE_TYPE = "_meshq-doctor._tcp.local."
MESHQ_TYPE = "_meshq._tcp.local."
_ALL_TYPES = "_services._dns-sd._udp.local."
_MAX_RESOLVE = 64  # meshq instances resolved at most (each may take 1 s)


@dataclass(frozen=True)
class MeshqInstance:
    """A meshq node seen on mDNS."""

    name: str
    node_id: str
    mesh: str
    addresses: tuple[str, ...]
    port: int
    key: str | None


@dataclass
class MdnsSurvey:
    """What one round of mDNS saw."""

    probe_seen: bool = False
    other_probes: int = 0  # other doctors' probes: multicast crossed the LAN
    types: set[str] = field(default_factory=set)
    nodes: list[MeshqInstance] = field(default_factory=list)
    unresolved: int = 0
    error: str | None = None


def survey_mdns(chosen: Sequence[str], mesh: str, wait: float) -> MdnsSurvey:
    """Announce a probe, browse for ``wait`` seconds, resolve the meshq nodes seen."""
    from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

    survey = MdnsSurvey()
    lock = threading.Lock()
    probe_name = f"doctor-{secrets.token_hex(4)}.{PROBE_TYPE}"
    meshq_names: set[str] = set()
    probe_seen = threading.Event()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is not ServiceStateChange.Added:
            return
        with lock:
            if service_type == _ALL_TYPES:
                survey.types.add(name)
            elif service_type == MESHQ_TYPE:
                meshq_names.add(name)
            elif name == probe_name:
                probe_seen.set()
            else:
                survey.other_probes += 1

    try:
        zc = Zeroconf(interfaces=list(chosen), ip_version=IPVersion.V4Only)
    except OSError as exc:
        survey.error = f"cannot open mDNS sockets: {exc}"
        return survey
    try:
        info = ServiceInfo(
            PROBE_TYPE,
            probe_name,
            addresses=[socket.inet_aton(ip) for ip in chosen],
            port=9,
            properties={"mesh": mesh},
            server=f"{probe_name.split('.')[0]}.local.",
        )
        try:
            zc.register_service(info, cooperating_responders=True)
        except Exception as exc:  # zeroconf raises several kinds; all mean "could not"
            survey.error = f"cannot announce: {exc}"
            return survey
        browsers = [
            ServiceBrowser(zc, kind, handlers=[on_change])
            for kind in (PROBE_TYPE, MESHQ_TYPE, _ALL_TYPES)
        ]
        # A survey listens for a fixed time: answers arrive spread out, and
        # nothing says when the last responder has spoken.
        threading.Event().wait(wait)
        for browser in browsers:
            browser.cancel()
        survey.probe_seen = probe_seen.is_set()
        with lock:
            names = sorted(meshq_names)
        for name in names[:_MAX_RESOLVE]:
            resolved = ServiceInfo(MESHQ_TYPE, name)
            if not resolved.load_from_cache(zc) and not resolved.request(zc, 1000):
                survey.unresolved += 1
                continue
            txt = resolved.decoded_properties
            survey.nodes.append(
                MeshqInstance(
                    name=name.split(".")[0],
                    node_id=txt.get("id") or "",
                    mesh=txt.get("mesh") or "",
                    addresses=tuple(resolved.parsed_addresses(IPVersion.V4Only)),
                    port=resolved.port or 0,
                    key=txt.get("key"),
                )
            )
        survey.unresolved += max(0, len(names) - _MAX_RESOLVE)
    finally:
        zc.close()
    return survey
