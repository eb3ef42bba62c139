"""The Python client of evalsvc for workflow code: wait for a step's verdict before going on."""

from __future__ import annotations
