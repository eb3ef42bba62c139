"""Regenerate the web UI's screenshots in docs/img/ (see docs/img/README).

Runs ``evalsvc demo`` on a fresh store in a temporary folder, starts ``evalsvc serve`` on it, signs
in with a new key of the demo project in headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright) and saves one PNG per main page. No network.

    .venv/bin/python docs/img/screenshots.py [--runs 2500] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
from playwright.sync_api import sync_playwright

OUT = Path(__file__).resolve().parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2500, help="runs the demo simulates")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "EVALSVC_HOME": tmp, "EVALSVC_DATABASE_URL": "", "EVALSVC_BROKER_URL": ""}
        cli = [str(Path(sys.executable).with_name("evalsvc"))]  # the console script (see the README)
        subprocess.run([*cli, "demo", "--runs", str(args.runs)], env=env, check=True, stdout=subprocess.DEVNULL)
        # a drift baseline on the older days of extraction steps, checked on the last day (best effort:
        # without it the evaluator page shows its "no data" state)
        now = datetime.now(UTC)
        fit = [
            *cli,
            "drift",
            "fit",
            "extract_prod",
            "--project",
            "demo",
            "--step",
            "extract_invoice",
            "--since",
            (now - timedelta(days=5)).isoformat(),
            "--until",
            (now - timedelta(days=1)).isoformat(),
        ]
        check = [*cli, "drift", "check", "extract_prod", "--project", "demo", "--last", "24h"]
        for cmd in (fit, check):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(f"skipped the drift example: {' '.join(cmd[1:])} failed: {done.stderr[-500:]}\n")
                break
        key = subprocess.run([*cli, "keys", "create", "--project", "demo"], env=env, check=True, text=True,
                             capture_output=True).stdout.strip()  # fmt: skip
        port = _port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            headers = {"authorization": f"Bearer {key}"}
            # a run whose extraction failed its schema check, was retried and has a review item
            evaluator = "invoice_extraction_schema"
            reviews = httpx.get(f"{base}/v1/reviews", headers=headers).json()
            reviewed = {r["run_key"] for r in reviews if r["evaluator"] == evaluator}
            failed = httpx.get(f"{base}/v1/runs", params={"failed_evaluator": evaluator, "limit": 200},
                               headers=headers).json()  # fmt: skip
            run = next((r for r in failed if r["run_key"] in reviewed), failed[0])
            pages = {
                "runs.png": "/ui/runs",
                "run.png": f"/ui/runs/{quote(run['run_key'])}",
                "failed-evals.png": "/ui/evals",
                "reviews.png": "/ui/reviews",
                "evaluator.png": f"/ui/evaluators/{quote(evaluator)}",
            }
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
                page = browser.new_page(viewport={"width": 1360, "height": 900})
                page.goto(f"{base}/ui/login")
                page.fill("input[name=key]", key)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(f"{base}/ui/runs")
                for name, path in pages.items():
                    page.goto(base + path)
                    page.screenshot(path=str(OUT / name), full_page=name == "evaluator.png")
                    sys.stdout.write(f"wrote {OUT / name}\n")
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
