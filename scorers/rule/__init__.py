"""Rule scorers: deterministic checks of a step's fields (schema, pattern, budgets, expected value)."""

from .checks import Contains, Equals, JsonSchema, MaxCostUsd, MaxLatencyMs, NotEmpty, Regex

__all__ = ["Contains", "Equals", "JsonSchema", "MaxCostUsd", "MaxLatencyMs", "NotEmpty", "Regex"]
