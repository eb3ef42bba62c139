"""`evalsvc gate` and `evalsvc baseline`: the CI gate (docs/ci.md).

$ evalsvc baseline promote main --from baseline.jsonl --config evalsvc.yaml
$ evalsvc baseline promote production --from production --evaluator answer_ok --step answer --since 2026-11-01
$ evalsvc baseline show main
$ evalsvc gate --candidate candidate.jsonl --baseline main --config evalsvc.yaml --junit gate.xml --markdown gate.md
$ evalsvc gate --candidate store --attr release=rc-42 --baseline main --config evalsvc.yaml

Exit codes of `gate`: 0 pass, 1 regression, 2 inconclusive (0 with EVALSVC_GATE_FAIL_ON_INCONCLUSIVE=false),
3 error (judge outage, too many scorer errors, no items), 4 configuration or baseline problem; `--mode shadow`
reports the same and exits 0.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.markup import escape
from typer.core import TyperCommand

from evalsvc.errors import EvalServiceError, InvalidInput
from evalsvc.times import as_utc

from .cli import Ctx, JsonOpt, ProjectOpt, app, console, err

__all__ = ["baseline_app", "gate"]

baseline_app = typer.Typer(help="Pinned baselines of the CI gate (docs/ci.md).", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")

_Config = Annotated[Path, typer.Option("--config", "-c", help="The evaluators file (the same as production).")]
_Connector = Annotated[str, typer.Option(help="Connector that reads the file (json, otlp, temporal, ...).")]


class Mode(StrEnum):
    enforce = "enforce"
    shadow = "shadow"


class _GateCommand(TyperCommand):
    """A usage error (a missing or unknown option) exits 4, a configuration problem, never 2, which
    is the INCONCLUSIVE verdict's code (and may be allowed to fail in CI)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:
            if getattr(exc, "exit_code", None) == 2:
                exc.exit_code = 4  # type: ignore[attr-defined]
                console.print("verdict: CONFIG ERROR (exit 4)", highlight=False)
            raise


