"""Reusable patterns built on the public :class:`meshq.Node` API only.

Shipped as ``meshq.patterns``.
"""

from __future__ import annotations

from .pipeline import Pipeline, Result, Worker
from .publisher import Publisher

__all__ = ["Pipeline", "Publisher", "Result", "Worker"]
