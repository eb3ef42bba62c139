"""`evalsvc listen ...`: follow an orchestrator's live events (Celery) and ingest them as they come.

    $ evalsvc listen celery --broker redis://127.0.0.1:6379/0 --project prod
    $ evalsvc listen celery --batch 1000 --flush-seconds 2 --until-idle 60

The events are folded into step records by ``connectors.celery_events``, stored through
``pipeline.ingest.ingest_batch`` and scored like ``evalsvc ingest`` does. The command reconnects
with backoff when the broker goes away and, on SIGINT or SIGTERM, ingests what it holds and exits.
See ``docs/connectors/celery.md``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from evalsvc.errors import InvalidInput, PayloadRejected

from .cli import Ctx, ProjectOpt, _after_ingest, app, console, err

__all__ = ["listen_app"]

listen_app = typer.Typer(help="Follow an orchestrator's live events and ingest them.", no_args_is_help=True)
app.add_typer(listen_app, name="listen")

_BROKER_SCHEMES = ("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://", "sqs://")


def _store_resolver(ctx: Ctx) -> Any:
    """Answers the folder's questions about tasks it has not seen (e.g. after a restart of the
    listener) from the Celery steps already stored in the project."""
    import sqlalchemy as sa

    from connectors.celery_events import SOURCE, TaskIdentity
    from evalsvc.store.models import Run, Step, table

    s, r = table(Step), table(Run)

    def resolve(uuids: list[str]) -> dict[str, TaskIdentity]:
        found: dict[str, TaskIdentity] = {}
        latest: dict[str, int] = {}
        with ctx.session() as session:
            for start in range(0, len(uuids), 500):
                q = (
                    sa.select(s.c.step_key, s.c.attempt, s.c.name, s.c.parent_step_key, s.c.attributes, r.c.run_key)
                    .join(r, r.c.id == s.c.run_id)
                    .where(r.c.project_id == ctx.project_id, r.c.source == SOURCE)
                    .where(s.c.step_key.in_(uuids[start : start + 500]))
                )
                for uuid, attempt, name, parent, attrs, run_key in session.execute(q):
                    if attempt <= latest.get(uuid, 0):
                        continue
                    latest[uuid] = attempt
                    retried = (attrs or {}).get("celery.event") == "task-retried"
                    found[uuid] = TaskIdentity(
                        run_key=run_key,
                        parent=parent,
                        name=None if name == uuid else name,
                        retried=attempt if retried else attempt - 1,
                        received_at={attempt: float("-inf")},
                    )
        return found

    return resolve


def _fold(folder: Any, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold a batch; an event the connector cannot read is reported and left out, not fatal."""
    try:
        records: list[dict[str, Any]] = folder.fold(events)
        return records
    except PayloadRejected:
        records = []
        for event in events:
            try:
                records.extend(folder.fold([event]))
            except PayloadRejected as exc:
                err.print(f"[yellow]skipped an event[/yellow]: {exc.message}", highlight=False)
        return records


def _ingest(ctx: Ctx, records: list[dict[str, Any]], *, offset: int, stream: Any) -> Any:
    """Store one batch; while the store is unreachable, keep the batch and try again with backoff
    (the stream keeps receiving meanwhile). Once asked to stop, three more tries, then give up."""
    from sqlalchemy.exc import OperationalError

    from evalsvc.pipeline.ingest import IngestReport, ingest_batch

    if not records:
        return IngestReport()
    delay, left = 0.5, 3
    while True:
        try:
            return ingest_batch(
                engine=ctx.engine,
                project_id=ctx.project_id,
                items=records,
                max_batch_records=ctx.settings.max_batch_records,
                max_record_bytes=ctx.settings.max_record_bytes,
                offset=offset,
            )
        except OperationalError as exc:
            if stream.stopping:
                left -= 1
                if left <= 0:
                    raise
            first = str(exc.orig or exc).strip().splitlines()[0]
            err.print(f"[yellow]store unavailable[/yellow] ({first}); retrying in {delay:.1f}s", highlight=False)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


