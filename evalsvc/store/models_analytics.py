"""Store-side support for the analytics replica (``evalsvc.analytics``).

The replica copies what changed since its last refresh: new rows by id and changed rows by
``updated_at``. ``run`` already has an index on ``(project_id, updated_at)``; these two give
``step`` and ``action`` the same, so that the "changed since" read of a refresh is an index range
scan instead of a full scan of the table::

    SELECT ... FROM step WHERE project_id = :p AND updated_at >= :since
"""

from __future__ import annotations

import sqlalchemy as sa

from .models import Action, Step, table

__all__ = ["ix_action_project_updated", "ix_step_project_updated"]

_step, _action = table(Step), table(Action)

ix_step_project_updated = sa.Index("ix_step_project_updated", _step.c.project_id, _step.c.updated_at)
ix_action_project_updated = sa.Index("ix_action_project_updated", _action.c.project_id, _action.c.updated_at)
