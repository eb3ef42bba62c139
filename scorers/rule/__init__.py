"""Rule scorers: deterministic checks of a step's fields (schema and model validity, patterns,
expected values, lengths and labels, budgets, tool calls, refusals, personal data, expressions)."""

from .checks import Contains, Equals, JsonSchema, MaxCostUsd, MaxLatencyMs, NotEmpty, Regex
from .expression import Expression
from .pii import Pii
from .refusal import Refusal
from .text import AllowedLabels, Length
from .tools import ToolArguments, ToolCalled
from .values import MaxTokens, NumericTolerance, PydanticModel

__all__ = [
    "AllowedLabels",
    "Contains",
    "Equals",
    "Expression",
    "JsonSchema",
    "Length",
    "MaxCostUsd",
    "MaxLatencyMs",
    "MaxTokens",
    "NotEmpty",
    "NumericTolerance",
    "Pii",
    "PydanticModel",
    "Refusal",
    "Regex",
    "ToolArguments",
    "ToolCalled",
]
