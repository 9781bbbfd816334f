"""Runs the decoder fuzz harness for a bounded number of inputs, as CI does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fuzz.fuzz_decoders import random_loop

HARNESS = Path(__file__).with_name("fuzz_decoders.py")


def test_decoders_survive_the_fuzzer() -> None:
    # A process of its own: atheris.Fuzz() ends the process it runs in.
    result = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            "-runs=500000",
            "-max_len=1024",
            "-len_control=0",  # long inputs from the start, not after a warm-up
            "-max_total_time=30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_decoders_survive_random_bytes() -> None:
    random_loop(5000, seed=1)  # the fallback's loop, in-process, so it is checked too
