"""`evalsvc pull ...`: pull execution histories from an orchestrator (Temporal).

    $ evalsvc pull temporal --address 127.0.0.1:7233 --namespace default --query "WorkflowType='Agent'"
    $ evalsvc pull temporal --follow --interval 30

Incremental: what a pull ingested is remembered in the store (``connector_state``), so a closed
execution is fetched once, and one that was running is fetched again when its history grew or it
closed. See ``docs/connectors/temporal.md``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn

from evalsvc.errors import InvalidInput

from . import cli_output as out
from .cli import Ctx, ProjectOpt, _after_ingest, app, console, err

__all__ = ["pull_app"]

pull_app = typer.Typer(help="Pull execution histories from an orchestrator.", no_args_is_help=True)
app.add_typer(pull_app, name="pull")

CONNECTOR = "temporal"


class _StoreState:
    """The pull's view of ``connector_state`` (read-only; the command saves after each ingest)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    def get(self, keys: Sequence[str]) -> Mapping[str, Any]:
        from evalsvc.pipeline.cursors import load_states

        with self.ctx.session() as session:
            return load_states(session=session, project_id=self.ctx.project_id, connector=CONNECTOR, keys=keys)

    def prefix(self, prefix: str) -> Mapping[str, Any]:
        from evalsvc.pipeline.cursors import load_prefix

        with self.ctx.session() as session:
            return load_prefix(session=session, project_id=self.ctx.project_id, connector=CONNECTOR, prefix=prefix)

    def save(self, values: Mapping[str, Any]) -> None:
        from evalsvc.pipeline.cursors import save_states

        with self.ctx.session() as session:
            save_states(session=session, project_id=self.ctx.project_id, connector=CONNECTOR, values=values)


@dataclass
class PullSummary:
    listed: int = 0
    fetched: int = 0
    skipped: int = 0
    running: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    pending: list[int] = field(default_factory=list)


async def _pull_once(ctx: Ctx, client: Any, *, namespace: str, scope: str, query: str | None) -> PullSummary:
    from connectors.temporal_pull import pull_executions
    from evalsvc.pipeline.ingest import IngestReport, ingest_batch
    from evalsvc.pipeline.schedule import load_active_evaluators

    state = _StoreState(ctx)
    summary = PullSummary()
    with ctx.session() as session:
        evaluators = load_active_evaluators(session=session, project_id=ctx.project_id)
    margin = timedelta(seconds=ctx.settings.temporal_pull_margin_seconds)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True, disable=not err.is_terminal
    ) as bar:
        task = bar.add_task("listing executions")
        async for item in pull_executions(
            client, namespace=namespace, scope=scope, state=state, query=query, margin=margin
        ):
            if item.run_id:
                summary.listed += 1
                summary.fetched += item.fetched
                summary.skipped += not item.fetched
                summary.running += item.fetched and item.status == "RUNNING"
            report = IngestReport()
            batch = ctx.settings.max_batch_records
            for start in range(0, len(item.records), batch):
                report.extend(
                    ingest_batch(
                        engine=ctx.engine,
                        project_id=ctx.project_id,
                        items=item.records[start : start + batch],
                        max_batch_records=batch,
                        max_record_bytes=ctx.settings.max_record_bytes,
                        offset=start,
                        evaluators=evaluators,
                    )
                )
            s = report.summary()
            summary.accepted += s["accepted"]
            summary.duplicate += s["duplicate"]
            summary.rejected += s["rejected"]
            summary.pending.extend(report.pending_eval_ids)
            if s["rejected"]:
                err.print(f"[yellow]{item.workflow_id} {item.run_id}[/yellow]:", highlight=False)
                out.print_ingest(err, report)
            if item.cursor:  # only after its records are stored
                state.save(item.cursor)
            bar.update(task, description=f"{summary.listed} executions, {summary.fetched} fetched")
    return summary


def _print_summary(summary: PullSummary, *, namespace: str) -> None:
    console.print(
        f"temporal {namespace}: {summary.listed} executions listed, {summary.fetched} fetched "
        f"({summary.running} still running), {summary.skipped} unchanged; records: {summary.accepted} accepted, "
        f"{summary.duplicate} duplicate, {summary.rejected} rejected"
    )


@pull_app.command("temporal")
def pull_temporal(
    address: Annotated[
        str | None, typer.Option(help="Temporal frontend HOST:PORT (default EVALSVC_TEMPORAL_ADDRESS).")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="Temporal namespace (default EVALSVC_TEMPORAL_NAMESPACE).")
    ] = None,
    query: Annotated[
        str | None, typer.Option(help="List filter, e.g. \"WorkflowType='Agent'\" (Temporal's visibility query).")
    ] = None,
    project: ProjectOpt = "default",
    follow: Annotated[bool, typer.Option("--follow", help="Keep pulling every --interval seconds.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between pulls with --follow.", min=0.1)] = 10.0,
    score: Annotated[bool, typer.Option(help="Score what was ingested before returning (in-process runner).")] = True,
) -> None:
    """Ingest Temporal workflow histories, incrementally: each closed execution once, running ones
    again as they progress and when they close.

    Example: `evalsvc pull temporal --address 127.0.0.1:7233 --namespace default --query "WorkflowType='Agent'"`.
    """
    ctx = Ctx(project, create=True)
    address = address or ctx.settings.temporal_address
    namespace = namespace or ctx.settings.temporal_namespace
    if ":" not in address:
        raise InvalidInput(f"expected HOST:PORT, got {address!r}", field="address")
    try:
        asyncio.run(_run(ctx, address=address, namespace=namespace, query=query, follow=follow, interval=interval,
                         score=score))  # fmt: skip
    except KeyboardInterrupt:
        err.print("stopped")


async def _run(
    ctx: Ctx, *, address: str, namespace: str, query: str | None, follow: bool, interval: float, score: bool
) -> None:
    from temporalio.client import Client
    from temporalio.service import RPCError, RPCStatusCode

    try:
        client = await Client.connect(address, namespace=namespace)
    except RuntimeError as exc:  # the core bridge reports connection failures as RuntimeError
        raise InvalidInput(f"cannot connect to Temporal at {address}: {exc}", field="address") from None
    first = True
    while True:
        started = time.monotonic()
        try:
            summary = await _pull_once(ctx, client, namespace=namespace, scope=address, query=query)
        except RPCError as exc:
            where = "namespace" if exc.status == RPCStatusCode.NOT_FOUND else "query"
            raise InvalidInput(f"Temporal refused the pull: {exc.message}", field=where) from None
        if first or summary.fetched or summary.rejected:  # --follow stays quiet while nothing happens
            _print_summary(summary, namespace=namespace)
        first = False
        # scoring runs its own event loop (the in-process runner): give it a thread of its own
        await asyncio.to_thread(_after_ingest, ctx, summary.pending, score=score)
        if not follow:
            return
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
