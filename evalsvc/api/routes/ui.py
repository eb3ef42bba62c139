"""The web UI (docs/ui.md): sign-in with an API key, runs, a run's timeline, failed evals, the review
queue and evaluators. Server-rendered HTML; every page is scoped to the signed-in key's project.

The sign-in cookie holds the key (HttpOnly, SameSite=Strict, Secure over HTTPS) and is checked on
every request like the API's bearer key, so revoking the key signs the browser out. POST forms carry
a token derived from the key and must come from the same origin (CSRF).
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlmodel import Session

from evalsvc.errors import EvalServiceError
from evalsvc.pipeline.projects import project_for_key
from evalsvc.pipeline.reviews import decide_review
from evalsvc.schemas import RunStatus
from evalsvc.store.db import write_session
from evalsvc.store.models import Project
from evalsvc.store.queries import get_run, list_evals, list_evaluator_rows, list_reviews, list_runs, review_queues
from evalsvc.ui import COOKIE, STATIC_DIR, csrf_token, templates
from evalsvc.ui.charts import pass_rate_svg
from evalsvc.ui.data import (
    actions_by_run,
    evaluator_names,
    evaluator_totals,
    judge_spend,
    latest_drift,
    pass_rate_by_day,
    run_reviews,
    workflows,
)

from ..deps import EngineDep, RunnerDep, SessionDep, SettingsDep

router = APIRouter(include_in_schema=False)

PAGE = 50
SINCE_PRESETS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
MAX_FORM_BYTES = 64 * 1024


class _Bad(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


# ---- sign-in, CSRF, rendering ---------------------------------------------------------------------


def _signed_in(request: Request, session: Session) -> tuple[Project, str] | None:
    key = request.cookies.get(COOKIE, "").strip()
    if not key:
        return None
    project = project_for_key(session=session, key=key)
    return (project, key) if project is not None else None


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/ui/login?" + urlencode({"next": target}), status_code=303)


def _safe_next(value: str | None) -> str:
    return value if value and value.startswith("/ui/") and not value.startswith("//") else "/ui/runs"


def _same_origin(request: Request) -> bool:
    """The form was posted from a page of this host (the browser's Origin, else Referer). The host is
    compared, not the scheme, so that a TLS-terminating proxy in front does not refuse every form."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True  # older clients send neither; the SameSite=Strict cookie and the token still hold
    hosts = {request.headers.get("host", request.url.netloc), request.headers.get("x-forwarded-host")}
    return urlsplit(origin).netloc in hosts - {None}


async def _form(request: Request) -> dict[str, str]:
    if not _same_origin(request):
        raise _Bad(403, "cross-origin form submission refused", "origin")
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        raise _Bad(415, "send the form as application/x-www-form-urlencoded", "content-type")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise _Bad(413, f"form larger than {MAX_FORM_BYTES} bytes", "body")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True).items()}


def _check_csrf(form: dict[str, str], key: str) -> None:
    if not hmac.compare_digest(form.get("csrf", "").encode(), csrf_token(key).encode()):
        raise _Bad(403, "missing or stale form token; reload the page and try again", "csrf")


def _page(
    request: Request, name: str, auth: tuple[Project, str] | None, http_status: int = 200, **context: Any
) -> Response:
    ctx = {"project": auth[0] if auth else None, "csrf": csrf_token(auth[1]) if auth else "", **context}
    return templates.TemplateResponse(request, name, ctx, status_code=http_status)


def _error(
    request: Request, auth: tuple[Project, str] | None, status: int, message: str, field: str | None
) -> Response:
    return _page(request, "error.html", auth, http_status=status, status_code=status, message=message, field=field)


def _int(value: str | None, field: str, *, default: int, low: int = 1) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise _Bad(422, f"must be a whole number, got {value!r}", field) from None
    if n < low:
        raise _Bad(422, f"must be at least {low}", field)
    return n


def _pager(keep: dict[str, Any], page: int, *, more: bool) -> dict[str, Any]:
    """The links to the previous and next page of a list, keeping its filters."""
    return {
        "prev_url": "?" + urlencode({**keep, "page": page - 1}) if page > 1 else None,
        "next_url": "?" + urlencode({**keep, "page": page + 1}) if more else None,
    }


def _since(value: str | None, field: str = "since") -> datetime | None:
    """A time filter: 24h, 7d, 30d (that long ago) or an ISO date or time (UTC unless it says)."""
    if not value:
        return None
    if value in SINCE_PRESETS:
        return datetime.now(UTC) - SINCE_PRESETS[value]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(422, f"must be 24h, 7d, 30d or an ISO date such as 2026-11-01, got {value!r}", field) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# ---- pages -----------------------------------------------------------------------------------------


@router.get("/")
@router.get("/ui")
@router.get("/ui/")
def home() -> RedirectResponse:
    return RedirectResponse("/ui/runs", status_code=303)


@router.get("/ui/static/ui.css")
def stylesheet() -> FileResponse:
    return FileResponse(STATIC_DIR / "ui.css", media_type="text/css")


