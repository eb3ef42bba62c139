"""Statistical baselines: fit one from the store's history of a target, version it, store it, load it.

Fitting reads the steps of a target (globs over source, workflow, step name, kind, status, model
and attributes) in a time window or a pinned set of runs, samples at most
``EVALSVC_DRIFT_MAX_SAMPLE`` of them deterministically, and stores the fitted state (JSON) as a
new version of the named baseline. It runs off the request path (``evalsvc drift fit``); scoring
only loads a version, by number, by pin, or the latest::

    >>> from evalsvc.pipeline.baselines import BaselineTarget, HistoryWindow, fit_baseline  # doctest: +SKIP
    >>> row = fit_baseline(engine=engine, project_id=1, name="extract_prod",  # doctest: +SKIP
    ...                    target=BaselineTarget(step="extract_invoice"), window=HistoryWindow(),
    ...                    spec=ProfileSpec(), settings=settings)
    >>> row.version  # doctest: +SKIP
    1
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from evalsvc.errors import InvalidInput, NotFound
from evalsvc.schemas import RUN_STEP_KEY, TERMINAL_STEP_STATUSES, StepPublic
from evalsvc.settings import Settings
from evalsvc.store.db import write_session
from evalsvc.store.models import Run, Step, table
from evalsvc.store.models_stats import StatBaseline
from evalsvc.store.sql import chunks
from evalsvc.times import as_utc
from scorers.stats import NeedsBaseline, Profile, ProfileSpec, fit_profile

from .run_evals import RUN_STEP_KIND

__all__ = [
    "BaselineConfig",
    "BaselinePublic",
    "BaselineTarget",
    "HistorySpec",
    "HistoryWindow",
    "bind_baseline",
    "fit_baseline",
    "list_baselines",
    "load_profile",
    "parse_baselines",
    "parse_duration",
    "pin_baseline",
    "resolve_baseline",
    "select_steps",
]

logger = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")
_GLOB_CHARS = re.compile(r"[*?\[]")


def _glob_matcher(pattern: str) -> Any:
    return re.compile(fnmatch.translate(pattern)).match


class BaselineTarget(BaseModel):
    """Which steps a baseline describes (globs; a field left out matches everything)."""

    model_config = ConfigDict(extra="forbid")
    source: str | None = None
    workflow: str | None = None
    step: str | None = None
    kind: str | None = None
    status: str | None = None
    model: str | None = Field(default=None, description="The step's model (version), e.g. `gpt-4o-2024-08-06`.")
    attributes: dict[str, str] = Field(default_factory=dict)

    def merged(self, **overrides: Any) -> BaselineTarget:
        """This target with some fields replaced (``None`` leaves a field as it is)."""
        data = self.model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return BaselineTarget.model_validate(data)


class HistoryWindow(BaseModel):
    """Which history: steps that ended in ``[since, until)``, and/or those of a pinned set of runs."""

    model_config = ConfigDict(extra="forbid")
    since: datetime | None = None
    until: datetime | None = None
    runs: list[str] = Field(default_factory=list, description="Pinned run keys.")

    @field_validator("since", "until")
    @classmethod
    def _utc_and_order(cls, value: datetime | None, info: Any) -> datetime | None:
        value = as_utc(value)  # a time without a zone is UTC
        since = info.data.get("since")
        if info.field_name == "until" and value is not None and since is not None and value <= since:
            raise ValueError("must be after since")
        return value


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d``, ``2w`` as a timedelta."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError("must look like 30m, 24h or 7d")
    return timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})


class HistorySpec(BaseModel):
    """A history as written in ``evalsvc.yaml``: ``since``/``until``, or ``last`` (``7d``), and/or ``runs``."""

    model_config = ConfigDict(extra="forbid")
    since: datetime | None = None
    until: datetime | None = None
    last: str | None = Field(default=None, description="The last 30m, 24h, 7d... up to `until` (default: now).")
    runs: list[str] = Field(default_factory=list)

    @field_validator("last")
    @classmethod
    def _last(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    def window(self, *, now: datetime) -> HistoryWindow:
        until = as_utc(self.until)
        since = as_utc(self.since)
        if self.last is not None:
            if since is not None:
                raise InvalidInput("give since or last, not both", field="last")
            until = until or now
            since = until - parse_duration(self.last)
        try:
            return HistoryWindow(since=since, until=until, runs=self.runs)
        except ValidationError as exc:
            e = exc.errors(include_url=False)[0]
            raise InvalidInput(e["msg"].removeprefix("Value error, "), field=str(e["loc"][0])) from None


class BaselineConfig(ProfileSpec):
    """One item of the ``baselines`` list of ``evalsvc.yaml``: what ``evalsvc drift fit --config`` fits."""

    name: str
    target: BaselineTarget = Field(default_factory=BaselineTarget)
    history: HistorySpec = Field(default_factory=HistorySpec)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must start with a letter and use letters, digits, '_', '.', '-'")
        return value

    def spec(self) -> ProfileSpec:
        return ProfileSpec.model_validate(self.model_dump(include=set(ProfileSpec.model_fields)))


def parse_baselines(text: str, *, source: str = "evalsvc.yaml") -> list[BaselineConfig]:
    """The ``baselines`` list of an evaluator file; errors name the path, e.g. ``baselines.0.target``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source} is not valid YAML: {exc}", field="baselines") from None
    items = data.get("baselines") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise InvalidInput(f"{source} has no list under the key 'baselines'", field="baselines")
    out: list[BaselineConfig] = []
    for i, item in enumerate(items):
        try:
            config = BaselineConfig.model_validate(item)
        except ValidationError as exc:
            e = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in ("baselines", i, *e["loc"]))
            raise InvalidInput(e["msg"].removeprefix("Value error, "), field=loc) from None
        if config.name in {c.name for c in out}:
            raise InvalidInput(f"duplicate baseline name {config.name!r}", field=f"baselines.{i}.name")
        out.append(config)
    return out


