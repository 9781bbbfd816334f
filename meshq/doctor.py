"""``meshq doctor``: check this machine and its LAN for what breaks a mesh.

Each check gives one or more :class:`Finding` (pass, warn or fail) with the
fix. The checks, in order:

- **interfaces**: which addresses meshq would use and why; chosen addresses
  on docker/veth/bridge interfaces with no carrier or no meshq node behind
  them (peers would be told an address that leads nowhere); several
  addresses on one interface.
- **multicast**: a route for 224.0.0.0/4 through each chosen interface.
- **mdns**: a probe service announced and browsed back; other responders
  seen; every meshq mesh seen on the LAN, by name.
- **reachability**: a TCP connection to every advertised endpoint of every
  node of the mesh (the wrong-address bug of zeromq/zyre#698).
- **clocks**: skew against each peer, from its introspection reply.
- **keys**: the secret key file's mode and the allowlist's contents.
- **ports**: fixed ports (``--port`` and friends) already taken.

Traffic: mDNS on the chosen interfaces, one TCP connection per advertised
endpoint, and one introspection request per peer; every wait is bounded by
``wait`` seconds.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import KeyFileError, MeshqError, NoProviders, Timeout
from .hostnet import (
    Interface,
    Route,
    bind_error,
    connect_error,
    list_interfaces,
    multicast_route,
    read_routes,
)
from .interfaces import ENV_INTERFACES, resolve_interfaces
from .introspect import INTROSPECT_SERVICE, IntrospectError, parse_snapshot
from .mdnssurvey import MdnsSurvey, MeshqInstance, survey_mdns

__all__ = [
    "DoctorOptions",
    "Finding",
    "MdnsSurvey",
    "MeshqInstance",
    "format_findings",
    "run_doctor",
]

#: Clock skew (seconds, beyond the measurement's own uncertainty) that is
#: worth a warning: timestamps and Start.at_time compare clocks of two hosts.
SKEW_WARN = 0.25
SKEW_FAIL = 5.0


@dataclass(frozen=True)
class Finding:
    """One result: ``status`` is ``pass``, ``warn`` or ``fail``; ``fix`` says what to do."""

    check: str
    status: str
    summary: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorOptions:
    """What to check: the options a node of this mesh would be started with.

    ``ports`` maps a socket role (control, publish, service) to a fixed
    port; 0 means any free port. ``wait`` bounds each network step (s).
    """

    mesh: str = "default"
    interfaces: Sequence[str] | None = None
    seeds: Sequence[str] = ()
    key: str | None = None
    allow: Sequence[str] = ()
    ports: dict[str, int] = field(default_factory=dict)
    wait: float = 3.0
    #: False (--no-mdns): no mDNS at all; only seeds are checked.
    mdns: bool = True
    connect_timeout: float = 1.0


def run_doctor(options: DoctorOptions) -> list[Finding]:
    """Run every check; return the findings in the order of the module docstring."""
    findings: list[Finding] = []
    try:
        chosen = resolve_interfaces(options.interfaces)
    except ValueError as exc:
        return [Finding("interfaces", "fail", str(exc), "pass --interface with a local address")]
    interfaces = list_interfaces()
    survey = survey_mdns(chosen, options.mesh, options.wait) if options.mdns else MdnsSurvey()
    findings += check_interfaces(interfaces, chosen, options.interfaces, survey)
    findings += check_multicast(interfaces, chosen, read_routes())
    if options.mdns:
        findings += check_mdns(survey, options.mesh, chosen)
    else:
        findings.append(Finding("mdns", "pass", "not checked: --no-mdns (seeds only)"))
    findings += check_reachability(survey, options.mesh, options.connect_timeout, options.seeds)
    findings += check_clocks(options, chosen, survey)
    findings += check_keys(options.key, options.allow, survey, options.mesh)
    findings += check_ports(chosen, options.ports)
    return findings


def _why_chosen(explicit: Sequence[str] | None) -> str:
    if explicit is not None:
        return "given with --interface"
    if os.environ.get(ENV_INTERFACES, "").strip():
        return f"from {ENV_INTERFACES}"
    return "the default: every non-loopback IPv4 address"


def check_interfaces(
    interfaces: list[Interface],
    chosen: Sequence[str],
    explicit: Sequence[str] | None,
    survey: MdnsSurvey,
) -> list[Finding]:
    """Which interfaces meshq uses, and the ones it should not."""
    by_address = {address: iface for iface in interfaces for address, _ in iface.addresses}
    described = ", ".join(
        f"{address} ({by_address[address].name})" if address in by_address else address
        for address in chosen
    )
    findings = [Finding("interfaces", "pass", f"meshq uses {described}: {_why_chosen(explicit)}")]
    seen_addresses = [ipaddress.IPv4Address(a) for node in survey.nodes for a in node.addresses]
    bad: list[str] = []
    for address in chosen:
        iface = by_address.get(address)
        if iface is None:
            findings.append(
                Finding(
                    "interfaces",
                    "fail",
                    f"{address} is not an address of this machine: a node cannot bind it",
                    "pass --interface with one of: "
                    + ", ".join(a for i in interfaces for a, _ in i.addresses),
                )
            )
            bad.append(address)
            continue
        prefix = dict(iface.addresses)[address]
        network = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
        behind = [a for a in seen_addresses if a in network and str(a) not in chosen]
        if iface.kind == "loopback":
            continue
        if iface.dead:
            bad.append(address)
            findings.append(
                Finding(
                    "interfaces",
                    "warn",
                    f"{iface.name} ({address}/{prefix}) is a {iface.kind} interface with "
                    f"{iface.why_dead}; meshq listens there and tells every peer this "
                    "address, which leads nowhere",
                    "",
                )
            )
        elif iface.virtual and not behind:
            bad.append(address)
            findings.append(
                Finding(
                    "interfaces",
                    "warn",
                    f"{iface.name} ({address}/{prefix}) is a {iface.kind} interface with no "
                    "meshq node seen behind it; peers are told this address too",
                    "",
                )
            )
    good = [a for a in chosen if a not in bad]
    fix = (
        f"pass --interface {' --interface '.join(good)} (or {ENV_INTERFACES}={','.join(good)})"
        if good
        else "pass --interface with the address of the LAN the peers are on"
    )
    findings = [
        f if f.fix or f.status == "pass" else Finding(f.check, f.status, f.summary, fix)
        for f in findings
    ]
    for iface in interfaces:
        mine = [a for a, _ in iface.addresses if a in chosen]
        if mine and len(iface.addresses) > 1:
            findings.append(
                Finding(
                    "interfaces",
                    "warn",
                    f"{iface.name} has {len(iface.addresses)} addresses "
                    f"({', '.join(a for a, _ in iface.addresses)}); meshq advertises "
                    f"{', '.join(mine)} and peers choose one on their own network",
                    "pass --interface with the one address peers should use",
                )
            )
    return findings


def check_multicast(
    interfaces: list[Interface], chosen: Sequence[str], routes: list[Route]
) -> list[Finding]:
    """A route for 224.0.0.0/4 (mDNS's group 224.0.0.251) through each chosen interface."""
    by_address = {address: iface for iface in interfaces for address, _ in iface.addresses}
    findings = []
    for address in chosen:
        iface = by_address.get(address)
        if iface is None:
            continue  # reported by the interfaces check
        if iface.kind == "loopback":
            findings.append(
                Finding("multicast", "pass", f"{address} is loopback: mDNS stays on this machine")
            )
            continue
        route = multicast_route(routes, iface.name)
        if route is not None:
            how = "the default route" if route.prefix_len == 0 else f"route {route.network}"
            findings.append(
                Finding("multicast", "pass", f"{iface.name} ({address}): 224.0.0.251 via {how}")
            )
        else:
            findings.append(
                Finding(
                    "multicast",
                    "warn",
                    f"{iface.name} ({address}) has no route for 224.0.0.0/4 (nor a default "
                    "route): meshq's mDNS names the interface on each socket and may still "
                    "work (see the mdns check), other mDNS software on this host will not",
                    f"ip route add 224.0.0.0/4 dev {iface.name}",
                )
            )
    return findings


def check_mdns(survey: MdnsSurvey, mesh: str, chosen: Sequence[str]) -> list[Finding]:
    """The probe came back; who else answers; which meshes are on the LAN."""
    where = ", ".join(chosen)
    if survey.error is not None:
        return [Finding("mdns", "fail", survey.error, "check that UDP port 5353 can be bound")]
    findings = []
    if survey.probe_seen:
        findings.append(
            Finding("mdns", "pass", f"announced a probe on {where} and browsed it back")
        )
    else:
        findings.append(
            Finding(
                "mdns",
                "fail",
                f"announced a probe on {where} but did not see it come back",
                "allow UDP 5353 to and from 224.0.0.251 in the host firewall",
            )
        )
    others = sorted(t.split(".")[0] for t in survey.types if not t.startswith("_meshq-doctor"))
    if survey.nodes or survey.other_probes or others:
        findings.append(
            Finding(
                "mdns",
                "pass",
                f"other mDNS responders seen: {len(survey.nodes)} meshq node(s), "
                f"{survey.other_probes} other doctor probe(s), service types: "
                f"{', '.join(others) or 'none'}",
            )
        )
    else:
        findings.append(
            Finding(
                "mdns",
                "warn",
                "no other mDNS responder answered: this host is alone on the LAN, or "
                "multicast does not get through",
                "run meshq doctor on a second host at the same time; if neither sees the "
                "other's probe, the switch or Wi-Fi drops multicast (IGMP snooping without "
                "a querier): use --seed",
            )
        )
    meshes: dict[str, list[str]] = {}
    for node in survey.nodes:
        meshes.setdefault(node.mesh, []).append(node.name)
    mine = meshes.pop(mesh, [])
    if mine:
        findings.append(
            Finding(
                "mdns", "pass", f"mesh {mesh!r}: {len(mine)} node(s): {', '.join(sorted(mine))}"
            )
        )
    if meshes:
        listed = "; ".join(
            f"{name!r} ({len(nodes)} node(s): {', '.join(sorted(nodes))})"
            for name, nodes in sorted(meshes.items())
        )
        findings.append(
            Finding(
                "mdns",
                "warn",
                f"other meshq meshes on this LAN: {listed}. Nodes join only their own mesh",
                f"start every node with the same --mesh (checked: {mesh!r})",
            )
        )
    if not mine:
        findings.append(
            Finding(
                "mdns",
                "warn",
                f"no node of mesh {mesh!r} seen on mDNS",
                "start a node, check --mesh, or join through --seed",
            )
        )
    if survey.unresolved:
        findings.append(
            Finding("mdns", "warn", f"{survey.unresolved} meshq record(s) did not resolve")
        )
    return findings


def check_reachability(
    survey: MdnsSurvey, mesh: str, timeout: float, seeds: Sequence[str] = ()
) -> list[Finding]:
    """Connect to every seed and every advertised control endpoint of the mesh's nodes."""
    from .security import split_seed

    findings = []
    answered = 0
    for seed in seeds:
        endpoint = split_seed(seed)[0]
        host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
        error = connect_error(host, int(port), timeout)
        if error is None:
            answered += 1
        else:
            findings.append(
                Finding(
                    "reachability",
                    "fail",
                    f"seed {endpoint} does not answer ({error})",
                    "check the seed's address and port, and that its node runs",
                )
            )
    for node in survey.nodes:
        if node.mesh != mesh:
            continue
        failures = []
        for address in node.addresses:
            error = connect_error(address, node.port, timeout)
            if error is None:
                answered += 1
            else:
                failures.append(f"tcp://{address}:{node.port} ({error})")
        if failures:
            some = len(failures) < len(node.addresses)
            findings.append(
                Finding(
                    "reachability",
                    "warn" if some else "fail",
                    f"{node.name} advertises endpoint(s) that do not answer: "
                    f"{', '.join(failures)}"
                    + ("; peers on its other networks still reach it" if some else ""),
                    f"start {node.name} with --interface set to the address peers can "
                    f"reach (or {ENV_INTERFACES})",
                )
            )
    if answered:
        findings.insert(0, Finding("reachability", "pass", f"{answered} endpoint(s) answered"))
    elif not findings:
        findings.append(Finding("reachability", "pass", f"no seed or node of mesh {mesh!r} seen"))
    return findings


def check_clocks(
    options: DoctorOptions, chosen: Sequence[str], survey: MdnsSurvey
) -> list[Finding]:
    """Skew of each peer's wall clock, from its introspection reply."""
    from .config import MeshConfig
    from .node import Node
    from .security import Curve

    seeds = list(options.seeds)
    for node in survey.nodes:
        if node.mesh == options.mesh and node.port:
            for address in node.addresses:
                if connect_error(address, node.port, options.connect_timeout) is None:
                    suffix = f"#{node.key}" if node.key and options.key else ""
                    seeds.append(f"tcp://{address}:{node.port}{suffix}")
                    break
    if not seeds:
        return [Finding("clocks", "pass", "no peer to compare clocks with")]
    if options.key is None and any(n.key for n in survey.nodes if n.mesh == options.mesh):
        return [
            Finding(
                "clocks",
                "warn",
                "the mesh runs with security: clocks not compared",
                "pass --key and --allow",
            )
        ]
    try:
        security = (
            None
            if options.key is None
            else Curve(
                options.key,
                allow=list(options.allow) if len(options.allow) != 1 else options.allow[0],
            )
        )
        probe = Node(
            "meshq-doctor",
            mesh=options.mesh,
            interfaces=list(chosen),
            seeds=seeds,
            discovery=False,
            security=security,
            config=MeshConfig(introspection=False),  # it asks; its own clock is not in question
        )
    except (ValueError, OSError, MeshqError) as exc:
        return [Finding("clocks", "warn", f"could not join the mesh to compare clocks: {exc}")]
    findings = []
    with probe:
        expected = len({s.partition("#")[0] for s in seeds})
        try:
            probe.wait_for_peers(expected, timeout=options.wait)
        except Timeout:
            pass  # compare with whoever joined
        names = {peer.id: peer.name for peer in probe.peers()}
        try:
            sent = time.time()
            result = probe.gather(INTROSPECT_SERVICE, None, timeout=options.wait)
            received = time.time()
        except NoProviders:
            return [
                Finding(
                    "clocks",
                    "warn",
                    f"none of {len(names)} peer(s) answers {INTROSPECT_SERVICE}: "
                    "clocks not compared",
                    "upgrade the peers' meshq, or leave MeshConfig(introspection=) on",
                )
            ]
        uncertainty = (received - sent) / 2
        for peer_id, reply in sorted(result.replies.items()):
            try:
                remote = parse_snapshot(reply)
            except IntrospectError as exc:
                findings.append(
                    Finding("clocks", "warn", f"{names.get(peer_id, peer_id[:8])}: {exc}")
                )
                continue
            skew = remote.time - (sent + received) / 2
            excess = abs(skew) - uncertainty
            status = "fail" if excess > SKEW_FAIL else "warn" if excess > SKEW_WARN else "pass"
            findings.append(
                Finding(
                    "clocks",
                    status,
                    f"{remote.name}: clock {skew:+.3f} s from ours (+/- {uncertainty:.3f} s)",
                    ""
                    if status == "pass"
                    else "run NTP (chrony or systemd-timesyncd) on both hosts",
                )
            )
        for peer_id in result.missing:
            findings.append(
                Finding(
                    "clocks", "warn", f"{names.get(peer_id, peer_id[:8])} did not answer in time"
                )
            )
    return findings


def check_keys(
    key: str | None, allow: Sequence[str], survey: MdnsSurvey, mesh: str
) -> list[Finding]:
    """The secret key file (mode, contents) and the allowlist (keys, bad files, peers left out)."""
    from .security import check_key, load_public_key, load_secret_key

    if key is None:
        if allow:
            return [Finding("keys", "fail", "--allow without --key", "pass --key SECRET_FILE")]
        secured = [n.name for n in survey.nodes if n.mesh == mesh and n.key]
        if secured:
            return [
                Finding(
                    "keys",
                    "warn",
                    f"no --key, but nodes of the mesh run with security: {', '.join(secured)}",
                    "pass --key and --allow to check them",
                )
            ]
        return [Finding("keys", "pass", "no --key given: security off")]
    findings = []
    try:
        public, _ = load_secret_key(key)
        findings.append(
            Finding(
                "keys",
                "pass",
                f"{key}: mode {os.stat(key).st_mode & 0o777:04o}, public key {public.decode()}",
            )
        )
    except KeyFileError as exc:
        findings.append(Finding("keys", "fail", str(exc), f"chmod 600 {key}, or meshq keygen anew"))
    allowed: set[bytes] = set()
    for source in allow:
        path = Path(source)
        if path.is_dir():
            files = sorted(path.glob("*.key"))
            for file in files:
                try:
                    allowed.add(load_public_key(file))
                except KeyFileError as exc:
                    findings.append(
                        Finding("keys", "warn", f"allowlist: {exc}", f"remove or fix {file}")
                    )
            findings.append(Finding("keys", "pass", f"allowlist {path}: {len(files)} .key file(s)"))
        else:
            try:
                allowed.add(check_key(source))
            except ValueError:
                findings.append(
                    Finding("keys", "fail", f"--allow {source!r} is neither a directory nor a key")
                )
    if not allowed:
        findings.append(
            Finding(
                "keys", "fail", "the allowlist admits nobody", "copy the peers' .key files into it"
            )
        )
    for node in survey.nodes:
        if node.mesh == mesh and node.key and node.key.encode() not in allowed:
            findings.append(
                Finding(
                    "keys",
                    "warn",
                    f"{node.name} announces key {node.key}, which the allowlist does not hold: "
                    "it will be refused",
                    "add its .key file to the allowlist if it belongs to the mesh",
                )
            )
    return findings


def check_ports(chosen: Sequence[str], ports: dict[str, int]) -> list[Finding]:
    """Each fixed port can be bound on each chosen address."""
    fixed = {role: port for role, port in ports.items() if port}
    if not fixed:
        return [Finding("ports", "pass", "no fixed port configured: each socket takes a free one")]
    findings = []
    for role, port in sorted(fixed.items()):
        problems = [(a, e) for a in chosen if (e := bind_error(a, port)) is not None]
        if problems:
            for address, error in problems:
                findings.append(
                    Finding(
                        "ports",
                        "fail",
                        f"{role} port {port} on {address}: {error}",
                        f"stop what holds it (ss -ltnp 'sport = :{port}') or choose another port",
                    )
                )
        else:
            findings.append(
                Finding("ports", "pass", f"{role} port {port} is free on {', '.join(chosen)}")
            )
    return findings


def format_findings(findings: Sequence[Finding], as_json: bool = False) -> str:
    """The report: one line per finding plus its fix, or a JSON array."""
    if as_json:
        return json.dumps([asdict(f) for f in findings], indent=2)
    lines = []
    for finding in findings:
        lines.append(f"{finding.status.upper():4}  {finding.check:12}  {finding.summary}")
        if finding.fix:
            lines.append(f"{'':4}  {'':12}  fix: {finding.fix}")
    counts = {s: sum(f.status == s for f in findings) for s in ("pass", "warn", "fail")}
    lines.append(f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail")
    return "\n".join(lines)
