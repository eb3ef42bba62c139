"""`evalsvc drift ...`: fit statistical baselines from the store's history and check windows for drift.

$ evalsvc drift fit extract_prod --step extract_invoice --since 2026-11-01 --until 2026-11-08
$ evalsvc drift check extract_prod --last 24h
$ evalsvc drift check extract_prod --model gpt-4o-2024-11-20 --exit-code
$ evalsvc drift list
$ evalsvc drift reports --drifted
$ evalsvc drift pin extract_prod 3
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from evalsvc.errors import InvalidInput

from .cli import Ctx, JsonOpt, ProjectOpt, app, console

__all__ = ["drift_app"]

drift_app = typer.Typer(help="Statistical baselines and drift checks (docs/drift.md).", no_args_is_help=True)
app.add_typer(drift_app, name="drift")

_Step = Annotated[str | None, typer.Option(help="Step name (glob).")]
_Workflow = Annotated[str | None, typer.Option(help="Workflow (glob).")]
_Kind = Annotated[str | None, typer.Option(help="Step kind (glob), e.g. llm.")]
_Model = Annotated[str | None, typer.Option(help="Model / model version (glob).")]
_Source = Annotated[str | None, typer.Option(help="Record source (glob).")]
_Status = Annotated[str | None, typer.Option(help="Step status (glob; default: every end state).")]
_Attr = Annotated[list[str] | None, typer.Option("--attr", help="Attribute match KEY=GLOB (repeatable).")]
_Since = Annotated[datetime | None, typer.Option(help="History from this time (ISO; UTC when no zone).")]
_Until = Annotated[datetime | None, typer.Option(help="History up to this time, excluded.")]
_Last = Annotated[str | None, typer.Option(help="History of the last 30m, 24h, 7d... (instead of --since).")]
_Runs = Annotated[list[str] | None, typer.Option("--run", help="A pinned run key (repeatable).")]


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=value.tzinfo or UTC)


def _window(since: datetime | None, until: datetime | None, last: str | None, runs: list[str] | None) -> Any:
    from pydantic import ValidationError

    from evalsvc.pipeline.baselines import HistorySpec

    try:
        spec = HistorySpec(since=since, until=until, last=last, runs=runs or [])
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        raise InvalidInput(e["msg"].removeprefix("Value error, "), field=str(e["loc"][0])) from None
    return spec.window(now=datetime.now(UTC))


def _attrs(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, pattern = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{item!r} is not KEY=GLOB", field="attr")
        out[key] = pattern
    return out


@drift_app.command("fit")
def drift_fit(
    name: Annotated[
        str | None, typer.Argument(help="Baseline name; a new fit is a new version. With --config: only this one.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Fit the `baselines` of this file (evalsvc.yaml) instead of the options.")
    ] = None,
    step: _Step = None,
    workflow: _Workflow = None,
    kind: _Kind = None,
    model: _Model = None,
    source: _Source = None,
    status: _Status = None,
    attr: _Attr = None,
    since: _Since = None,
    until: _Until = None,
    last: _Last = None,
    run: _Runs = None,
    numeric: Annotated[
        list[str] | None,
        typer.Option(help="Numeric feature (repeatable): latency_ms, tokens, cost_usd, output_length, output.score..."),
    ] = None,
    categorical: Annotated[list[str] | None, typer.Option(help="Label path (repeatable), e.g. output.label.")] = None,
    text: Annotated[list[str] | None, typer.Option(help="Text path (repeatable), e.g. output.reply.")] = None,
    anomaly: Annotated[
        list[str] | None, typer.Option(help="Feature of the per-step anomaly model (repeatable).")
    ] = None,
    no_anomaly: Annotated[bool, typer.Option("--no-anomaly", help="Fit no anomaly model.")] = False,
    pin: Annotated[bool, typer.Option("--pin", help="Pin the new version (it stays current).")] = False,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Fit a baseline on a target's history and store it as a new version.

    Example: `evalsvc drift fit extract_prod --step extract_invoice --last 7d --categorical output.currency`,
    or `evalsvc drift fit --config evalsvc.yaml` for the file's `baselines`.
    """
    from pydantic import ValidationError

    from evalsvc.pipeline.baselines import BaselineTarget, fit_baseline
    from scorers.stats import ProfileSpec

    ctx = Ctx(project)
    if config is not None:
        _fit_config(ctx, config, name, pin=pin, as_json=as_json)
        return
    if name is None:
        raise InvalidInput("name the baseline, or give --config FILE", field="name")
    target = BaselineTarget(step=step, workflow=workflow, kind=kind, model=model, source=source, status=status,
                            attributes=_attrs(attr))  # fmt: skip
    spec_data: dict[str, Any] = {"categorical": categorical or [], "text": text or []}
    if numeric:
        spec_data["numeric"] = numeric
    if no_anomaly:
        spec_data["anomaly"] = []
    elif anomaly:
        spec_data["anomaly"] = anomaly
    try:
        spec = ProfileSpec.model_validate(spec_data)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        raise InvalidInput(e["msg"].removeprefix("Value error, "), field=str(e["loc"][0])) from None
    row = fit_baseline(engine=ctx.engine, project_id=ctx.project_id, name=name, target=target,
                       window=_window(since, until, last, run), spec=spec, settings=ctx.settings, pin=pin)  # fmt: skip
    if as_json:
        console.print_json(row.model_dump_json())
        return
    _print_fit(row, spec.anomaly)


