"""Import every module of the installed meshq, and check none is missing.

    python check_installed.py SOURCE_ROOT

Run from outside the source tree by .ci/check-wheel: every ``.py`` under
SOURCE_ROOT/meshq and SOURCE_ROOT/patterns (shipped as meshq.patterns) must
import from site-packages. Exits 1 naming what is missing.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


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


def main(root: Path) -> int:
    import meshq

    location = Path(meshq.__file__).resolve()
    if root.resolve() in location.parents:
        print(f"meshq imported from the source tree ({location}), not the wheel")
        return 1
    walked = {"meshq"}
    for info in pkgutil.walk_packages(meshq.__path__, "meshq."):
        importlib.import_module(info.name)
        walked.add(info.name)
    missing = sorted(source_modules(root) - walked)
    if missing:
        print(f"not in the installed package: {', '.join(missing)}")
        return 1
    print(f"imported {len(walked)} modules from {location.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
