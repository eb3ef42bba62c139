"""Eval history alongside runs: SQL (DuckDB) and pandas over a per-project columnar replica.

- :mod:`.replica`: the project's DuckDB copy of the store, refreshed incrementally;
- :mod:`.query`: one read-only, project-scoped SELECT (``evalsvc query``, ``POST /v1/query``);
- :mod:`.frames`: pandas DataFrames for the common questions.

    >>> from evalsvc.analytics import frames
    >>> frames.failed_evaluator_report(project="demo", evaluator="invoice_extraction_schema")  # doctest: +SKIP
"""

from __future__ import annotations

from .query import BadQuery, QueryResult, QueryTimeout, run_query
from .replica import Freshness, refresh

# `frames` (pandas) is imported on use: `from evalsvc.analytics import frames`
__all__ = ["BadQuery", "Freshness", "QueryResult", "QueryTimeout", "refresh", "run_query"]
