"""``evalsvc demo``: the main job on the embedded default, with no network and no services.

It simulates a few hundred runs of an invoice agent, writes them as JSON lines, applies the
bundled ``evalsvc.yaml``, ingests the file through the same path as ``evalsvc ingest``, scores
everything in-process, sends the webhook actions to a local receiver that checks their signatures,
asks the simulated orchestrator to re-run the extractions that failed their schema (and ingests and
scores the new attempts), and prints a report. It works in the project ``demo``, which it resets first.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import Counter
from datetime import timedelta
from importlib.resources import files
from typing import Any

import sqlalchemy as sa
import yaml
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from evalsvc.adapters.base import register as register_adapter
from evalsvc.pipeline.evaluators import apply_evaluators, parse_specs
from evalsvc.settings import Settings
from evalsvc.store.models import Action, EvalResult, Evaluator, ReviewItem, Run, Step, table, utcnow
from evalsvc.store.queries import EvalPublic

from .orchestrator import DemoAdapter, SimulatedOrchestrator
from .receiver import WebhookReceiver
from .simulate import simulate_runs, write_jsonl

__all__ = ["run_demo"]

PROJECT = "demo"
RETRIED = "invoice_extraction_schema"  # the bundled evaluator with on_fail: retry


def _reset(engine: sa.Engine, project_id: int) -> None:
    with engine.begin() as conn:
        for model in (Action, ReviewItem, EvalResult, Step, Run, Evaluator):
            t = table(model)
            conn.execute(sa.delete(t).where(t.c.project_id == project_id))


def run_demo(*, console: Console, runs: int = 300, seed: int = 7) -> None:
    from evalsvc.cli import Ctx, ingest_file
    from evalsvc.store.queries import list_evals, list_reviews
    from evalsvc.worker import drain

    t0 = time.perf_counter()
    base = Settings()
    secret = (
        base.webhook_secret.get_secret_value()
        if base.webhook_secret
        else "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    )
    # the demo's receiver listens on 127.0.0.1, so the demo (only) allows a loopback target
    settings = base.model_copy(update={"webhook_secret": SecretStr(secret), "webhook_allow_private": True})
    ctx = Ctx(PROJECT, settings=settings, create=True)
    _reset(ctx.engine, ctx.project_id)
    home = settings.home.expanduser().resolve()
    console.print(f"[bold]evalsvc demo[/bold]: store {settings.resolved_database_url()}, project {PROJECT!r} (reset)")

    with WebhookReceiver(secret) as receiver:
        config = yaml.safe_load(files("evalsvc.demo").joinpath("evalsvc.yaml").read_text(encoding="utf-8"))
        for ev in config["evaluators"]:
            if ev.get("on_fail", {}).get("action") == "webhook":
                ev["on_fail"]["url"] = receiver.url
        specs = parse_specs(config["evaluators"])
        with ctx.session() as session:
            apply_evaluators(session=session, project_id=ctx.project_id, specs=specs, settings=settings)

        start = utcnow() - timedelta(seconds=runs * 100)
        clean: dict[tuple[str, str], Any] = {}
        orchestrator = SimulatedOrchestrator(simulate_runs(runs=runs, seed=seed, start=start, clean=clean), clean=clean)
        register_adapter(DemoAdapter)  # on_fail: retry re-runs steps on the simulated orchestrator
        DemoAdapter.orchestrator = orchestrator
        path = home / "demo" / "invoice-agent.jsonl"
        write_jsonl(orchestrator.first, path)
        console.print(f"simulated {runs} runs of invoice-agent: {len(orchestrator.first)} records → {path}")

        try:
            report = ingest_file(ctx, path, connector="json", chunk=5000)
            s = report.summary()
            console.print(f"ingested: {s['accepted']} accepted, {s['duplicate']} duplicate, {s['rejected']} rejected")
            sc = drain(engine=ctx.engine, settings=settings).score
            console.print(
                f"scored {sc.scored + sc.skipped + sc.errors} evals: {sc.passed} passed, {sc.failed} failed, "
                f"{sc.skipped} skipped, {sc.errors} errors"
            )
            # the loop: failed extractions were sent back to the orchestrator; its re-runs come in
            # through the same connector and are scored in turn, until nothing is re-run
            for round_no in range(1, 6):
                rerun = orchestrator.take()
                if not rerun:
                    break
                retry_path = home / "demo" / f"invoice-agent.retries-{round_no}.jsonl"
                write_jsonl(rerun, retry_path)
                ingest_file(ctx, retry_path, connector="json", chunk=5000)
                sc = drain(engine=ctx.engine, settings=settings).score
                attempts = sorted({r["attempt"] for r in rerun if r.get("ended_at")})
                console.print(
                    f"retry round {round_no}: at evalsvc's request the orchestrator re-ran "
                    f"{sum(1 for r in rerun if r.get('ended_at'))} steps (attempt {', '.join(map(str, attempts))}); "
                    f"their evals: {sc.passed} passed, {sc.failed} failed"
                )
        finally:
            DemoAdapter.orchestrator = None
        with ctx.session() as session:
            _retry_summary(console, session, ctx.project_id, retries=orchestrator.retries)

        with ctx.session() as session:
            _report(console, session, ctx.project_id)
            failed = list_evals(session=session, project_id=ctx.project_id, passed=False, limit=10_000)
            reviews = list_reviews(session=session, project_id=ctx.project_id, status="open")
            a = table(Action).c
            actions = session.execute(
                sa.select(a.kind, a.status, sa.func.count(), sa.func.max(a.last_error))
                .where(a.project_id == ctx.project_id)
                .group_by(a.kind, a.status)
            ).all()
        _failed_table(console, failed)
        console.print(f"\n[bold]review queue[/bold]: {len(reviews)} open items (evalsvc review list --project demo)")
        t = Table("action", "status", "count", "note", title="actions taken")
        for kind, status, n, note in actions:
            t.add_row(kind, status, str(n), note or "")
        console.print(t)
        console.print(
            f"webhook receiver: {len(receiver.received)} signed deliveries verified, "
            f"{receiver.rejected} bad signatures, {receiver.repeats} repeats dropped"
        )

    example = failed[0].run_key if failed else "inv-000001"
    console.print(f"\ndone in {time.perf_counter() - t0:.1f} s. Try next:")
    for line in (
        f"evalsvc runs show {example} --project demo        # a run, its attempts and verdicts",
        "evalsvc evals list --failed --project demo          # every failed eval with its run and step",
        "evalsvc review list --project demo                  # the review queue",
        "evalsvc keys create --project demo && evalsvc serve # the HTTP API at http://127.0.0.1:8000/docs",
    ):
        console.print(f"  {line}", highlight=False)


def _retry_summary(console: Console, session: Session, project_id: int, *, retries: int) -> None:
    """How the extractions that failed their schema ended up, per run."""
    from evalsvc.store.queries import list_evals

    verdicts: dict[str, list[tuple[int, bool | None]]] = {}
    for e in list_evals(session=session, project_id=project_id, evaluator=RETRIED, limit=100_000):
        verdicts.setdefault(e.run_key, []).append((e.attempt, e.passed))
    failed_first = [sorted(v) for v in verdicts.values() if (1, False) in v]
    fixed = sum(1 for v in failed_first if v[-1][1] is True)
    console.print(
        f"retries: {retries} re-runs asked by evalsvc; of the {len(failed_first)} runs whose first extraction failed "
        f"{RETRIED}, {fixed} pass it on a later attempt, {len(failed_first) - fixed} gave up at the retry limit"
    )


def _report(console: Console, session: Session, project_id: int) -> None:
    r, st, e = table(Run).c, table(Step).c, table(EvalResult).c
    run_status: Counter[str] = Counter(
        {
            k: n
            for k, n in session.execute(
                sa.select(r.status, sa.func.count()).where(r.project_id == project_id).group_by(r.status)
            )
        }
    )
    steps, retried = session.execute(
        sa.select(sa.func.count(), sa.func.sum(sa.case((st.attempt > 1, 1), else_=0))).where(
            st.project_id == project_id
        )
    ).one()
    console.print(
        f"runs: {sum(run_status.values())} ({', '.join(f'{n} {k}' for k, n in sorted(run_status.items()))}); "
        f"steps: {steps} attempts, {retried or 0} of them retries"
    )
    rows = session.execute(
        sa.select(
            e.evaluator,
            sa.func.sum(sa.case((e.passed == sa.true(), 1), else_=0)),
            sa.func.sum(sa.case((e.passed == sa.false(), 1), else_=0)),
            sa.func.sum(sa.case((e.status == "skipped", 1), else_=0)),
            sa.func.sum(sa.case((e.status == "error", 1), else_=0)),
        )
        .where(e.project_id == project_id)
        .group_by(e.evaluator)
        .order_by(e.evaluator)
    ).all()
    t = Table("evaluator", "passed", "failed", "pass rate", "skipped", "errors", title="pass rate per evaluator")
    for name, passed, failed, skipped, errors in rows:
        judged = (passed or 0) + (failed or 0)
        rate = f"{100 * (passed or 0) / judged:.1f}%" if judged else "-"
        t.add_row(
            name, str(passed or 0), f"[red]{failed}[/red]" if failed else "0", rate, str(skipped or 0), str(errors or 0)
        )
    console.print(t)


def _failed_table(console: Console, failed: list[EvalPublic]) -> None:
    t = Table("evaluator", "run", "step", "attempt", "why", title=f"failed evals ({len(failed)}; first 12)")
    for e in failed[:12]:
        t.add_row(e.evaluator, e.run_key, e.step_name, str(e.attempt), (e.explanation or "")[:60])
    console.print(t)
