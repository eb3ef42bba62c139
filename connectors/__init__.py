"""Connectors: translate an orchestrator's payload into step records. Pure: no I/O, no store.

>>> from connectors import get
>>> get("json").to_steps([{"source": "json", "run_key": "r", "step_key": "s"}])
[{'source': 'json', 'run_key': 'r', 'step_key': 's'}]
"""

from .base import Connector, available, get, register

__all__ = ["Connector", "available", "get", "register"]
