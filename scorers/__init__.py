"""Scorers: grade a step's output. Rule-based here; statistical and LLM judges join them.

>>> from scorers import available
>>> sorted(available())[:3]
['contains', 'equals', 'json_schema']
"""

from .base import BaseScorer, Scorer, as_text, get_field
from .registry import available, create, get, register

__all__ = ["BaseScorer", "Scorer", "as_text", "available", "create", "get", "get_field", "register"]
