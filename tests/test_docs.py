"""The documentation stays true: generated pages are current, and every setting and CLI command
that README.md and docs/*.md name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from evalsvc.cli import app
from evalsvc.settings import Settings, settings_markdown

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PAGES = [README, *DOCS]

SHELL_LANGS = {"sh", "bash", "shell", "console"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
ENV_VAR = re.compile(r"\bEVALSVC_[A-Z0-9_]*[A-Z0-9]")
CLI_CALL = re.compile(r"\bevalsvc[ \t]+([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _fences(text: str) -> list[tuple[str, str]]:
    return [(lang.lower(), body) for lang, body in FENCE.findall(text)]


def _commands(lang: str, body: str) -> list[str]:
    """The shell commands of one fenced block (prompts and comments dropped)."""
    out = []
    for raw in body.splitlines():
        line = raw.strip()
        if lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _code(text: str) -> list[str]:
    """Shell and text blocks and inline code spans: where documentation names commands."""
    blocks = [body for lang, body in _fences(text) if lang in SHELL_LANGS | {"text", ""}]
    prose = FENCE.sub("", text)
    return blocks + INLINE_CODE.findall(prose)


def _cli_paths() -> list[tuple[str, ...]]:
    """Distinct command paths (``("runs", "show")``, ``("serve",)``) named in the docs."""
    commands = getattr(typer.main.get_command(app), "commands", {})
    paths: set[tuple[str, ...]] = set()
    for page in PAGES:
        for snippet in _code(_text(page)):
            for first, second in CLI_CALL.findall(snippet):
                is_group = hasattr(commands.get(first), "commands")  # a typer group, e.g. `runs`
                if is_group and second:
                    paths.add((first, second))
                else:
                    paths.add((first,))
    return sorted(paths)


CLI_PATHS = _cli_paths()


def test_configuration_page_is_generated() -> None:
    page = ROOT / "docs" / "configuration.md"
    assert _text(page) == settings_markdown(), "docs/configuration.md is stale: run `make docs`"


def test_every_documented_variable_is_a_setting() -> None:
    known = {f"EVALSVC_{name.upper()}" for name in Settings.model_fields} | {"EVALSVC_PROJECT"}
    unknown = {
        f"{page.relative_to(ROOT)}: {var}"
        for page in PAGES
        for var in ENV_VAR.findall(_text(page))
        if var not in known and not var.startswith("EVALSVC_TEST_")
    }
    assert not unknown, f"variables that evalsvc.settings.Settings does not know: {sorted(unknown)}"


def test_readme_opens_with_demo_then_test() -> None:
    first_two = _fences(_text(README))[:2]
    assert [lang for lang, _ in first_two] == ["sh", "sh"], "the README must open with two sh blocks"
    commands = [cmd for lang, body in first_two for cmd in _commands(lang, body)]
    assert commands == ["make demo", "make test"]


def test_ci_runs_make_test() -> None:
    script = _text(ROOT / ".ci" / "run")
    calls = [line.strip() for line in script.splitlines() if not line.strip().startswith("#")]
    assert "make test" in calls, ".ci/run must call `make test`, the README's test command"


def test_docs_name_the_main_commands() -> None:
    expected = {("demo",), ("serve",), ("ingest",), ("runs", "show"), ("evals", "list"), ("review", "approve")}
    assert expected <= set(CLI_PATHS), f"command extraction found only {CLI_PATHS}"


@pytest.mark.parametrize("path", CLI_PATHS, ids=[" ".join(p) for p in CLI_PATHS])
def test_documented_command_exists(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"`evalsvc {' '.join(path)} --help` failed:\n{result.output}"
