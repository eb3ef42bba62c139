"""evalsvc: production evals beside the workflow orchestrator.

Ingest step-level execution records, grade them, keep runs, steps and verdicts together, and act
on failures (retry, pause, review, webhook). Start with ``evalsvc demo``; see ``docs/``.
"""

import os

# litellm fetches a remote price map at import unless told not to; evalsvc never reaches out.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"
__all__ = ["__version__"]