class BaselinePublic(BaseModel):
    id: int
    name: str
    version: int
    current: bool = Field(description="The version that scorers and checks use when none is named.")
    pinned: bool
    target: dict[str, Any]
    window: dict[str, Any]
    spec: dict[str, Any]
    n_steps: int
    digest: str
    created_at: datetime
    anomaly_features: list[str] = Field(default_factory=list, description="Features of the anomaly model, if any.")
    anomaly_min_p: float | None = Field(
        default=None, description="The smallest p-value the anomaly model can give: an alpha below it never flags."
    )


# ---- reading history ----------------------------------------------------------------------------

_STEP_COLS = tuple(f for f in StepPublic.model_fields if f not in ("source", "run_key", "workflow"))


def _ended(s: sa.Table) -> Any:
    return sa.func.coalesce(s.c.ended_at, s.c.started_at, s.c.created_at)


def select_steps(
    *, engine: Engine, project_id: int, target: BaselineTarget, window: HistoryWindow, limit: int, seed: int
) -> tuple[list[StepPublic], int]:
    """The finished steps of a target in a window (at most ``limit``, drawn deterministically) and
    how many there were in all."""
    s, r = table(Step), table(Run)
    where: list[Any] = [s.c.project_id == project_id]
    if target.kind != RUN_STEP_KIND:  # run steps (run-level evaluators) only when the target asks for them
        where.append(s.c.step_key != RUN_STEP_KEY)
    for column, pattern in ((s.c.name, target.step), (s.c.kind, target.kind), (s.c.model, target.model),
                            (r.c.workflow, target.workflow), (r.c.source, target.source)):  # fmt: skip
        if pattern is not None and not _GLOB_CHARS.search(pattern):
            where.append(column == pattern)  # exact: let the database filter
    if target.status is None:
        where.append(s.c.status.in_(sorted(TERMINAL_STEP_STATUSES)))
    if window.since is not None:
        where.append(_ended(s) >= window.since)
    if window.until is not None:
        where.append(_ended(s) < window.until)
    if window.runs:
        where.append(r.c.run_key.in_(window.runs))
    globs = [
        (i, _glob_matcher(p))
        for i, p in enumerate((target.step, target.kind, target.model, target.workflow, target.source, target.status))
        if p is not None
    ]
    attrs = [(k, _glob_matcher(p)) for k, p in target.attributes.items()]
    q = (
        sa.select(s.c.id, s.c.name, s.c.kind, s.c.model, r.c.workflow, r.c.source, s.c.status, s.c.attributes)
        .join(r, r.c.id == s.c.run_id)
        .where(*where)
        .order_by(s.c.id)
    )
    ids: list[int] = []
    with engine.connect() as conn:
        for row in conn.execute(q):
            values = row[1:7]
            if any(values[i] is None or m(values[i]) is None for i, m in globs):
                continue
            if attrs:
                a = row.attributes or {}
                if any(a.get(k) is None or m(str(a.get(k))) is None for k, m in attrs):
                    continue
            ids.append(row.id)
        total = len(ids)
        if total > limit:
            ids = sorted(np.random.default_rng(seed).choice(ids, size=limit, replace=False).tolist())
        steps: list[StepPublic] = []
        cols = [s.c[c] for c in _STEP_COLS]
        for part in chunks(ids, 2000):
            q2 = sa.select(*cols, r.c.source, r.c.run_key, r.c.workflow).join(r, r.c.id == s.c.run_id)
            for full in conn.execute(q2.where(s.c.id.in_(part)).order_by(s.c.id)):
                data = dict(full._mapping)
                data["attributes"] = data["attributes"] or {}
                steps.append(StepPublic.model_validate(data))
    return steps, total


