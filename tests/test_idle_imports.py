"""An idle ``evalsvc serve`` stays small (bench/README.md: idle RSS): the libraries that only some
routes need load with their first use, not with the application.

DuckDB alone is ~50 MB of RSS, numpy ~20 MB, prometheus_client ~12 MB, httpx ~18 MB; this checks
the module graph of a built app with its worker started, in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

LAZY = ("duckdb", "numpy", "pandas", "scipy", "sklearn", "litellm", "prometheus_client", "httpx")

SCRIPT = """
import json, sys
from evalsvc.api.main import create_app
from evalsvc.settings import Settings
app = create_app(Settings(home=sys.argv[1]))
app.state.worker.start()
app.state.worker.stop()
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_app_and_worker_do_not_load_route_only_libraries(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert "fastapi" in loaded and "sqlalchemy" in loaded  # the check sees the real module graph
    assert sorted(loaded.intersection(LAZY)) == []


def test_a_query_loads_duckdb_on_first_use(tmp_path):
    script = SCRIPT.replace(
        "print(",
        "from evalsvc.analytics.query import run_query\n"
        "run_query(settings=Settings(home=sys.argv[1]), project_id=1, sql='SELECT 1')\n"
        "print(",
    )
    from evalsvc.settings import Settings
    from evalsvc.store.db import get_engine, migrate

    migrate(get_engine(Settings(home=tmp_path).resolved_database_url()))
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "duckdb" in set(json.loads(out.strip().splitlines()[-1]))
