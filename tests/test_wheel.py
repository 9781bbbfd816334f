"""The built wheel holds every module of the source tree (issue 10, point 1).

.ci/check-wheel goes further (installs the wheel in a fresh venv and runs it);
this catches a forgotten subpackage in every `make test`.
"""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_every_module_of_the_source_tree(tmp_path: Path) -> None:
    # A clean copy: setuptools reuses a build/ left by an earlier build,
    # which would hide a module missing from the package list.
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
        ),
    )
    wheels = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("meshq-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    shipped = {
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in files
        if name.endswith(".py")
    }
    source_modules = runpy.run_path(str(ROOT / ".ci" / "check_installed.py"))["source_modules"]
    expected: set[str] = source_modules(ROOT)
    assert {"meshq.durable", "meshq.relay.store", "meshq.patterns.sink"} <= expected
    assert expected - shipped == set()
    assert "meshq/py.typed" in files
    assert not any(name.startswith(("patterns/", "tests/")) for name in files)
