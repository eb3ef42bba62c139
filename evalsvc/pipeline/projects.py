"""Projects (tenants) and their API keys. Only a key's SHA-256 is stored; the key is shown once.

>>> from evalsvc.pipeline.projects import hash_key
>>> len(hash_key("esk_example"))
64
"""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa
from sqlmodel import Session, select

from evalsvc.errors import InvalidInput, NotFound
from evalsvc.store.models import ApiKey, Project, utcnow

__all__ = ["create_key", "ensure_project", "get_project", "hash_key", "project_for_key", "revoke_key"]

KEY_PREFIX = "esk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_project(*, session: Session, name: str) -> Project:
    project = session.exec(select(Project).where(Project.name == name)).first()
    if project is None:
        names = sorted(p.name for p in session.exec(select(Project)).all())
        known = f"; projects: {', '.join(names)}" if names else "; no project exists yet"
        raise NotFound(f"no project named {name!r}{known}", field="project")
    return project


def ensure_project(*, session: Session, name: str) -> Project:
    """The project of that name, created on first use."""
    if not name or len(name) > 128:
        raise InvalidInput("must be 1 to 128 characters", field="project")
    project = session.exec(select(Project).where(Project.name == name)).first()
    if project is None:
        project = Project(name=name)
        session.add(project)
        try:
            with session.begin_nested():
                session.flush()
        except sa.exc.IntegrityError:  # created concurrently
            project = session.exec(select(Project).where(Project.name == name)).one()
    return project


def create_key(*, session: Session, project: Project, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key for the project: returns the row and the plaintext key (shown once)."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(project_id=project.id or 0, prefix=plaintext[:12], key_hash=hash_key(plaintext), name=name)
    session.add(row)
    session.flush()
    return row, plaintext


def revoke_key(*, session: Session, project: Project, prefix: str) -> ApiKey:
    rows = session.exec(
        select(ApiKey).where(ApiKey.project_id == project.id, ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
    ).all()
    if not rows:
        raise NotFound(f"no active key with prefix {prefix!r} in project {project.name!r}", field="prefix")
    for row in rows:
        row.revoked_at = utcnow()
        session.add(row)
    return rows[0]


def project_for_key(*, session: Session, key: str) -> Project | None:
    row = session.exec(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
    ).first()
    return session.get(Project, row.project_id) if row else None
