"""The ``evalsvc`` command line. Every command that touches the store works on the one that
``EVALSVC_HOME`` / ``EVALSVC_DATABASE_URL`` name (the same one ``evalsvc serve`` uses) and takes
``--project`` (default ``default``, created on first use).

    $ evalsvc demo
    $ evalsvc evaluators apply evalsvc.yaml
    $ evalsvc ingest runs.jsonl --connector json
    $ evalsvc evals list --failed
    $ evalsvc runs show inv-000042
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from typer.core import TyperGroup

from evalsvc.errors import EvalServiceError, InvalidInput
from evalsvc.settings import Settings

from . import cli_output as out


class _Group(TyperGroup):
    """Turns evalsvc's errors into a one-line message and an exit code (4: your input, 1: ours)."""

    def invoke(self, ctx: Any) -> Any:  # typer vendors its own click: its Context type is private
        try:
            return super().invoke(ctx)
        except EvalServiceError as exc:
            err.print(f"[red]error[/red] {escape(exc.message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(4 if 400 <= exc.http_status < 500 else 1) from None


app = typer.Typer(
    cls=_Group,
    help="evalsvc: production evals beside the workflow orchestrator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
evaluators_app = typer.Typer(help="Evaluators as code (evalsvc.yaml).", no_args_is_help=True)
runs_app = typer.Typer(help="Runs with their steps and verdicts.", no_args_is_help=True)
evals_app = typer.Typer(help="Eval results.", no_args_is_help=True)
review_app = typer.Typer(help="The human review queue.", no_args_is_help=True)
actions_app = typer.Typer(help="What evalsvc did to production (the audit trail).", no_args_is_help=True)
keys_app = typer.Typer(help="Project API keys.", no_args_is_help=True)
for sub, name in (
    (evaluators_app, "evaluators"),
    (runs_app, "runs"),
    (evals_app, "evals"),
    (review_app, "review"),
    (actions_app, "actions"),
    (keys_app, "keys"),
):
    app.add_typer(sub, name=name)

# piped output keeps whole lines (tables at 80 columns would cut names for grep)
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="Project name.", envvar="EVALSVC_PROJECT")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class Ctx:
    """Settings, the migrated store and the project of one CLI command."""

    def __init__(self, project: str, settings: Settings | None = None, *, create: bool = False) -> None:
        from evalsvc.pipeline.projects import ensure_project, get_project
        from evalsvc.store.db import get_engine, migrate, session_scope

        self.settings = settings or Settings()
        self.engine = get_engine(self.settings.resolved_database_url())
        migrate(self.engine)
        with session_scope(self.engine) as session:
            # commands that write create the project on first use; the others name a typo
            lookup = ensure_project if create or project == "default" else get_project
            self.project_id = lookup(session=session, name=project).id or 0
        self.project = project

    def session(self) -> Any:
        from evalsvc.store.db import session_scope

        return session_scope(self.engine)


def main() -> None:
    from pydantic import ValidationError

    from evalsvc.logging import configure_logging

    try:
        settings = Settings()
    except ValidationError as exc:
        for e in exc.errors(include_url=False):
            name = "EVALSVC_" + "_".join(str(p) for p in e["loc"]).upper()
            err.print(
                f"[red]error[/red] {escape(name)}: {escape(e['msg'].removeprefix('Value error, '))}", highlight=False
            )
        sys.exit(4)
    configure_logging(settings, service=False)
    app()


# ---- ingest -----------------------------------------------------------------------------------


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="JSON array, JSON lines, or one JSON document.")],
    connector: Annotated[str, typer.Option(help="Connector that reads the file.")] = "json",
    project: ProjectOpt = "default",
    chunk: Annotated[int, typer.Option(help="Records per batch.")] = 5000,
    score: Annotated[bool, typer.Option(help="Score what was ingested before returning (in-process runner).")] = True,
) -> None:
    """Ingest execution records from a file. Example: `evalsvc ingest runs.jsonl --connector json`."""
    ctx = Ctx(project, create=True)
    report = ingest_file(ctx, file, connector=connector, chunk=chunk)
    out.print_ingest(console, report)
    _after_ingest(ctx, report.pending_eval_ids, score=score)
    if report.count("rejected"):
        raise typer.Exit(1)


