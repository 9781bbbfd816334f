"""``meshq top``: the mesh on one screen, refreshed every second (needs ``rich``).

Five tables, one under the other: nodes, topics, services, streams (with
their durable consumers as the relay sees them) and durable consumers as
the nodes running them count them. A row that is going wrong is drawn in
red with its reason in the ``!`` column: a node that did not answer or sees
a peer suspect, gaps that grew since the last refresh, a consumer whose lag
grew, a stream claimed by two relays. ``--once`` prints one snapshot as tables
(or ``--json``) and exits.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .collector import Collector, MeshView

__all__ = ["render", "run_top", "view_to_json"]


def view_to_json(view: MeshView) -> dict[str, Any]:
    """The view as plain JSON-able data (what ``--json`` prints)."""
    data = dataclasses.asdict(view)
    data.pop("snapshots")
    data["marked"] = view.marked
    return data


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.0f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


_NUMERIC = {
    "PUBLISHED", "MSG/S", "SUBS", "BEHIND", "GAPS", "MSGS", "BYTES", "DEAD", "LAG", "OUT",
    "SERVED", "REQ/S", "ERRORS", "P50 MS", "P99 MS", "MAX RTT MS", "DELIVERED", "ACKED",
    "PENDING", "BUFFERED", "RECV/S",
}  # fmt: skip


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for column in columns:
        if column == "!":  # the reason a row is marked: wrapped, never cut off
            table.add_column(column, min_width=16, overflow="fold")
            continue
        numeric = column in _NUMERIC
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    return table


def _row(table: Table, mark: str, *cells: str) -> None:
    table.add_row(*cells, mark, style="bold red" if mark else None)


def render(view: MeshView) -> Group:
    """The four tables of one view."""
    when = time.strftime("%H:%M:%S", time.localtime(view.taken_at))
    header = Text(
        f"meshq top  mesh {view.mesh!r}  {len(view.nodes)} node(s)  {when}"
        + (f"  not answering: {', '.join(view.missing)}" if view.missing else ""),
        style="bold",
    )
    nodes = _table(
        "nodes",
        "NODE",
        "ID",
        "VERSION",
        "UP",
        "PEERS",
        "PUBLISHED",
        "MSG/S",
        "MAX RTT MS",
        "GAPS",
        "SERVICES",
        "!",
    )
    for n in view.nodes:
        peers = f"{n.peers_alive}" + (f" ({n.peers_suspect} suspect)" if n.peers_suspect else "")
        rtt = "-" if n.rtt_max is None else f"{_ms(n.rtt_max)} {n.rtt_peer}"
        _row(
            nodes, n.mark, n.name, n.id[:8], n.version, _age(n.uptime), peers,
            f"{n.published:,}", _rate(n.publish_rate), rtt, f"{n.gaps:,}",
            ",".join(n.services) or "-",
        )  # fmt: skip
    for name in view.missing:
        _row(nodes, "did not answer", name, "", "", "", "", "", "", "", "", "")
    topics = _table(
        "topics", "TOPIC", "PUBLISHER", "PUBLISHED", "MSG/S", "SUBS", "RECV/S", "BEHIND", "GAPS",
        "!",
    )  # fmt: skip
    for t in view.topics:
        _row(
            topics, t.mark, t.topic, t.publisher, f"{t.published:,}", _rate(t.rate),
            str(t.subscribers), _rate(t.received_rate), f"{t.behind:,}", f"{t.gaps:,}",
        )  # fmt: skip
    services = _table(
        "services", "SERVICE", "PROVIDER", "SERVED", "REQ/S", "ERRORS", "P50 MS", "P99 MS", "!"
    )
    for sv in view.services:
        for call in sv.calls:
            _row(
                services, call.mark, sv.name, call.node, _count(call.served), _rate(call.rate),
                _count(call.errors), _ms(call.p50), _ms(call.p99),
            )  # fmt: skip
    streams = _table(
        "streams", "STREAM", "RELAY", "SEQ", "MSGS", "BYTES", "DEAD", "CONSUMER", "LAG", "OUT", "!"
    )
    for st in view.streams:
        _row(
            streams, st.mark, st.stream, st.relay, f"{st.first_seq}..{st.last_seq}",
            f"{st.messages:,}", f"{st.bytes:,}", f"{st.dead_letters:,}", "", "", "",
        )  # fmt: skip
        for c in st.consumers:
            _row(streams, c.mark, "", "", "", "", "", "", c.name, f"{c.lag:,}", str(c.outstanding))
    consumers = _table(
        "consumers", "NODE", "CONSUMER", "PREFIX", "STREAM", "DELIVERED", "MSG/S", "ACKED",
        "PENDING", "BUFFERED", "LAG", "!",
    )  # fmt: skip
    for own in view.consumers:
        _row(
            consumers, own.mark, own.node, own.name, own.prefix, own.stream or "(no relay)",
            f"{own.delivered:,}", _rate(own.rate), f"{own.acked:,}", f"{own.pending:,}",
            f"{own.buffered:,}", _count(own.lag),
        )  # fmt: skip
    parts: list[Any] = [header, nodes, topics, services, streams, consumers]
    parts += [Text(f"error: {error}", style="red") for error in view.errors]
    return Group(*parts)


def run_top(
    collector: Collector,
    *,
    once: bool = False,
    as_json: bool = False,
    interval: float = 1.0,
    duration: float | None = None,
    console: Console | None = None,
) -> int:
    """Show the mesh: once (two collects ``interval`` s apart, for rates) or live.

    Live, it refreshes every ``interval`` s until Ctrl-C or ``duration`` s.
    Returns the exit status: 0.
    """
    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: do not cut columns at 80
            console = Console(width=200)
    stop = threading.Event()  # waits between refreshes; nothing else sets it
    if once:
        collector.collect()
        stop.wait(interval)
        view = collector.collect()
        if as_json:
            console.print_json(json.dumps(view_to_json(view)))
        else:
            console.print(render(view))
        return 0
    from rich.live import Live

    deadline = None if duration is None else time.monotonic() + duration
    with Live(
        render(collector.collect()), console=console, screen=True, auto_refresh=False
    ) as live:
        while deadline is None or time.monotonic() < deadline:
            stop.wait(
                interval
                if deadline is None
                else min(interval, max(0.0, deadline - time.monotonic()))
            )
            live.update(render(collector.collect()), refresh=True)
    return 0
