"""The operator's subcommands: ``meshq doctor``, ``meshq top``, ``meshq exporter``.

meshq doctor [--json]                 check this host and the LAN; pass/warn/fail with fixes
meshq top [--once [--json]]           a live view of every node of the mesh
meshq exporter --port 9464            the whole mesh as Prometheus metrics

``top`` needs the ``top`` extra (rich), ``exporter`` the ``exporter`` extra
(prometheus-client); both are imported only when their command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .node import Node

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
        )
        findings = run_doctor(options)
        print(format_findings(findings, as_json=args.json), flush=True)
        return 1 if any(f.status == "fail" for f in findings) else 0

    return {"doctor": run_doctor}