# ---- fitting and versions -----------------------------------------------------------------------


def _digest(state: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(state, option=orjson.OPT_SORT_KEYS)).hexdigest()


def fit_baseline(
    *,
    engine: Engine,
    project_id: int,
    name: str,
    target: BaselineTarget,
    window: HistoryWindow,
    spec: ProfileSpec,
    settings: Settings,
    pin: bool = False,
) -> BaselinePublic:
    """Fit a new version of the baseline ``name`` on the target's history and store it."""
    if not _NAME.match(name):
        raise InvalidInput("must start with a letter and use letters, digits, '_', '.', '-'", field="name")
    steps, total = select_steps(engine=engine, project_id=project_id, target=target, window=window,
                                limit=settings.drift_max_sample, seed=settings.drift_seed)  # fmt: skip
    if not steps:
        raise InvalidInput("no finished steps of the target in that history; nothing to fit", field="target")
    state = fit_profile(steps, spec=spec, seed=settings.drift_seed, n_total=total)
    if spec.anomaly and state["anomaly"] is None:
        logger.info("baseline %s: too few steps with anomaly features for a model", name)
    with write_session(engine) as session:
        last = session.execute(
            sa.select(sa.func.max(table(StatBaseline).c.version)).where(
                table(StatBaseline).c.project_id == project_id, table(StatBaseline).c.name == name
            )
        ).scalar()
        if pin:
            _unpin(session, project_id, name)
        row = StatBaseline(
            project_id=project_id,
            name=name,
            version=(last or 0) + 1,
            target=target.model_dump(exclude_defaults=True),
            window=window.model_dump(mode="json", exclude_defaults=True),
            spec=spec.model_dump(),
            state=state,
            digest=_digest(state),
            n_steps=total,
            pinned=pin,
        )
        session.add(row)
        session.flush()
        current = _current_version(session, project_id, name)
        return _public(row, current)


def _unpin(session: Session, project_id: int, name: str) -> None:
    b = table(StatBaseline)
    session.execute(sa.update(b).where(b.c.project_id == project_id, b.c.name == name).values(pinned=False))


def _current_version(session: Session, project_id: int, name: str) -> int | None:
    b = table(StatBaseline)
    pinned = session.execute(
        sa.select(b.c.version).where(b.c.project_id == project_id, b.c.name == name, b.c.pinned == sa.true())
    ).scalar()
    if pinned is not None:
        return int(pinned)
    last = session.execute(
        sa.select(sa.func.max(b.c.version)).where(b.c.project_id == project_id, b.c.name == name)
    ).scalar()
    return None if last is None else int(last)


