"""The results store: runs, steps, evaluators, verdicts, actions and reviews, together."""

from .db import get_engine, migrate, session_scope, write_session
from .models import Action, ApiKey, EvalResult, Evaluator, Project, ReviewItem, Run, Step

__all__ = [
    "Action",
    "ApiKey",
    "EvalResult",
    "Evaluator",
    "Project",
    "ReviewItem",
    "Run",
    "Step",
    "get_engine",
    "migrate",
    "session_scope",
    "write_session",
]
