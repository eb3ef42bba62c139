"""`evalsvc drift ...`: statistical baselines and drift reports."""

from __future__ import annotations