def _public(row: StatBaseline, current: int | None) -> BaselinePublic:
    anomaly = row.state.get("anomaly") or {}
    calibration = int(anomaly.get("n", 0)) - int(anomaly.get("n", 0)) // 2  # the half that calibrates
    return BaselinePublic(
        anomaly_features=list(anomaly.get("features", [])),
        anomaly_min_p=1 / (calibration + 1) if anomaly else None,
        id=row.id or 0,
        name=row.name,
        version=row.version,
        current=row.version == current,
        pinned=row.pinned,
        target=row.target,
        window=row.window,
        spec=row.spec,
        n_steps=row.n_steps,
        digest=row.digest,
        created_at=row.created_at,
    )


def resolve_baseline(*, session: Session, project_id: int, name: str, version: int | None = None) -> StatBaseline:
    """A version of a baseline: the one named, else the pinned one, else the latest."""
    if version is None:
        version = _current_version(session, project_id, name)
    row = (
        session.exec(
            select(StatBaseline).where(
                StatBaseline.project_id == project_id, StatBaseline.name == name, StatBaseline.version == version
            )
        ).first()
        if version is not None
        else None
    )
    if row is None:
        names = sorted(set(session.exec(select(StatBaseline.name).where(StatBaseline.project_id == project_id))))
        known = f"; baselines: {', '.join(names)}" if names else "; fit one with `evalsvc drift fit`"
        what = f"no version {version} of baseline {name!r}" if version is not None else f"no baseline named {name!r}"
        raise NotFound(what + known, field="baseline")
    return row


def pin_baseline(*, session: Session, project_id: int, name: str, version: int | None) -> BaselinePublic | None:
    """Pin a version (scorers and checks use it until unpinned, whatever is fitted later);
    ``version=None`` unpins, so the latest version is current again."""
    if version is None:
        resolve_baseline(session=session, project_id=project_id, name=name)
        _unpin(session, project_id, name)
        return None
    row = resolve_baseline(session=session, project_id=project_id, name=name, version=version)
    _unpin(session, project_id, name)
    row.pinned = True
    session.add(row)
    session.flush()
    return _public(row, version)


def list_baselines(*, session: Session, project_id: int, name: str | None = None) -> list[BaselinePublic]:
    """Every version of every baseline (or of one), newest first."""
    q = select(StatBaseline).where(StatBaseline.project_id == project_id)
    if name is not None:
        q = q.where(StatBaseline.name == name)
    b = table(StatBaseline)
    rows = session.exec(q.order_by(b.c.name, b.c.version.desc())).all()
    current = {n: _current_version(session, project_id, n) for n in {r.name for r in rows}}
    return [_public(r, current[r.name]) for r in rows]


# ---- loading for scoring ------------------------------------------------------------------------

_PROFILES: OrderedDict[str, Profile] = OrderedDict()
_profiles_lock = threading.Lock()
_MAX_PROFILES = 32


def load_profile(row: StatBaseline) -> Profile:
    """The fitted profile of a stored version; cached by content digest (a version never changes)."""
    with _profiles_lock:
        profile = _PROFILES.get(row.digest)
        if profile is not None:
            _PROFILES.move_to_end(row.digest)
            return profile
    profile = Profile(row.state)
    with _profiles_lock:
        _PROFILES[row.digest] = profile
        while len(_PROFILES) > _MAX_PROFILES:
            _PROFILES.popitem(last=False)
    return profile


def bind_baseline(*, engine: Engine, project_id: int, scorer: Any) -> Any:
    """Hand a scorer that needs a baseline its fitted version (other scorers come back as they are).

    Without a fitted baseline the scorer stays unbound and reports ``skipped``."""
    if not isinstance(scorer, NeedsBaseline):
        return scorer
    name, version = scorer.baseline_ref()
    with Session(engine) as session:
        try:
            row = resolve_baseline(session=session, project_id=project_id, name=name, version=version)
        except NotFound:
            return scorer
    profile = load_profile(row)
    _ = profile.anomaly  # fit the model now, once, rather than in concurrent scorer threads
    return scorer.with_baseline(profile, version=row.version)


def steps_by_index(steps: Sequence[StepPublic], indices: Sequence[int]) -> list[dict[str, Any]]:
    """Links to example steps: run and step ids and keys."""
    return [
        {
            "run_id": steps[i].run_id,
            "run_key": steps[i].run_key,
            "step_id": steps[i].id,
            "step_key": steps[i].step_key,
            "attempt": steps[i].attempt,
        }
        for i in indices
    ]
