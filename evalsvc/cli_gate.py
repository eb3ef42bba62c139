"""`evalsvc gate` and `evalsvc baseline`: the CI gate."""

from __future__ import annotations
