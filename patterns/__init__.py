"""Reusable patterns built on the public :class:`meshq.Node` API only.

Shipped as ``meshq.patterns``.
"""

from __future__ import annotations

from .pipeline import Pipeline, Result, Worker
from .publisher import AsyncPublisher, Publisher

__all__ = ["AsyncPublisher", "Pipeline", "Publisher", "Result", "Worker"]