@router.get("/ui/login")
def login_form(request: Request, next: str | None = None) -> Response:
    return _page(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/ui/login")
async def login(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    try:
        form = await _form(request)
    except _Bad as exc:
        return _error(request, None, exc.status, exc.message, exc.field)
    key = form.get("key", "").strip()
    project = project_for_key(session=session, key=key) if key else None
    if project is None:
        return _page(request, "login.html", None, http_status=401, next=_safe_next(form.get("next")),
                     error="unknown or revoked API key")  # fmt: skip
    response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
    response.set_cookie(COOKIE, key, max_age=int(settings.ui_session_hours * 3600), path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")  # fmt: skip
    return response


@router.post("/ui/logout")
async def logout(request: Request, session: SessionDep) -> Response:
    auth = _signed_in(request, session)
    if auth is not None:
        try:
            _check_csrf(await _form(request), auth[1])
        except _Bad as exc:
            return _error(request, auth, exc.status, exc.message, exc.field)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/ui/runs")
def runs_page(request: Request, session: SessionDep) -> Response:
    auth = _signed_in(request, session)
    if auth is None:
        return _to_login(request)
    q = request.query_params
    try:
        status = q.get("status") or None
        if status is not None and status not in RunStatus.__members__:
            raise _Bad(422, f"must be one of {', '.join(RunStatus.__members__)}, got {status!r}", "status")
        page = _int(q.get("page"), "page", default=1)
        since = _since(q.get("since"))
        until = _since(q.get("until"), "until")
        if since is not None and until is not None and until <= since:
            raise _Bad(422, f"must be after 'updated since' ({q.get('since')})", "until")
    except _Bad as exc:
        return _error(request, auth, exc.status, exc.message, exc.field)
    filters = {k: q.get(k, "") for k in ("status", "workflow", "failed_evaluator", "since", "until")}
    rows = list_runs(
        session=session,
        project_id=auth[0].id or 0,
        status=status,
        workflow=q.get("workflow") or None,
        failed_evaluator=q.get("failed_evaluator") or None,
        since=since,
        until=until,
        limit=PAGE + 1,
        offset=(page - 1) * PAGE,
    )
    keep = {k: v for k, v in filters.items() if v}
    return _page(
        request, "runs.html", auth, runs=rows[:PAGE], filters=filters, page=page,
        actions=actions_by_run(session=session, project_id=auth[0].id or 0, run_ids=[r.id for r in rows[:PAGE]]),
        **_pager(keep, page, more=len(rows) > PAGE),
        statuses=list(RunStatus.__members__), workflows=workflows(session=session, project_id=auth[0].id or 0),
        evaluators=evaluator_names(session=session, project_id=auth[0].id or 0),
    )  # fmt: skip


@router.get("/ui/runs/{run_key:path}")
def run_page(run_key: str, request: Request, session: SessionDep) -> Response:
    auth = _signed_in(request, session)
    if auth is None:
        return _to_login(request)
    try:
        run = get_run(session=session, project_id=auth[0].id or 0, run_key=run_key,
                      source=request.query_params.get("source") or None)  # fmt: skip
    except EvalServiceError as exc:
        return _error(request, auth, exc.http_status, exc.message, exc.field)
    groups: dict[str, list[Any]] = {}
    for step in run.steps:
        groups.setdefault(step.step_key, []).append(step)
    reviews = run_reviews(session=session, project_id=auth[0].id or 0, run_id=run.id)
    by_step: dict[int, list[Any]] = {}
    for a in run.actions:
        by_step.setdefault(a.step_id, []).append(a)
    return _page(request, "run.html", auth, run=run, groups=groups, reviews=reviews, actions_by_step=by_step)


@router.get("/ui/evals")
def failed_evals_page(request: Request, session: SessionDep) -> Response:
    auth = _signed_in(request, session)
    if auth is None:
        return _to_login(request)
    try:
        page = _int(request.query_params.get("page"), "page", default=1)
    except _Bad as exc:
        return _error(request, auth, exc.status, exc.message, exc.field)
    evaluator = request.query_params.get("evaluator") or None
    rows = list_evals(session=session, project_id=auth[0].id or 0, passed=False, evaluator=evaluator,
                      limit=PAGE + 1, offset=(page - 1) * PAGE)  # fmt: skip
    keep = {"evaluator": evaluator} if evaluator else {}
    return _page(
        request, "evals.html", auth, evals=rows[:PAGE], evaluator=evaluator or "", page=page,
        evaluators=evaluator_names(session=session, project_id=auth[0].id or 0),
        **_pager(keep, page, more=len(rows) > PAGE),
    )  # fmt: skip


REVIEW_STATUSES = ("open", "approved", "rejected", "all")
HUMAN_VERDICTS: dict[str, bool | None] = {"": None, "pass": True, "fail": False}  # the form's human_verdict


@router.get("/ui/reviews")
def reviews_page(request: Request, session: SessionDep) -> Response:
    auth = _signed_in(request, session)
    if auth is None:
        return _to_login(request)
    q = request.query_params
    status = q.get("status") or "open"
    queue = q.get("queue") or None
    try:
        if status not in REVIEW_STATUSES:
            raise _Bad(422, f"must be one of {', '.join(REVIEW_STATUSES)}, got {status!r}", "status")
        page = _int(q.get("page"), "page", default=1)
    except _Bad as exc:
        return _error(request, auth, exc.status, exc.message, exc.field)
    rows = list_reviews(session=session, project_id=auth[0].id or 0, status=None if status == "all" else status,
                        queue=queue, limit=PAGE + 1, offset=(page - 1) * PAGE)  # fmt: skip
    items = rows[:PAGE]
    keep = {"status": status, **({"queue": queue} if queue else {})}
    decided = None
    if request.query_params.get("decided", "").isdigit():
        found = list_reviews(session=session, project_id=auth[0].id or 0, status=None,
                             review_id=int(request.query_params["decided"]))  # fmt: skip
        decided = found[0] if found else None
    return _page(
        request, "reviews.html", auth, items=items, status=status, statuses=REVIEW_STATUSES, queue=queue or "",
        queues=review_queues(session=session, project_id=auth[0].id or 0), page=page,
        here="/ui/reviews?" + urlencode({**keep, "page": page}),
        **_pager(keep, page, more=len(rows) > PAGE),
        decided=decided, follow_up=q.get("follow_up"),
    )  # fmt: skip


@router.post("/ui/reviews/{review_id}/{decision}")
async def decide(
    review_id: int, decision: str, request: Request, session: SessionDep, engine: EngineDep, runner: RunnerDep
) -> Response:
    auth = _signed_in(request, session)
    if auth is None:
        return _error(request, None, 401, "sign in first", "cookie")
    try:
        if decision not in ("approve", "reject"):
            raise _Bad(404, f"no decision {decision!r}; approve or reject", "decision")
        form = await _form(request)
        _check_csrf(form, auth[1])
        comment = form.get("comment", "").strip() or None
        reviewer = form.get("reviewer", "").strip() or f"ui:{auth[1][:12]}"
        if comment is not None and len(comment) > 10_000:
            raise _Bad(422, "must be at most 10000 characters", "comment")
        if len(reviewer) > 128:
            raise _Bad(422, "must be at most 128 characters", "reviewer")
        verdict = form.get("human_verdict", "")
        if verdict not in HUMAN_VERDICTS:
            raise _Bad(422, f"must be pass, fail or empty, got {verdict!r}", "human_verdict")
        with write_session(engine) as ws:
            item, follow_up = decide_review(
                session=ws, project_id=auth[0].id or 0, review_id=review_id,
                decision="approved" if decision == "approve" else "rejected", reviewer=reviewer, comment=comment,
                human_passed=HUMAN_VERDICTS[verdict],
            )  # fmt: skip
    except _Bad as exc:
        return _error(request, auth, exc.status, exc.message, exc.field)
    except EvalServiceError as exc:
        return _error(request, auth, exc.http_status, exc.message, exc.field)
    if follow_up is not None:
        runner.submit_actions([follow_up])
    back = _safe_next(form.get("next") or "/ui/reviews")
    sep = "&" if "?" in back else "?"
    extra = {"decided": item.id, **({"follow_up": follow_up} if follow_up is not None else {})}
    return RedirectResponse(f"{back}{sep}{urlencode(extra)}", status_code=303)


@router.get("/ui/evaluators")
def evaluators_page(request: Request, session: SessionDep) -> Response:
    auth = _signed_in(request, session)
    if auth is None:
        return _to_login(request)
    rows = list_evaluator_rows(session=session, project_id=auth[0].id or 0)
    totals = evaluator_totals(session=session, project_id=auth[0].id or 0)
    return _page(request, "evaluators.html", auth, evaluators=rows, totals=totals)


@router.get("/ui/evaluators/{name}")
def evaluator_page(name: str, request: Request, session: SessionDep) -> Response:
    auth = _signed_in(request, session)
    if auth is None:
        return _to_login(request)
    pid = auth[0].id or 0
    versions = [
        e for e in list_evaluator_rows(session=session, project_id=pid, include_inactive=True) if e.name == name
    ]
    if not versions:
        return _error(request, auth, 404, f"no evaluator named {name!r} in this project", "name")
    current = next((e for e in reversed(versions) if e.active), versions[-1])
    days = pass_rate_by_day(session=session, project_id=pid, evaluator=name)
    target = current.definition.get("target") if isinstance(current.definition.get("target"), dict) else {}
    return _page(
        request, "evaluator.html", auth, evaluator=current, versions=versions, days=days,
        chart=pass_rate_svg(days) if days else None, totals=evaluator_totals(session=session, project_id=pid).get(name),
        drift=latest_drift(session=session, project_id=pid, target=target or {}),
        spend=judge_spend(session=session, project_id=pid, evaluator=name),
    )  # fmt: skip