def _fit_config(ctx: Ctx, path: Path, name: str | None, *, pin: bool, as_json: bool) -> None:
    from evalsvc.pipeline.baselines import fit_baseline, parse_baselines

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="config") from None
    configs = parse_baselines(text, source=str(path))
    if name is not None:
        configs = [c for c in configs if c.name == name]
        if not configs:
            raise InvalidInput(f"{path} has no baseline named {name!r}", field="name")
    now = datetime.now(UTC)
    windows = [c.history.window(now=now) for c in configs]  # every entry checked before any is fitted
    rows = [
        fit_baseline(
            engine=ctx.engine,
            project_id=ctx.project_id,
            name=c.name,
            target=c.target,
            window=w,
            spec=c.spec(),
            settings=ctx.settings,
            pin=pin,
        )
        for c, w in zip(configs, windows, strict=True)
    ]
    if as_json:
        console.print_json(orjson.dumps([r.model_dump(mode="json") for r in rows]).decode())
        return
    for row, c in zip(rows, configs, strict=True):
        _print_fit(row, c.anomaly)


def _print_fit(row: Any, anomaly: list[str]) -> None:
    if row.anomaly_min_p is not None:
        note = (f"; anomaly model on {', '.join(row.anomaly_features)} (smallest p-value {row.anomaly_min_p:.2g}: "
                "a step_anomaly alpha below it never flags)")  # fmt: skip
    else:
        note = "; no anomaly model" + (" (too few steps with its features)" if anomaly else "")
    console.print(f"baseline {row.name} v{row.version}: fitted on {row.n_steps} steps{note}", highlight=False)