@listen_app.command("celery")
def listen_celery(
    broker: Annotated[
        str | None,
        typer.Option(help="Broker of the Celery app to follow (default EVALSVC_CELERY_EVENTS_BROKER_URL)."),
    ] = None,
    project: ProjectOpt = "default",
    batch: Annotated[
        int | None, typer.Option(min=1, help="Most events per ingest batch (default EVALSVC_CELERY_LISTEN_BATCH).")
    ] = None,
    flush_seconds: Annotated[
        float | None,
        typer.Option(
            min=0.01, help="Ingest what arrived at least this often (default EVALSVC_CELERY_LISTEN_FLUSH_SECONDS)."
        ),
    ] = None,
    max_seconds: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds (default: run until SIGINT/SIGTERM).")
    ] = None,
    until_idle: Annotated[
        float | None,
        typer.Option(
            min=0, help="Stop once connected and no task event has arrived for this many seconds (e.g. in CI)."
        ),
    ] = None,
    score: Annotated[bool, typer.Option(help="Score finished steps after each batch (in-process runner).")] = True,
) -> None:
    """Follow a Celery app's task events live and ingest them as steps, until SIGINT or SIGTERM.

    The workers must send events (`celery worker -E`, or `worker_send_task_events = True`), and
    clients may add `task-sent` (`task_send_sent_event = True`). Example:
    `evalsvc listen celery --broker redis://127.0.0.1:6379/0 --project prod`.
    """
    from kombu.utils.url import maybe_sanitize_url

    from connectors.celery_events import CeleryEventFolder
    from connectors.celery_listen import CeleryEventStream
    from evalsvc.pipeline.ingest import IngestReport

    ctx = Ctx(project, create=True)
    url = broker or ctx.settings.celery_events_broker_url
    if not url:
        raise InvalidInput("no broker: pass --broker or set EVALSVC_CELERY_EVENTS_BROKER_URL", field="broker")
    if not url.startswith(_BROKER_SCHEMES):
        raise InvalidInput(f"--broker must be a {', '.join(_BROKER_SCHEMES)} URL", field="broker")
    size = min(batch or ctx.settings.celery_listen_batch, ctx.settings.max_batch_records)
    every = flush_seconds or ctx.settings.celery_listen_flush_seconds
    folder = CeleryEventFolder(
        max_tasks=ctx.settings.celery_listen_max_tasks,
        resolve=_store_resolver(ctx),
        run_attributes={"celery.broker": maybe_sanitize_url(url)},  # where an adapter would re-send or revoke
    )
    stream = CeleryEventStream(url)

    def _stop(signum: int, _frame: Any) -> None:
        if not stream.stopping:
            err.print(f"{signal.Signals(signum).name}: ingesting what arrived, then stopping", highlight=False)
        stream.stop()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    total = IngestReport()
    events = 0
    connected = False
    started = last_event = time.monotonic()
    console.print(f"listening to Celery events on project {project!r} (batch {size}, every {every:g}s)")
    try:
        for got in stream.batches(max_events=size, flush_seconds=every):
            for note in got.notes:
                console.print(note, highlight=False)
            if got.connected and not connected:  # idle time counts from the first connection
                connected, last_event = True, time.monotonic()
            if got.events:
                events += len(got.events)
                last_event = time.monotonic()
                records = _fold(folder, got.events)
                report = _ingest(ctx, records, offset=len(total.items), stream=stream)
                total.extend(report)
                s = report.summary()
                console.print(
                    f"{len(got.events)} events → {len(records)} records: {s['accepted']} accepted, "
                    f"{s['duplicate']} duplicate, {s['rejected']} rejected",
                    highlight=False,
                )
                for item in report.items:
                    if item.status == "rejected":
                        err.print(f"  [red]rejected[/red] {item.field or '(record)'}: {item.reason}", highlight=False)
                _after_ingest(ctx, report.pending_eval_ids, score=score)
            now = time.monotonic()
            if not stream.stopping and (
                (max_seconds is not None and now - started >= max_seconds)
                or (until_idle is not None and connected and now - last_event >= until_idle)
            ):
                stream.stop()
    finally:
        stream.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    s = total.summary()
    console.print(
        f"stopped: {events} events, {len(total.items)} records ({s['accepted']} accepted, {s['duplicate']} "
        f"duplicate, {s['rejected']} rejected), {len(folder)} tasks known",
        highlight=False,
    )
    if s["rejected"]:
        raise typer.Exit(1)
