"""The web UI in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright)
against a real ``evalsvc serve`` process: sign in, open a run with a failed eval, see it marked,
approve its review, see the decision recorded on the run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .factories import SCHEMA_YAML, record

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real `evalsvc serve` on a fresh SQLite store, with a failed and a passed eval and a review item."""
    env = {**os.environ, "EVALSVC_HOME": str(tmp_path / "home"), "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": ""}
    key = subprocess.run([sys.executable, "-m", "evalsvc.cli", "keys", "create"], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.strip()  # fmt: skip
    port = _free_port()
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "evalsvc.cli", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
            r = client.post("/v1/evaluators", content=SCHEMA_YAML, headers={"content-type": "application/yaml"})
            assert r.status_code == 200, r.text
            r = client.post("/v1/ingest/json", json=[record("r1", "extract", output={"total": "x"}), record("r2")])
            assert r.status_code == 200, r.text
            while len(client.get("/v1/reviews").json()) < 1:
                assert time.monotonic() < deadline + 60, client.get("/v1/evals").json()
                time.sleep(0.1)
        yield base, key
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_sign_in_open_failed_run_and_approve_its_review(served: tuple[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, key = served
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{base}/ui/runs")
            expect(page).to_have_url(f"{base}/ui/login?next=%2Fui%2Fruns")
            page.fill("input[name=key]", "esk_wrong")
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_test_id("error")).to_contain_text("unknown or revoked API key")
            page.fill("input[name=key]", key)
            page.get_by_role("button", name="Sign in").click()
            expect(page).to_have_url(f"{base}/ui/runs")
            expect(page.get_by_test_id("project")).to_have_text("default")
            expect(page.locator("tr.has-failed")).to_have_count(1)

            # the run with the failed eval: its attempt is marked and open, the verdict says why
            page.click("a:text-is('r1')")
            attempt = page.get_by_test_id("attempt-extract-1")
            expect(attempt).to_have_class("attempt failed")
            expect(attempt).to_have_attribute("open", "")
            expect(attempt.locator("tr.failed")).to_contain_text("total_is_number")
            expect(attempt.locator("tr.failed")).to_contain_text("✗ failed")
            expect(page.get_by_test_id("actions")).to_contain_text("review")
            expect(page.get_by_test_id("reviews")).to_contain_text("open")

            # approve its review from the queue, with a comment
            page.click("nav >> text=Review queue")
            row = page.locator("[data-testid^=review-]")
            expect(row).to_have_count(1)
            row.locator("input[name=reviewer]").fill("ana")
            row.locator("input[name=comment]").fill("total was a typo upstream")
            row.locator("button.approve").click()
            expect(page.get_by_test_id("decided")).to_contain_text("approved with comment “total was a typo upstream”")
            expect(page.get_by_test_id("empty")).to_be_visible()

            # the decision is recorded on the run, beside the actions taken
            page.click("text=Open run r1")
            reviews = page.get_by_test_id("reviews")
            expect(reviews).to_contain_text("approved")
            expect(reviews).to_contain_text("ana")
            expect(reviews).to_contain_text("total was a typo upstream")
            expect(page.get_by_test_id("actions")).to_contain_text("succeeded")

            # sign out: the pages ask for a key again
            page.get_by_role("button", name="Sign out").click()
            expect(page).to_have_url(f"{base}/ui/login")
        finally:
            browser.close()
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}) as client:
        (review,) = client.get("/v1/reviews", params={"status": "all"}).json()
    assert (review["status"], review["reviewer"], review["comment"]) == ("approved", "ana", "total was a typo upstream")