def ingest_file(ctx: Ctx, file: Path, *, connector: str, chunk: int) -> Any:
    from connectors import get as get_connector
    from evalsvc.pipeline.files import iter_chunks
    from evalsvc.pipeline.ingest import IngestReport, ingest_batch
    from evalsvc.pipeline.schedule import load_active_evaluators

    conn = get_connector(connector, ctx.settings)
    chunk = max(1, min(chunk, ctx.settings.max_batch_records))
    total = file.stat().st_size if file.exists() else 0
    report = IngestReport()
    with ctx.session() as session:
        evaluators = load_active_evaluators(session=session, project_id=ctx.project_id)
    with Progress(
        TextColumn("ingest"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=total < 1_000_000 or not err.is_terminal,
    ) as bar:
        task = bar.add_task("ingest", total=total)
        index = 0
        for _, raw, pos in iter_chunks(file, chunk_size=chunk):
            items = conn.to_steps(raw)
            for start in range(0, len(items), chunk):
                part = ingest_batch(
                    engine=ctx.engine,
                    project_id=ctx.project_id,
                    items=items[start : start + chunk],
                    max_batch_records=ctx.settings.max_batch_records,
                    max_record_bytes=ctx.settings.max_record_bytes,
                    offset=index,
                    evaluators=evaluators,
                )
                index += len(items[start : start + chunk])
                report.extend(part)
            bar.update(task, completed=pos)
    return report


def _after_ingest(ctx: Ctx, pending: list[int], *, score: bool) -> None:
    from evalsvc.pipeline.run_evals import schedule_final_runs
    from evalsvc.worker import drain, get_runner

    pending = [*pending, *schedule_final_runs(engine=ctx.engine)]  # run-level evaluators of final runs
    if not pending:
        return
    if ctx.settings.runner == "celery":
        get_runner(engine=ctx.engine, settings=ctx.settings).submit_scores(pending)
        console.print(f"queued {len(pending)} evals for the Celery workers")
    elif score:
        result = drain(engine=ctx.engine, settings=ctx.settings)
        console.print(
            f"scored {result.score.scored + result.score.errors + result.score.skipped} evals: "
            f"{result.score.passed} passed, {result.score.failed} failed, {result.score.errors} errors, "
            f"{result.score.skipped} skipped"
        )


@app.command()
def score(
    project: ProjectOpt = "default",
    backfill: Annotated[
        bool, typer.Option("--backfill", help="Also judge steps stored before their evaluator.")
    ] = False,
    rescore: Annotated[bool, typer.Option("--rescore", help="Judge again steps that already have a verdict.")] = False,
    evaluator: Annotated[list[str] | None, typer.Option(help="Only these evaluators (repeatable).")] = None,
    since: Annotated[datetime | None, typer.Option(help="Only steps stored or changed since (ISO time).")] = None,
) -> None:
    """Score pending eval results now and dispatch due actions (this also recovers after a crash).

    Example: `evalsvc score --backfill --evaluator total_is_number --since 2026-11-01`.
    """
    from evalsvc.pipeline.schedule import backfill as schedule_backfill
    from evalsvc.pipeline.schedule import load_active_evaluators
    from evalsvc.worker import drain, get_runner

    ctx = Ctx(project)
    if backfill or rescore:
        with ctx.session() as session:
            active = load_active_evaluators(session=session, project_id=ctx.project_id)
            unknown = set(evaluator or []) - {e.name for e in active}
            if unknown:
                raise InvalidInput(f"no active evaluator named {', '.join(sorted(unknown))}", field="evaluator")
            chosen = [e for e in active if not evaluator or e.name in evaluator]
            ids = schedule_backfill(session=session, project_id=ctx.project_id, evaluators=chosen,
                                    since=since.replace(tzinfo=since.tzinfo or UTC) if since else None,
                                    rescore=rescore)  # fmt: skip
        console.print(f"scheduled {len(ids)} evals on stored steps")
        if ctx.settings.runner == "celery":
            get_runner(engine=ctx.engine, settings=ctx.settings).submit_scores(ids)
            console.print("queued for the Celery workers")
            return
    result = drain(engine=ctx.engine, settings=ctx.settings)
    s = result.score
    actions = ", ".join(f"{n} {status}" for status, n in sorted(result.actions.items())) or "none due"
    console.print(
        f"scored {s.scored + s.errors + s.skipped}: {s.passed} passed, {s.failed} failed, {s.errors} errors, "
        f"{s.skipped} skipped; actions dispatched: {actions}"
    )


# ---- evaluators -------------------------------------------------------------------------------


@evaluators_app.command("apply")
def evaluators_apply(
    file: Annotated[Path, typer.Argument(help="The evaluator file.")] = Path("evalsvc.yaml"),
    project: ProjectOpt = "default",
) -> None:
    """Store the file's evaluators, versioned. Example: `evalsvc evaluators apply evalsvc.yaml`."""
    from evalsvc.pipeline.evaluators import apply_evaluators, load_config

    ctx = Ctx(project, create=True)
    specs = load_config(file)
    with ctx.session() as session:
        changes = apply_evaluators(session=session, project_id=ctx.project_id, specs=specs, settings=ctx.settings)
    out.print_changes(console, changes)


@evaluators_app.command("list")
def evaluators_list(
    project: ProjectOpt = "default",
    all_versions: Annotated[bool, typer.Option("--all")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the active evaluators (`--all` for every version)."""
    from evalsvc.store.queries import list_evaluator_rows

    ctx = Ctx(project)
    with ctx.session() as session:
        rows = list_evaluator_rows(session=session, project_id=ctx.project_id, include_inactive=all_versions)
    out.emit(console, rows, as_json, out.evaluators_table)


# ---- runs, evals, actions ---------------------------------------------------------------------


@runs_app.command("show")
def runs_show(
    run_key: str, project: ProjectOpt = "default", source: str | None = None, as_json: JsonOpt = False
) -> None:
    """A run with every step attempt and its verdicts. Example: `evalsvc runs show inv-000042`."""
    from evalsvc.store.queries import get_run

    ctx = Ctx(project)
    with ctx.session() as session:
        run = get_run(session=session, project_id=ctx.project_id, run_key=run_key, source=source)
    if as_json:
        console.print_json(run.model_dump_json())
    else:
        out.print_run(console, run)


@runs_app.command("list")
def runs_list(
    project: ProjectOpt = "default",
    status: str | None = None,
    workflow: str | None = None,
    failed_evaluator: str | None = None,
    limit: int = 20,
    as_json: JsonOpt = False,
) -> None:
    """Recent runs, with how many of their evals failed."""
    from evalsvc.store.queries import list_runs

    ctx = Ctx(project)
    with ctx.session() as session:
        rows = list_runs(
            session=session,
            project_id=ctx.project_id,
            status=status,
            workflow=workflow,
            failed_evaluator=failed_evaluator,
            limit=limit,
        )
    out.emit(console, rows, as_json, out.runs_table)


@evals_app.command("list")
def evals_list(
    project: ProjectOpt = "default",
    failed: Annotated[bool, typer.Option("--failed")] = False,
    evaluator: str | None = None,
    status: str | None = None,
    limit: int = 50,
    as_json: JsonOpt = False,
) -> None:
    """Eval results, each with its run, step and attempt. Example: `evalsvc evals list --failed`."""
    from evalsvc.store.queries import list_evals

    ctx = Ctx(project)
    with ctx.session() as session:
        rows = list_evals(
            session=session,
            project_id=ctx.project_id,
            passed=False if failed else None,
            evaluator=evaluator,
            status=status,
            limit=limit,
        )
    out.emit(console, rows, as_json, out.evals_table)


@evals_app.command("estimate")
def evals_estimate(
    evaluator: Annotated[str, typer.Argument(help="The evaluator's name (a sampled LLM judge, typically).")],
    project: ProjectOpt = "default",
    days: Annotated[int, typer.Option(min=1, help="Use the verdicts of the last N days.")] = 7,
    as_json: JsonOpt = False,
) -> None:
    """The failure rate of an evaluator's steps estimated from its sampled, weighted verdicts, with
    its 95% interval, and today's judge calls, dollars and skips over budget (docs/judges.md).
    Example: `evalsvc evals estimate faithfulness --days 1`."""
    from evalsvc.pipeline.judging import estimate_failure_rate, usage_today

    ctx = Ctx(project)
    with ctx.session() as session:
        est = estimate_failure_rate(session=session, project_id=ctx.project_id, evaluator=evaluator, days=days)
        usage = usage_today(session=session, project_id=ctx.project_id, evaluator=evaluator)
    if as_json:
        console.print_json(data={"evaluator": evaluator, "days": days, **est.as_dict(), "today": usage})
        return
    console.print(f"{evaluator}: {est}")
    ev, pj = usage["evaluator"], usage["project"]
    console.print(f"today: {ev['calls']} judge calls, ${ev['dollars']:.4f}, {ev['over_budget']} skipped over budget "
                  f"(all judges of the project: {pj['calls']} calls, ${pj['dollars']:.4f}, {pj['over_budget']} skipped)")  # fmt: skip


@actions_app.command("list")
def actions_list(
    project: ProjectOpt = "default",
    kind: str | None = None,
    status: str | None = None,
    run: Annotated[str | None, typer.Option(help="Only actions on this run (its run key).")] = None,
    source: Annotated[str | None, typer.Option(help="The run's source, where its key is ambiguous.")] = None,
    limit: int = 50,
    as_json: JsonOpt = False,
) -> None:
    """Actions evalsvc took: what, when, why, and with what result (`--json` adds the timestamps)."""
    from evalsvc.store.queries import list_actions, resolve_run

    ctx = Ctx(project)
    with ctx.session() as session:
        run_id = None
        if run is not None:
            run_id = resolve_run(session=session, project_id=ctx.project_id, run_key=run, source=source).id
        rows = list_actions(
            session=session, project_id=ctx.project_id, kind=kind, status=status, run_id=run_id, limit=limit
        )
    out.emit(console, rows, as_json, out.actions_table)


# ---- review -----------------------------------------------------------------------------------


@review_app.command("list")
def review_list(
    project: ProjectOpt = "default",
    status: str = "open",
    queue: Annotated[str | None, typer.Option(help="Only items of this review queue (on_fail.queue).")] = None,
    assignee: str | None = None,
    limit: int = 100,
    offset: Annotated[int, typer.Option(help="Skip this many items (oldest first): the next page.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Review items, oldest first (`--status open|approved|rejected|all`)."""
    from evalsvc.store.queries import list_reviews

    ctx = Ctx(project)
    with ctx.session() as session:
        rows = list_reviews(session=session, project_id=ctx.project_id, status=None if status == "all" else status,
                            queue=queue, assignee=assignee, limit=limit, offset=offset)  # fmt: skip
    out.emit(console, rows, as_json, out.reviews_table)


@review_app.command("show")
def review_show(review_id: int, project: ProjectOpt = "default", as_json: JsonOpt = False) -> None:
    """One review item: the failed evals, the step's input and output, the run's other steps."""
    import orjson

    from evalsvc.store.queries import get_review_detail

    ctx = Ctx(project)
    with ctx.session() as session:
        item = get_review_detail(session=session, project_id=ctx.project_id, review_id=review_id)
    if as_json:
        console.print_json(item.model_dump_json())
        return
    console.print(f"[bold]review {item.id}[/bold] {item.status} (assignee {item.assignee or '-'}, "
                  f"queue {item.queue or '-'}); {'; '.join(item.reasons) or '-'}")  # fmt: skip
    for v in item.failed:
        console.print(f"  failed {v.evaluator}: {v.explanation or '-'}", markup=False)
    if item.step is not None:
        console.print(f"  input:  {orjson.dumps(item.step.input).decode()[:500]}", markup=False)
        console.print(f"  output: {orjson.dumps(item.step.output).decode()[:500]}", markup=False)
    if item.run is not None:
        out.print_run(console, item.run)


def _decide(
    review_id: int,
    decision: Literal["approved", "rejected"],
    project: str,
    comment: str | None,
    reviewer: str | None,
    human_passed: bool | None,
) -> None:
    from evalsvc.pipeline.reviews import decide_review
    from evalsvc.worker import get_runner

    ctx = Ctx(project)
    with ctx.session() as session:
        item, follow_up = decide_review(
            session=session,
            project_id=ctx.project_id,
            review_id=review_id,
            decision=decision,
            reviewer=reviewer,
            comment=comment,
            human_passed=human_passed,
        )
    if follow_up is not None:
        get_runner(engine=ctx.engine, settings=ctx.settings).submit_actions([follow_up])
    note = f"; follow-up action {follow_up}" if follow_up else "; no orchestrator adapter for this run's source"
    console.print(f"review {item.id} {item.status} (run {item.run_key}, step {item.step_key} #{item.attempt}){note}")


_Comment = Annotated[str | None, typer.Option("--comment", "-m", help="Why.")]
_Reviewer = Annotated[str | None, typer.Option(help="Who decided.", envvar="USER")]
_Override = Annotated[bool | None, typer.Option("--passed/--failed", help="Your own verdict on the output.")]


@review_app.command("approve")
def review_approve(
    review_id: int,
    project: ProjectOpt = "default",
    comment: _Comment = None,
    reviewer: _Reviewer = None,
    human_passed: _Override = None,
) -> None:
    """Approve a review item. Example: `evalsvc review approve 3 -m "label was ambiguous"`."""
    _decide(review_id, "approved", project, comment, reviewer, human_passed)


@review_app.command("reject")
def review_reject(
    review_id: int,
    project: ProjectOpt = "default",
    comment: _Comment = None,
    reviewer: _Reviewer = None,
    human_passed: _Override = None,
) -> None:
    """Reject a review item. Example: `evalsvc review reject 3 -m "wrong vendor"`."""
    _decide(review_id, "rejected", project, comment, reviewer, human_passed)


# ---- keys -------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(project: ProjectOpt = "default", name: str | None = None) -> None:
    """Create an API key for a project and print it once (only its hash is stored)."""
    from evalsvc.pipeline.projects import create_key, get_project

    ctx = Ctx(project, create=True)
    with ctx.session() as session:
        row, plaintext = create_key(session=session, project=get_project(session=session, name=project), name=name)
    err.print(f"key {row.prefix}… for project {project!r} (shown once; store it now):")
    typer.echo(plaintext)


@keys_app.command("revoke")
def keys_revoke(prefix: str, project: ProjectOpt = "default") -> None:
    """Revoke a key by its prefix (the first 12 characters)."""
    from evalsvc.pipeline.projects import get_project, revoke_key

    ctx = Ctx(project)
    with ctx.session() as session:
        revoke_key(session=session, project=get_project(session=session, name=project), prefix=prefix)
    console.print(f"revoked {prefix}")


# ---- services ---------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address (default EVALSVC_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default EVALSVC_PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=64, help="HTTP worker processes (default EVALSVC_SERVE_WORKERS, 1).")
    ] = None,
) -> None:
    """Run the HTTP API (and, without a broker, the in-process worker)."""
    import uvicorn

    from evalsvc.logging import configure_logging

    settings = Settings()
    configure_logging(settings, service=True)
    n = workers if workers is not None else settings.serve_workers
    bind_host, bind_port = host or settings.host, port if port is not None else settings.port
    if n == 1:
        from evalsvc.api.main import create_app

        uvicorn.run(create_app(settings), host=bind_host, port=bind_port, log_config=None, access_log=False)
        return
    # N worker processes: the store is migrated once, in a short-lived process (the supervisor
    # stays small), before they start and find the schema current
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from evalsvc.api.factory import migrate_store; migrate_store()"],
                          check=False)  # fmt: skip
    if done.returncode != 0:
        err.print("[red]error[/red] migrating the store failed (see above)")
        raise typer.Exit(1)
    uvicorn.run("evalsvc.api.factory:worker_app", factory=True, workers=n, host=bind_host, port=bind_port,
                log_config=None, access_log=False)  # fmt: skip


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes or threads.")] = 2,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, threads or solo.")] = "prefork",
) -> None:
    """Run Celery workers (needs EVALSVC_BROKER_URL, e.g. redis://127.0.0.1:6379/0)."""
    settings = Settings()
    if not settings.broker_url:
        err.print("[red]error[/red] EVALSVC_BROKER_URL is not set; `evalsvc serve` scores in-process without it")
        raise typer.Exit(4)
    from evalsvc.worker.celery_app import app as celery_app

    celery_app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--loglevel={settings.log_level}",
            "-Q",
            settings.queue,
        ]
    )


@app.command()
def demo(
    runs: Annotated[int, typer.Option(help="Workflow runs to simulate.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 7,
) -> None:
    """Simulate an invoice agent, ingest, score and act on it, then print a report (no network)."""
    from evalsvc.demo.run import run_demo

    run_demo(console=console, runs=runs, seed=seed)


# commands of the connectors, statistics and analytics live in their own modules
from . import cli_drift, cli_gate, cli_listen, cli_pull, cli_query  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    # run the imported module's app: the cli_* modules register their commands on evalsvc.cli.app,
    # not on this __main__ copy
    from evalsvc.cli import main as _main

    _main()
