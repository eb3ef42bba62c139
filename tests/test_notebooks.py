"""The notebooks run top to bottom (nbclient) on a store that `evalsvc demo` filled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("nb") / "home"
    env = {**os.environ, "EVALSVC_HOME": str(home)}
    env.pop("EVALSVC_DATABASE_URL", None)
    subprocess.run([sys.executable, "-m", "evalsvc.cli", "demo"], env=env, check=True, capture_output=True,
                   timeout=600)  # fmt: skip
    return home


def test_there_are_notebooks() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"eval_history.ipynb", "failed_eval_trail.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_demo_store(path: Path, demo_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALSVC_HOME", str(demo_home))
    monkeypatch.delenv("EVALSVC_DATABASE_URL", raising=False)
    monkeypatch.setenv("EVALSVC_PROJECT", "demo")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(demo_home)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))  # fmt: skip
    assert "replica refreshed" in text
    if path.stem == "failed_eval_trail":
        assert "invoice_extraction_schema" in text and "retry" in text
