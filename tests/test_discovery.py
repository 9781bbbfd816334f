"""mDNS discovery on a busy LAN: records that went away never hold up the others.

The scenario (tests/discovery_busy_lan.py) runs in a network namespace of
its own, with real mDNS on its 127.0.0.1: the pointers it announces to
services nobody answers for reach no other browser on this machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import Network, can_make_namespaces

SCENARIO = str(Path(__file__).with_name("discovery_busy_lan.py"))
VANISHED = 40  # records nobody answers for; resolved one after another: 120 s


def test_records_that_went_away_do_not_hold_up_a_new_node() -> None:
    if not can_make_namespaces():
        pytest.skip("network namespaces need root and iproute2")
    with Network(0, [[]]) as host:  # one host: its own loopback, nothing else
        run = subprocess.run(
            host.argv(0, [sys.executable, SCENARIO, "--vanished", str(VANISHED), "--wait", "60"]),
            capture_output=True,
            text=True,
            timeout=110,
            check=False,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["one_gave_up"], result  # the vanished records were being resolved
    assert result["found_b"], result
    # b was found while resolves of vanished records were still going on:
    # they no longer run one after the other ahead of it.
    assert result["gave_up_when_b_found"] < VANISHED, result
    assert result["threads_left"] == [], result  # closing ended every resolve
