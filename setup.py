"""The package list, found rather than written out (metadata is in setup.cfg).

setup.cfg alone cannot say "every package under meshq/, plus patterns/ as
meshq.patterns": ``packages = find:`` finds ``patterns`` under its own name.
Finding both here means a new subpackage cannot be left out of the wheel
(tests/test_wheel.py checks the built wheel against the source tree).
"""

from setuptools import find_packages, setup

core = find_packages(include=["meshq", "meshq.*"])
# patterns/ is installed as meshq.patterns (package_dir in setup.cfg).
patterns = ["meshq." + name for name in find_packages(include=["patterns", "patterns.*"])]

setup(packages=core + patterns)
