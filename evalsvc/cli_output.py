"""How the CLI prints things for a person (tables) or a program (``--json``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

__all__ = ["emit", "print_changes", "print_ingest", "print_run"]


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _short(value: Any, n: int = 80) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = text.replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def _verdict(passed: bool | None, status: str) -> str:
    if status != "completed":
        return f"[yellow]{status}[/yellow]"
    return "[green]pass[/green]" if passed else "[red]FAIL[/red]"


def emit(console: Console, rows: Sequence[BaseModel], as_json: bool, table: Callable[[Sequence[Any]], Table]) -> None:
    if as_json:
        console.print_json(orjson.dumps([r.model_dump(mode="json") for r in rows]).decode())
    elif not rows:
        console.print("nothing found")
    else:
        console.print(table(rows))


def print_ingest(console: Console, report: Any) -> None:
    s = report.summary()
    console.print(f"{s['accepted']} accepted, {s['duplicate']} duplicate, {s['rejected']} rejected")
    shown = 0
    for item in report.items:
        if item.status == "rejected" and shown < 20:
            console.print(
                f"  [red]record {item.index}[/red]: {item.field or '(record)'}: {item.reason}", highlight=False
            )
            shown += 1
    if s["rejected"] > shown:
        console.print(f"  … and {s['rejected'] - shown} more rejected records")


def print_changes(console: Console, changes: Sequence[Any]) -> None:
    t = Table("evaluator", "version", "change")
    for c in changes:
        t.add_row(c.name, c.version, c.change)
    console.print(t)


def evaluators_table(rows: Sequence[Any]) -> Table:
    t = Table("name", "version", "scorer", "target", "sample", "on fail", "active")
    for e in rows:
        d = e.definition
        target = ", ".join(f"{k}={v}" for k, v in (d.get("target") or {}).items() if v)
        t.add_row(
            e.name,
            e.version,
            e.scorer,
            target or "all steps",
            str((d.get("sample") or {}).get("rate", 1)),
            (d.get("on_fail") or {}).get("action", "none"),
            "yes" if e.active else "no",
        )
    return t


def runs_table(rows: Sequence[Any]) -> Table:
    t = Table("run", "source", "workflow", "status", "started", "failed evals")
    for r in rows:
        t.add_row(
            r.run_key,
            r.source,
            r.workflow or "-",
            r.status,
            _ts(r.started_at),
            f"[red]{r.failed_evals}[/red]" if r.failed_evals else "0",
        )
    return t


def evals_table(rows: Sequence[Any]) -> Table:
    t = Table("id", "evaluator", "verdict", "run", "step", "attempt", "explanation")
    for e in rows:
        t.add_row(
            str(e.id),
            e.evaluator,
            _verdict(e.passed, e.status),
            e.run_key,
            e.step_name,
            str(e.attempt),
            _short(e.explanation or e.error or e.skip_reason, 70),
        )
    return t


def actions_table(rows: Sequence[Any]) -> Table:
    t = Table("id", "kind", "status", "target", "attempts", "reason", "result")
    for a in rows:
        result = a.last_error or (
            f"HTTP {a.response.get('status_code')}" if a.response and "status_code" in a.response else "-"
        )
        t.add_row(
            str(a.id), a.kind, a.status, _short(a.target, 40), str(a.attempts), a.reason or "-", _short(result, 50)
        )
    return t


def reviews_table(rows: Sequence[Any]) -> Table:
    t = Table("id", "status", "evaluator", "run", "step", "attempt", "why", "comment")
    for r in rows:
        t.add_row(
            str(r.id),
            r.status,
            r.evaluator or "-",
            r.run_key or "-",
            r.step_key or "-",
            str(r.attempt or "-"),
            _short(r.explanation, 50),
            _short(r.comment, 30),
        )
    return t


def print_run(console: Console, run: Any) -> None:
    console.print(
        f"[bold]run {run.run_key}[/bold] ({run.source}, workflow {run.workflow or '-'}) "
        f"status [bold]{run.status}[/bold], {_ts(run.started_at)} → {_ts(run.ended_at)}, "
        f"{run.failed_evals} failed evals"
    )
    t = Table("step", "attempt", "kind", "status", "latency", "output", "verdicts")
    for s in run.steps:
        verdicts = "\n".join(
            f"{_verdict(v.passed, v.status)} {v.evaluator}"
            + (f": {_short(v.explanation, 60)}" if v.passed is False else "")
            for v in s.verdicts
            if v.status != "skipped"
        )
        latency = f"{s.latency_ms:.0f} ms" if s.latency_ms is not None else "-"
        output = _short(s.error.get("message") if s.error else s.output, 50)
        t.add_row(s.name, str(s.attempt), s.kind, s.status, latency, output, verdicts or "-")
    console.print(t)
    if run.actions:
        console.print("[bold]actions[/bold]")
        console.print(actions_table(run.actions))
