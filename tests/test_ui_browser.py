"""The web UI in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright)
against a real ``evalsvc serve`` process: sign in, open a run with a failed eval, see it marked,
approve its review, see the decision recorded on the run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .factories import SCHEMA_YAML, record
from .serve_process import running_serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run installs it)"),
]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real `evalsvc serve` on a fresh SQLite store, with a failed and a passed eval and a review item."""
    with running_serve(tmp_path) as (base, key):
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
            r = client.post("/v1/evaluators", content=SCHEMA_YAML, headers={"content-type": "application/yaml"})
            assert r.status_code == 200, r.text
            r = client.post("/v1/ingest/json", json=[record("r1", "extract", output={"total": "x"}), record("r2")])
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 60
            while len(client.get("/v1/reviews").json()) < 1:
                assert time.monotonic() < deadline, client.get("/v1/evals").json()
                time.sleep(0.1)
        yield base, key


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
