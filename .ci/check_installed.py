"""Import every module of the installed meshq, and check none is missing.

    python check_installed.py SOURCE_ROOT [--extras-installed]

Run from outside the source tree by .ci/check-wheel: every ``.py`` under
SOURCE_ROOT/meshq and SOURCE_ROOT/patterns (shipped as meshq.patterns) must
import from site-packages. Without ``--extras-installed`` a module may fail
only for want of an optional extra's package (``OPTIONAL``: the exporter
needs prometheus-client, say); with it, every module must import. Exits 1
naming what is missing.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

#: Packages of the optional extras (setup.cfg): import name -> extra.
OPTIONAL = {"rich": "top", "prometheus_client": "exporter", "nats": "jetstream"}


def source_modules(root: Path) -> set[str]:
    """Dotted names of the modules in the source tree, as installed."""
    names = set()
    for package, installed_as in (("meshq", "meshq"), ("patterns", "meshq.patterns")):
        base = root / package
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.add(".".join([installed_as, *parts]))
    return names


def main(root: Path, extras_installed: bool) -> int:
    import meshq

    location = Path(meshq.__file__).resolve()
    if root.resolve() in location.parents:
        print(f"meshq imported from the source tree ({location}), not the wheel")
        return 1
    walked = {"meshq"}
    needs_extra: dict[str, str] = {}
    for info in pkgutil.walk_packages(meshq.__path__, "meshq."):
        walked.add(info.name)
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").partition(".")[0]
            if extras_installed or missing not in OPTIONAL:
                raise
            needs_extra[info.name] = OPTIONAL[missing]
    missing_modules = sorted(source_modules(root) - walked)
    if missing_modules:
        print(f"not in the installed package: {', '.join(missing_modules)}")
        return 1
    extras = "".join(f", {name} needs meshq[{extra}]" for name, extra in needs_extra.items())
    print(f"imported {len(walked) - len(needs_extra)} modules from {location.parent}{extras}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), "--extras-installed" in sys.argv[2:]))
