"""The operator's subcommands: ``meshq doctor``, ``meshq top``, ``meshq exporter``.

meshq doctor [--json]                 check this host and the LAN; pass/warn/fail with fixes
meshq top [--once [--json]]           a live view of every node of the mesh
meshq exporter --port 9464            the whole mesh as Prometheus metrics

``top`` needs the ``top`` extra (rich), ``exporter`` the ``exporter`` extra
(prometheus-client); both are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .node import Node

if TYPE_CHECKING:
    from .collector import Collector

__all__ = ["add_commands"]

Command = Callable[[argparse.Namespace], int]


def add_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    node_options: Callable[[argparse.ArgumentParser], None],
    make_node: Callable[[argparse.Namespace, str], Node],
) -> dict[str, Command]:
    """Add doctor, top and exporter to ``commands``; return their handlers by name."""
    doctor = commands.add_parser("doctor", help="check this host and the LAN for mesh trouble")
    node_options(doctor)
    doctor.add_argument("--publish-port", type=int, default=0, help="fixed publish port to check")
    doctor.add_argument("--service-port", type=int, default=0, help="fixed service port to check")
    doctor.add_argument("--wait", type=float, default=3.0, help="seconds per network step")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")

    def run_doctor(args: argparse.Namespace) -> int:
        from .doctor import DoctorOptions, format_findings, run_doctor

        options = DoctorOptions(
            mesh=args.mesh,
            interfaces=args.interfaces,
            seeds=args.seeds,
            key=args.key,
            allow=args.allow,
            ports={
                "control": args.port,
                "publish": args.publish_port,
                "service": args.service_port,
            },
            wait=args.wait,
            mdns=not args.no_mdns,
        )
        findings = run_doctor(options)
        print(format_findings(findings, as_json=args.json), flush=True)
        return 1 if any(f.status == "fail" for f in findings) else 0

    top = commands.add_parser("top", help="a live view of every node, topic, service and stream")
    node_options(top)
    _view_options(top)
    top.add_argument("--once", action="store_true", help="print one snapshot as tables and exit")
    top.add_argument("--json", action="store_true", help="with --once: print JSON instead")
    top.add_argument("--duration", type=float, default=None, help="stop after N seconds")

    exporter = commands.add_parser("exporter", help="serve the mesh as Prometheus metrics")
    node_options(exporter)
    _view_options(exporter)
    exporter.add_argument("--listen", default="127.0.0.1", help="address to serve on")
    for action in exporter._actions:  # here --port is the HTTP port; the node takes any free one
        if "--port" in action.option_strings:
            action.default, action.help = 9464, "HTTP port for /metrics (default: 9464)"
    exporter.add_argument("--duration", type=float, default=None, help="stop after N seconds")

    def run_top(args: argparse.Namespace) -> int:
        try:
            from .top import run_top
        except ImportError as exc:
            raise ValueError(f"meshq top needs rich: pip install 'meshq[top]' ({exc})") from None
        with _observer(args, make_node, "meshq-top") as collector:
            return run_top(
                collector,
                once=args.once,
                as_json=args.json,
                interval=args.interval,
                duration=args.duration,
            )

    def run_exporter(args: argparse.Namespace) -> int:
        try:
            from .exporter import run_exporter
        except ImportError as exc:
            raise ValueError(
                f"meshq exporter needs prometheus-client: pip install 'meshq[exporter]' ({exc})"
            ) from None
        node_args = argparse.Namespace(**{**vars(args), "port": 0})
        with _observer(node_args, make_node, "meshq-exporter") as collector:
            return run_exporter(
                collector,
                port=args.port,
                address=args.listen,
                interval=args.interval,
                duration=args.duration,
                on_ready=lambda: print(
                    f"serving http://{args.listen}:{args.port}/metrics", flush=True
                ),
            )

    return {"doctor": run_doctor, "top": run_top, "exporter": run_exporter}


def _view_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    parser.add_argument("--wait", type=float, default=2.0, help="seconds to find the mesh first")
    parser.add_argument("--expect", type=int, default=None, help="stop waiting once N peers seen")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds a node has to answer")


@contextlib.contextmanager
def _observer(
    args: argparse.Namespace, make_node: Callable[[argparse.Namespace, str], Node], name: str
) -> Iterator[Collector]:
    """A node that joins the mesh (waiting up to --wait s for --expect peers) to collect."""
    from .collector import Collector
    from .errors import Timeout

    with make_node(args, name) as node:
        try:
            node.wait_for_peers(args.expect or 1_000_000, timeout=args.wait)
        except Timeout:
            pass  # observe whoever is there
        yield Collector(node, timeout=args.timeout)