@app.command(cls=_GateCommand)
def gate(
    candidate: Annotated[
        str,
        typer.Option(
            help="Step records of the changed code on the dataset (a JSONL file, ...), or `store`: "
            "runs already ingested, picked by --run, --workflow, --attr, --since, --until."
        ),
    ],
    baseline: Annotated[str, typer.Option(help="Name of the pinned baseline to compare with.")],
    config: _Config = Path("evalsvc.yaml"),
    connector: _Connector = "json",
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write a Markdown pull-request comment here.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full result as JSON here.")] = None,
    mode: Annotated[
        Mode, typer.Option(help="enforce: exit with the verdict's code; shadow: report, exit 0.")
    ] = Mode.enforce,
    run: Annotated[list[str] | None, typer.Option("--run", help="store: this run key (repeatable).")] = None,
    workflow: Annotated[str | None, typer.Option(help="store: runs of this workflow.")] = None,
    attr: Annotated[
        list[str] | None, typer.Option("--attr", help="store: runs whose run attribute KEY is VALUE (KEY=VALUE).")
    ] = None,
    since: Annotated[datetime | None, typer.Option(help="store: runs started at or after (ISO; UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="store: runs started before (ISO; UTC).")] = None,
    project: ProjectOpt = "default",
) -> None:
    """Score a candidate with the configured evaluators and compare it with a baseline, item by item.
    Example: `evalsvc gate --candidate candidate.jsonl --baseline main --config evalsvc.yaml --junit gate.xml`;
    runs already in the store: `evalsvc gate --candidate store --attr release=rc-42 --baseline main`."""
    from evalsvc.gate.report import print_result, to_json, to_markdown, write_junit
    from evalsvc.gate.run import run_gate

    shadow = mode is Mode.shadow
    outputs = {"junit": junit, "markdown": markdown, "json_out": json_out}
    try:
        chosen = _candidate(candidate, runs=run or [], workflow=workflow, attrs=attr or [], since=since, until=until)
        ctx = Ctx(project)
        status = (
            err.status("scoring the candidate and comparing it with the baseline") if err.is_terminal else nullcontext()
        )
        with status:
            result = run_gate(engine=ctx.engine, project_id=ctx.project_id, config=config, candidate=chosen,
                              baseline=baseline, connector=connector,
                              fail_on_inconclusive=ctx.settings.gate_fail_on_inconclusive)  # fmt: skip
    except EvalServiceError as exc:
        code = 4 if 400 <= exc.http_status < 500 else 3
        _stop(f"{exc.message}" + (f" [{exc.field}]" if getattr(exc, "field", None) else ""), code, shadow, outputs)
    except Exception as exc:  # the store or a scorer broke: an error, never a verdict
        _stop(f"{type(exc).__name__}: {exc}", 3, shadow, outputs)
    result.mode = mode.value
    print_result(console, result)
    try:
        if junit:
            write_junit(result, junit)
        if markdown:
            markdown.write_text(to_markdown(result, run_url=ctx.settings.gate_run_url), encoding="utf-8")
        if json_out:
            json_out.write_bytes(to_json(result))
    except OSError as exc:
        _stop(f"cannot write the report: {exc}", 4, shadow)
    raise typer.Exit(0 if shadow else result.exit_code)


def _candidate(
    value: str,
    *,
    runs: list[str],
    workflow: str | None,
    attrs: list[str],
    since: datetime | None,
    until: datetime | None,
) -> Any:
    """A file, or with ``store`` the stored runs the selectors pick (a selector without ``store``
    is a mistake: said, exit 4)."""
    from evalsvc.gate.candidate import StoredRuns

    selectors = bool(runs or workflow or attrs or since or until)
    if value != "store":
        if selectors:
            raise InvalidInput("--run, --workflow, --attr, --since and --until pick stored runs; "
                               "use them with --candidate store", field="candidate")  # fmt: skip
        return Path(value)
    pairs = []
    for text in attrs:
        key, sep, val = text.partition("=")
        if not sep or not key:
            raise InvalidInput(f"must be KEY=VALUE, got {text!r}", field="attr")
        pairs.append((key, val))
    return StoredRuns(runs=tuple(runs), workflow=workflow, attributes=tuple(pairs), since=as_utc(since),
                      until=as_utc(until))  # fmt: skip


def _stop(message: str, code: int, shadow: bool, outputs: dict[str, Path | None] | None = None) -> NoReturn:
    from evalsvc.gate.report import write_error_reports

    kind = "CONFIG ERROR" if code == 4 else "ERROR"
    err.print(f"[red]error[/red] {escape(message)}", highlight=False, soft_wrap=True)
    if outputs:
        try:
            write_error_reports(verdict=kind, code=code, message=message, mode="shadow" if shadow else "enforce",
                                **outputs)  # fmt: skip
        except OSError as exc:
            err.print(f"[red]error[/red] cannot write the report: {escape(str(exc))}", highlight=False, soft_wrap=True)
    if shadow:
        console.print(f"verdict: {kind} (shadow mode: would exit {code}; exits 0)", highlight=False)
        raise typer.Exit(0)
    console.print(f"verdict: {kind} (exit {code})", highlight=False)
    raise typer.Exit(code)


@baseline_app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="Baseline name, e.g. main or production.")],
    source: Annotated[str, typer.Option("--from", help="A file of step records, or `production`.")],
    config: _Config = Path("evalsvc.yaml"),
    connector: _Connector = "json",
    evaluator: Annotated[list[str] | None, typer.Option(help="production: this evaluator (repeatable).")] = None,
    step: Annotated[str | None, typer.Option(help="production: step name (glob).")] = None,
    since: Annotated[datetime | None, typer.Option(help="production: from this time (ISO; UTC without zone).")] = None,
    until: Annotated[datetime | None, typer.Option(help="production: up to this time, excluded.")] = None,
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Pin a set of results as a baseline (a new version of NAME). Example:
    `evalsvc baseline promote main --from baseline.jsonl --config evalsvc.yaml`."""
    from evalsvc.gate.baselines import promote_outcomes, promote_production
    from evalsvc.gate.candidate import read_steps, score_steps
    from evalsvc.gate.config import load_gate_config

    if not name or len(name) > 128:
        raise InvalidInput("must be 1 to 128 characters", field="name")
    ctx = Ctx(project, create=True)
    if source == "production":
        promote_production(engine=ctx.engine, project_id=ctx.project_id, name=name, evaluators=evaluator or None,
                           step=step, since=as_utc(since), until=as_utc(until))  # fmt: skip
    else:
        if evaluator or step or since or until:
            raise InvalidInput("--evaluator, --step, --since and --until select production results; "
                               "use them with --from production", field="from")  # fmt: skip
        path = Path(source)
        specs, gate_cfg = load_gate_config(config)
        steps = read_steps(path, connector=connector)
        repeats = {s.name: gate_cfg.of(s.name).repeats for s in specs}
        outcomes = score_steps(engine=ctx.engine, project_id=ctx.project_id, specs=specs, steps=steps,
                               repeats=repeats)  # fmt: skip
        import hashlib

        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        promote_outcomes(engine=ctx.engine, project_id=ctx.project_id, name=name, outcomes=outcomes,
                         versions={s.name: s.version() for s in specs},
                         description={"file": str(path), "sha256": digest, "connector": connector,
                                      "config": str(config)})  # fmt: skip
    _show(ctx, name, as_json)


@baseline_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Baseline name.")],
    project: ProjectOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """The newest version of a baseline: where it came from, per evaluator its items and rates.
    Example: `evalsvc baseline show main`."""
    _show(Ctx(project), name, as_json)


def _show(ctx: Ctx, name: str, as_json: bool) -> None:
    from rich.table import Table

    from evalsvc.gate.baselines import show_baseline

    info = show_baseline(engine=ctx.engine, project_id=ctx.project_id, name=name)
    if as_json:
        console.print_json(orjson.dumps(info).decode())
        return
    console.print(f"baseline [bold]{info['name']}[/bold] v{info['version']} ({info['source']}, "
                  f"{info['items']} verdicts, {info['created_at']})", highlight=False)  # fmt: skip
    console.print(f"from {orjson.dumps(info['description']).decode()}", highlight=False)
    table = Table("evaluator", "version", "items", "pass rate", "mean value")
    for e in info["evaluators"]:
        rate = "-" if e["pass_rate"] is None else f"{e['pass_rate']:.1%}"
        mean = "-" if e["mean_value"] is None else f"{e['mean_value']:.3f}"
        table.add_row(e["evaluator"], e["version"], str(e["items"]), rate, mean)
    console.print(table)
