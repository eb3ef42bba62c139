"""Evaluators as code: read ``evalsvc.yaml``, validate it, and apply it to a project.

The file is the source of truth: an evaluator whose definition changed gets a new version (old
results keep theirs), an unchanged one is left alone, and one no longer in the file is deactivated::

    >>> from evalsvc.pipeline.evaluators import parse_config
    >>> specs = parse_config("evaluators:\\n  - {name: not_blank, scorer: not_empty}\\n")
    >>> specs[0].name, len(specs[0].version())
    ('not_blank', 12)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError
from sqlmodel import Session, select

from evalsvc.errors import InvalidInput
from evalsvc.schemas import EvaluatorSpec
from evalsvc.settings import Settings
from evalsvc.store.models import Evaluator
from scorers.registry import create

from .webhooks import check_url

__all__ = ["ApplyChange", "apply_evaluators", "load_config", "parse_config", "parse_specs"]


@dataclass(frozen=True, slots=True)
class ApplyChange:
    name: str
    version: str
    change: Literal["created", "updated", "unchanged", "deactivated"]

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "change": self.change}


def parse_config(text: str, *, source: str = "evalsvc.yaml") -> list[EvaluatorSpec]:
    """Parse and validate an evaluator file; errors name the path, e.g. ``evaluators.2.params.schema``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source} is not valid YAML: {exc}", field="evaluators") from None
    if not isinstance(data, dict) or not isinstance(data.get("evaluators"), list):
        raise InvalidInput(f"{source} must hold a list under the key 'evaluators'", field="evaluators")
    return parse_specs(data["evaluators"])


def parse_specs(items: list[Any]) -> list[EvaluatorSpec]:
    specs: list[EvaluatorSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        try:
            spec = EvaluatorSpec.model_validate(item)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in ("evaluators", i, *err["loc"]))
            raise InvalidInput(err["msg"].removeprefix("Value error, "), field=loc) from None
        if spec.name in seen:
            raise InvalidInput(f"duplicate evaluator name {spec.name!r}", field=f"evaluators.{i}.name")
        seen.add(spec.name)
        try:
            create(spec.scorer, spec.params)
        except InvalidInput as exc:
            raise InvalidInput(exc.message.split(": ", 1)[-1], field=f"evaluators.{i}.{exc.field}") from None
        except Exception as exc:  # UnknownScorer and friends
            raise InvalidInput(str(exc).split(": ", 1)[-1], field=f"evaluators.{i}.scorer") from None
        specs.append(spec)
    names = {s.name for s in specs}
    for i, spec in enumerate(specs):
        fallback = spec.budget.fallback
        if fallback is not None and fallback not in names:
            raise InvalidInput(
                f"fallback evaluator {fallback!r} is not defined in this file", field=f"evaluators.{i}.budget.fallback"
            )
    return specs


def load_config(path: Path) -> list[EvaluatorSpec]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="file") from None
    return parse_config(text, source=str(path))


def apply_evaluators(
    *, session: Session, project_id: int, specs: list[EvaluatorSpec], settings: Settings, prune: bool = True
) -> list[ApplyChange]:
    """Store the definitions as versions; deactivate evaluators missing from ``specs`` when ``prune``."""
    for i, spec in enumerate(specs):
        if spec.on_fail.action == "webhook" and settings.webhook_secret is None:
            raise InvalidInput("needs EVALSVC_WEBHOOK_SECRET (whsec_<base64>) to sign its webhooks; set it first",
                               field=f"evaluators.{i}.on_fail")  # fmt: skip
        if spec.on_fail.action == "webhook" and spec.on_fail.url:
            try:
                check_url(
                    spec.on_fail.url,
                    allow_private=settings.webhook_allow_private,
                    allow_networks=settings.webhook_allow_networks,
                )
            except InvalidInput as exc:
                raise InvalidInput(exc.message.split(": ", 1)[-1], field=f"evaluators.{i}.on_fail.url") from None
    rows = session.exec(select(Evaluator).where(Evaluator.project_id == project_id)).all()
    by_key = {(r.name, r.version): r for r in rows}
    changes: list[ApplyChange] = []
    wanted: set[tuple[str, str]] = set()
    for spec in specs:
        version = spec.version()
        wanted.add((spec.name, version))
        row = by_key.get((spec.name, version))
        had_other = any(r.name == spec.name and r.active and r.version != version for r in rows)
        if row is not None and row.active and not had_other:
            changes.append(ApplyChange(spec.name, version, "unchanged"))
            continue
        if row is None:
            row = Evaluator(
                project_id=project_id,
                name=spec.name,
                version=version,
                scorer=spec.scorer,
                definition=spec.model_dump(mode="json"),
                active=True,
            )
        row.active = True
        row.definition = spec.model_dump(mode="json")  # the description may have changed
        session.add(row)
        existed = any(r.name == spec.name for r in rows)
        changes.append(ApplyChange(spec.name, version, "updated" if existed else "created"))
    for r in rows:
        if r.active and (r.name, r.version) not in wanted:
            if not prune and r.name not in {s.name for s in specs}:
                continue
            r.active = False
            session.add(r)
            if r.name not in {s.name for s in specs}:
                changes.append(ApplyChange(r.name, r.version, "deactivated"))
    session.flush()
    return changes
