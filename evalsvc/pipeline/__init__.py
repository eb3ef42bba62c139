"""Use cases: the only code that writes to the store (ingest, schedule, score, remediate)."""
