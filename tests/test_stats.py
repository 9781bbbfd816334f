"""Node.stats() holds every documented counter from the start (issue 10).

The README reads ``node.stats()["messages_missed"]``; on a fresh node that
raised KeyError, as counters appeared only once above 0. The documented
list is docs/PROTOCOL.md section 11: this test reads it from there.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import meshq

ROOT = Path(__file__).resolve().parent.parent


def documented_counters() -> set[str]:
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    start = text.index("Counters of the control plane are returned by")
    end = text.index("A relay's own counters", start)
    names = set(re.findall(r"`([a-z][a-z_]*)`", text[start:end]))
    config = {field.name for field in dataclasses.fields(meshq.MeshConfig)}
    return names - config  # `event_queue_size` is named there as a setting


def test_the_counter_list_is_the_documented_one() -> None:
    from meshq.node import STATS_COUNTERS

    assert set(STATS_COUNTERS) == documented_counters()


def test_a_fresh_node_reports_every_documented_counter_as_zero(mesh: str) -> None:
    documented = documented_counters()
    assert {"messages_missed", "protocol_errors", "requests_served", "rejected"} <= documented
    with meshq.Node("fresh", mesh=mesh, interfaces=["127.0.0.1"]) as node:
        stats = node.stats()
        assert node.stats()["messages_missed"] == 0  # the README's read
    assert documented <= set(stats), documented - set(stats)
    assert all(stats[name] == 0 for name in documented), stats