@drift_app.command("check")
def drift_check(
    name: Annotated[str | None, typer.Argument(help="Baseline (default: every baseline of the project).")] = None,
    version: Annotated[int | None, typer.Option(help="Baseline version (default: the current one).")] = None,
    step: _Step = None,
    workflow: _Workflow = None,
    kind: _Kind = None,
    model: _Model = None,
    source: _Source = None,
    since: _Since = None,
    until: _Until = None,
    last: _Last = None,
    run: _Runs = None,
    alpha: Annotated[float | None, typer.Option(help="Significance level (default EVALSVC_DRIFT_ALPHA).")] = None,
    psi_threshold: Annotated[float | None, typer.Option(help="PSI threshold (default 0.2).")] = None,
    store: Annotated[bool, typer.Option(help="Store the reports.")] = True,
    exit_code: Annotated[bool, typer.Option("--exit-code", help="Exit with 1 when anything drifted.")] = False,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Compare a window (default: the last EVALSVC_DRIFT_WINDOW_HOURS) with a baseline; the target's
    fields given here override the baseline's (e.g. another model version).

    Example: `evalsvc drift check extract_prod --model gpt-4o-2024-11-20 --last 24h`.
    """
    from evalsvc.pipeline.drift import check_drift

    ctx = Ctx(project)
    if name is None:
        from evalsvc.pipeline.baselines import list_baselines

        with ctx.session() as session:
            names = sorted({b.name for b in list_baselines(session=session, project_id=ctx.project_id)})
        if not names:
            raise InvalidInput("the project has no baseline; fit one with `evalsvc drift fit`", field="name")
    else:
        names = [name]
    overrides = {"step": step, "workflow": workflow, "kind": kind, "model": model, "source": source}
    window = _window(since, until, last, run)
    checks = [
        check_drift(
            engine=ctx.engine,
            project_id=ctx.project_id,
            name=n,
            settings=ctx.settings,
            version=version,
            overrides=overrides,
            window=window,
            alpha=alpha,
            psi_threshold=psi_threshold,
            store=store,
        )
        for n in names
    ]
    if as_json:
        console.print_json(orjson.dumps([c.model_dump(mode="json") for c in checks]).decode())
    else:
        for c in checks:
            _print_check(c)
    if exit_code and any(c.drifted for c in checks):
        raise typer.Exit(1)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def _reports_table(rows: Any, *, full: bool = True) -> Table:
    head = ["baseline", "checked at"] if full else []
    t = Table(*head, "feature", "statistic", "value", "p-value", "threshold", "drifted", "n base", "n window",
              "examples")  # fmt: skip
    for r in rows:
        skipped = (r.detail or {}).get("skipped")
        verdict = (
            "[yellow]not tested[/yellow]" if skipped else ("[red]DRIFT[/red]" if r.drifted else "[green]no[/green]")
        )
        examples = ", ".join(e["run_key"] for e in (r.example_runs or [])[:3]) or "-"
        first = [f"{r.baseline} v{r.baseline_version}", r.created_at.strftime("%Y-%m-%d %H:%M:%S")] if full else []
        t.add_row(*first, r.feature, r.statistic, _fmt(r.value), _fmt(r.p_value), _fmt(r.threshold), verdict,
                  str(r.n_baseline), str(r.n_window), examples)  # fmt: skip
    return t


def _print_check(check: Any) -> None:
    target = ", ".join(f"{k}={v}" for k, v in check.target.items()) or "all steps"
    window = check.window
    span = f"{window.get('since', '…')} → {window.get('until', '…')}"
    untested = all((r.detail or {}).get("skipped") for r in check.reports)
    head = "DRIFT" if check.drifted else ("too few steps to test" if untested else "no drift")
    console.print(
        f"{check.baseline} v{check.baseline_version} vs window {span} ({target}; {check.n_window} steps): {head}"
        f" [dim](check {check.check_id})[/dim]",
        highlight=False,
    )
    if not untested:
        console.print(_reports_table(check.reports, full=False))


@drift_app.command("list")
def drift_list(
    name: Annotated[str | None, typer.Argument(help="Only this baseline's versions.")] = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Baselines and their versions (the current one marked)."""
    from evalsvc.pipeline.baselines import list_baselines

    from . import cli_output as out

    ctx = Ctx(project)
    with ctx.session() as session:
        rows = list_baselines(session=session, project_id=ctx.project_id, name=name)

    def table(rows: Any) -> Table:
        t = Table("name", "version", "current", "pinned", "steps", "target", "history", "fitted at")
        for r in rows:
            t.add_row(r.name, str(r.version), "yes" if r.current else "", "pinned" if r.pinned else "",
                      str(r.n_steps), _json(r.target), _json(r.window), r.created_at.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
        return t

    out.emit(console, rows, as_json, table)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode() if value else "-"


@drift_app.command("reports")
def drift_reports(
    baseline: Annotated[str | None, typer.Option(help="Only this baseline.")] = None,
    check_id: Annotated[str | None, typer.Option(help="Only this check.")] = None,
    drifted: Annotated[bool, typer.Option("--drifted", help="Only drifted features.")] = False,
    limit: int = 50,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Stored drift reports, newest first. Example: `evalsvc drift reports --drifted`."""
    from evalsvc.pipeline.drift import list_reports

    from . import cli_output as out

    ctx = Ctx(project)
    with ctx.session() as session:
        rows = list_reports(session=session, project_id=ctx.project_id, baseline=baseline, check_id=check_id,
                            drifted=True if drifted else None, limit=limit)  # fmt: skip
    out.emit(console, rows, as_json, _reports_table)


@drift_app.command("pin")
def drift_pin(
    name: Annotated[str, typer.Argument(help="Baseline.")],
    version: Annotated[int | None, typer.Argument(help="Version to pin; leave out with --unpin.")] = None,
    unpin: Annotated[bool, typer.Option("--unpin", help="Unpin: the latest version is current again.")] = False,
    project: ProjectOpt = "default",
) -> None:
    """Pin a baseline version: scorers and checks use it, whatever is fitted later.

    Example: `evalsvc drift pin extract_prod 3`.
    """
    from evalsvc.pipeline.baselines import pin_baseline

    if (version is None) != unpin:
        raise InvalidInput("give a VERSION to pin, or --unpin", field="version")
    ctx = Ctx(project)
    with ctx.session() as session:
        row = pin_baseline(session=session, project_id=ctx.project_id, name=name, version=version)
    console.print(f"{name}: v{row.version} pinned" if row else f"{name}: unpinned (the latest version is current)")
