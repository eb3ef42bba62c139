"""A real `evalsvc serve` process on a fresh SQLite store, for tests that use the service as a user would.

with running_serve(tmp_path) as (base, key):
    httpx.get(f"{base}/v1/runs", headers={"authorization": f"Bearer {key}"})
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def running_serve(
    tmp_path: Path, env: dict[str, str] | None = None, *, start_timeout: float = 120.0, check_shutdown: bool = False
) -> Iterator[tuple[str, str]]:
    """Create a key, start `evalsvc serve` on a free port, wait until it answers; yield (base URL, key).

    With ``check_shutdown`` the process must stop cleanly on SIGTERM (uvicorn re-raises the signal
    after a clean shutdown, so -SIGTERM counts as clean)."""
    full_env = {**os.environ, "EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "",
                "EVALSVC_BROKER_URL": "", **(env or {})}  # fmt: skip
    key = subprocess.run([sys.executable, "-m", "evalsvc.cli", "keys", "create"], env=full_env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip()  # fmt: skip
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "evalsvc.cli", "serve", "--port", str(port)], env=full_env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout  # a busy machine starts slowly
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield base, key
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
        if check_shutdown:
            assert code in (0, -signal.SIGTERM), log_path.read_text()
            assert "Application shutdown complete" in log_path.read_text()
