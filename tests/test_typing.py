"""The documented calls type-check under mypy --strict without casts (issue 10).

examples/typed_orders.py is the typed application: it must pass ``mypy
--strict`` with no ``# type: ignore``, ``cast`` or ``Any``, and the
annotations it relies on must be the ones mypy infers (a wrong one fails).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "typed_orders.py"


def mypy_strict(path: Path) -> subprocess.CompletedProcess[str]:
    # Ignores in meshq itself that this mypy finds unneeded are the library's
    # business (setup.cfg allows them, for other pyzmq versions): not judged here.
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-warn-unused-ignores", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_typed_example_needs_no_casts_under_strict_mypy() -> None:
    source = EXAMPLE.read_text()
    for escape in ("type: ignore", "cast(", "Any", "assert isinstance"):
        assert escape not in source
    result = mypy_strict(EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_annotation_of_a_documented_call_fails(tmp_path: Path) -> None:
    # Proof that the check above can fail: the overloads make these errors.
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "import meshq\n"
        "node = meshq.Node()\n"
        'seq: None = node.publish("orders/1", 1, durable=True)\n'
        'plain: int = node.publish("news/1", 1)\n'
        'sub: meshq.DurableSubscription = node.subscribe("news/")\n'
    )
    result = mypy_strict(wrong)
    assert result.returncode == 1
    for line in (3, 4, 5):
        assert f"wrong.py:{line}: error" in result.stdout, result.stdout
