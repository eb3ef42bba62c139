"""Deterministic simulator of an invoice-processing agent, for the demo and the tests.

Each run handles one inbound e-mail through five steps, in order: ``classify_email`` (llm),
``extract_invoice`` (llm), ``lookup_vendor`` (tool), ``post_to_ledger`` (tool) and ``draft_reply``
(llm). Failures are planted at fixed rates so the bundled ``evalsvc.yaml`` has work to do:

- ``classify_email`` returns the wrong label in ~6% of runs (``expected`` holds the true label);
- ``extract_invoice`` returns malformed output on attempt 1 in ~8% of runs (text that is not JSON,
  ``total`` as a string like ``"1,204.00"``, or ``total`` missing); attempt 2 (same ``step_key``,
  ``attempt=2``) is valid, except in ~2% of runs where it is still bad; ~1% of extractions carry a
  long PDF attachment and cost more than $0.01;
- ``lookup_vendor`` times out in ~3% of runs: the step fails and the run ends ``failed``;
- ``post_to_ledger`` is slow (4-9 s instead of 100-600 ms) in ~5% of runs;
- ``draft_reply`` leaks an e-mail address or a ``TODO`` in ~4% of runs and is empty in ~1%.

About 10% of runs also report one step's start (status ``running``) before its end, so ingestion
exercises start/end merging. Records are JSON-ready dicts in the generic JSON record shape::

    >>> from evalsvc.demo.simulate import simulate_runs, write_jsonl
    >>> records = simulate_runs(runs=300, seed=7)
    >>> records[0]["run_key"], records[0]["step_key"], records[0]["workflow"]
    ('inv-000001', 'classify_email', 'invoice-agent')
    >>> records == simulate_runs(runs=300, seed=7)
    True
    >>> write_jsonl(records, "/tmp/invoice-agent.jsonl")  # then: POST them, or `evalsvc ingest`
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = ["RATES", "SOURCE", "simulate_runs", "write_jsonl"]

WORKFLOW = "invoice-agent"
SOURCE = "demo"  # the simulated orchestrator (evalsvc/demo/orchestrator.py)
MODEL = "gpt-4o-mini"
USD_PER_INPUT_TOKEN = 0.15 / 1_000_000
USD_PER_OUTPUT_TOKEN = 0.60 / 1_000_000
DEFAULT_START = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)

RATES: dict[str, float] = {
    "misclassified": 0.06,
    "extract_bad_first": 0.08,
    "extract_bad_second_given_first": 0.25,  # 0.08 * 0.25 = ~2% of runs
    "extract_long_attachment": 0.01,
    "lookup_timeout": 0.03,
    "ledger_slow": 0.05,
    "reply_leak": 0.04,
    "reply_empty": 0.01,
    "start_record": 0.10,
}

LABELS = ("invoice", "receipt", "spam", "other")
_VENDORS = (
    ("Acme Industrial Supply", "V-10231", "Dana Whitfield"),
    ("Northwind Traders", "V-10488", "Maria Lopez"),
    ("Globex Logistics", "V-11002", "Tom Becker"),
    ("Initech Software", "V-11377", "Priya Raman"),
    ("Umbrella Facilities", "V-12045", "Jonas Berg"),
    ("Stark Office Products", "V-12310", "Aiko Tanaka"),
    ("Wayne Print & Copy", "V-12996", "Luis Ortega"),
    ("Soylent Catering", "V-13154", "Hannah Novak"),
    ("Hooli Cloud Services", "V-13620", "Sam Okafor"),
    ("Vandelay Imports", "V-14071", "Art Vandelay"),
)
_CURRENCIES = (("USD", 0.6), ("EUR", 0.3), ("GBP", 0.1))
_LEAKS = (
    "If anything is unclear, write to {first}.{last}@{domain}.com directly.",
    "cc: ap-escalations@contoso-finance.com",
    "TODO: confirm the amount with finance before sending.",
    "TODO insert payment reference",
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _cost(input_tokens: int, output_tokens: int) -> float:
    return round(input_tokens * USD_PER_INPUT_TOKEN + output_tokens * USD_PER_OUTPUT_TOKEN, 8)


def _step(run_key: str, step_key: str, kind: str, started: datetime, latency_s: float, **fields: Any) -> dict[str, Any]:
    """An end record: ``fields`` with None values are left out."""
    record: dict[str, Any] = {
        "source": SOURCE,
        "workflow": WORKFLOW,
        "run_key": run_key,
        "step_key": step_key,
        "attempt": 1,
        "name": step_key,
        "kind": kind,
        "status": "completed",
        "started_at": _iso(started),
        "ended_at": _iso(started + timedelta(seconds=latency_s)),
    }
    record.update({k: v for k, v in fields.items() if v is not None})
    return record


def _llm(rng: random.Random, tokens_in: tuple[int, int], tokens_out: tuple[int, int]) -> dict[str, Any]:
    i, o = rng.randint(*tokens_in), rng.randint(*tokens_out)
    return {"model": MODEL, "input_tokens": i, "output_tokens": o, "cost_usd": _cost(i, o)}


def _malformed(rng: random.Random, doc: dict[str, Any]) -> Any:
    variant = rng.choice(("not_json", "total_string", "total_missing"))
    if variant == "not_json":
        return rng.choice(
            (
                (
                    f"Sure! Here are the invoice details:\nVendor: {doc['vendor']}\n"
                    f"Invoice: {doc['invoice_number']}\nTotal: {doc['total']:,.2f} {doc['currency']}"
                ),
                json.dumps(doc)[: rng.randint(20, 60)],  # truncated JSON
            )
        )
    bad = dict(doc)
    if variant == "total_string":
        bad["total"] = f"{doc['total']:,.2f}"
    else:
        del bad["total"]
    return bad


def _email(rng: random.Random, label: str, doc: dict[str, Any], contact: str) -> tuple[str, str]:
    kind = "Invoice" if label == "invoice" else "Receipt"
    subject = f"{kind} {doc['invoice_number']} from {doc['vendor']}"
    due = f"Payment is due by {doc['due_date']}." if label == "invoice" else "Paid in full, thank you."
    body = (
        f"Hello Accounts Payable,\n\nPlease find attached {kind.lower()} {doc['invoice_number']} "
        f"for {doc['currency']} {doc['total']:,.2f} covering services in "
        f"{rng.choice(('January', 'February', 'March', 'Q1'))}. {due}\n\n"
        f"Kind regards,\n{contact}\n{doc['vendor']}"
    )
    return subject, body


def _run(
    rng: random.Random, index: int, started: datetime, clean: dict[tuple[str, str], Any] | None = None
) -> list[dict[str, Any]]:
    run_key = f"inv-{index:06d}"
    vendor, vendor_id, contact = rng.choice(_VENDORS)
    label = "invoice" if rng.random() < 0.9 else "receipt"
    issued = started.date() - timedelta(days=rng.randint(0, 12))
    currency = rng.choices([c for c, _ in _CURRENCIES], [w for _, w in _CURRENCIES])[0]
    doc: dict[str, Any] = {
        "vendor": vendor,
        "invoice_number": f"{'INV' if label == 'invoice' else 'RCT'}-{issued.year}-{rng.randint(1000, 99999):05d}",
        "total": round(rng.uniform(45, 12_500), 2),
        "currency": currency,
        "due_date": date.isoformat(issued + timedelta(days=rng.choice((14, 30, 45, 60)))),
    }
    subject, body = _email(rng, label, doc, contact)
    records: list[dict[str, Any]] = []
    now = started

    def advance(latency_s: float) -> None:
        nonlocal now
        now += timedelta(seconds=latency_s + rng.uniform(0.005, 0.060))

    # 1. classify_email
    predicted = label
    if rng.random() < RATES["misclassified"]:
        predicted = rng.choice([x for x in LABELS if x != label])
    latency = rng.uniform(0.3, 0.9)
    records.append(
        _step(
            run_key,
            "classify_email",
            "llm",
            now,
            latency,
            output=predicted,
            expected=label,
            input={"subject": subject, "body": body[:200]},
            attributes={"prompt_version": "classify-v3"},
            **_llm(rng, (180, 650), (1, 3)),
        )
    )
    advance(latency)

    # 2. extract_invoice (attempt 2 after a malformed attempt 1)
    outputs: list[Any] = [doc]
    if clean is not None:  # what a good extraction returns, for a re-run the simulation did not plan
        clean[(run_key, "extract_invoice")] = doc
    if rng.random() < RATES["extract_bad_first"]:
        second_bad = rng.random() < RATES["extract_bad_second_given_first"]
        outputs = [_malformed(rng, doc), _malformed(rng, doc) if second_bad else doc]
    for attempt, output in enumerate(outputs, start=1):
        attrs: dict[str, Any] = {"prompt_version": "extract-v7"}
        usage = _llm(rng, (600, 1800), (60, 110))
        if rng.random() < RATES["extract_long_attachment"]:  # a 60-page PDF pasted into the prompt
            usage["input_tokens"] = rng.randint(70_000, 95_000)
            usage["cost_usd"] = _cost(usage["input_tokens"], usage["output_tokens"])
            attrs["attachment_pages"] = rng.randint(55, 80)
        latency = rng.uniform(1.2, 3.5) + usage["input_tokens"] / 40_000
        if attempt > 1:
            attrs["retry_reason"] = "parse_error"
        records.append(
            _step(
                run_key,
                "extract_invoice",
                "llm",
                now,
                latency,
                attempt=attempt,
                output=output,
                input={"email_text": f"Subject: {subject}\n\n{body}"},
                attributes=attrs,
                **usage,
            )
        )
        advance(latency)

    # 3. lookup_vendor (a timeout ends the run)
    if rng.random() < RATES["lookup_timeout"]:
        latency = 5.0 + rng.uniform(0.0, 0.05)
        records.append(
            _step(
                run_key,
                "lookup_vendor",
                "tool",
                now,
                latency,
                status="failed",
                run_status="failed",
                input={"vendor_name": vendor},
                attributes={"endpoint": "vendor-registry/search"},
                error={"type": "TimeoutError", "message": "vendor-registry did not answer within 5.0 s"},
            )
        )
        return records
    latency = rng.uniform(0.08, 0.4)
    records.append(
        _step(
            run_key,
            "lookup_vendor",
            "tool",
            now,
            latency,
            input={"vendor_name": vendor},
            output={"vendor_id": vendor_id, "match": "exact"},
            attributes={"endpoint": "vendor-registry/search"},
        )
    )
    advance(latency)

    # 4. post_to_ledger (sometimes slow)
    slow = rng.random() < RATES["ledger_slow"]
    latency = rng.uniform(4.0, 9.0) if slow else rng.uniform(0.1, 0.6)
    records.append(
        _step(
            run_key,
            "post_to_ledger",
            "tool",
            now,
            latency,
            input={
                "vendor_id": vendor_id,
                "invoice_number": doc["invoice_number"],
                "total": doc["total"],
                "currency": currency,
            },
            output={"ledger_entry_id": f"LE-{rng.randint(100000, 999999)}", "status": "posted"},
            attributes={"endpoint": "ledger/entries"},
        )
    )
    advance(latency)

    # 5. draft_reply (sometimes leaks an address or a TODO, rarely empty)
    reply = (
        f"Hi {contact.split()[0]},\n\nThank you for {label} {doc['invoice_number']} for "
        f"{currency} {doc['total']:,.2f}. It has been recorded"
        + (f" and is scheduled for payment by {doc['due_date']}." if label == "invoice" else ".")
        + "\n\nBest regards,\nAccounts Payable"
    )
    draw = rng.random()
    if draw < RATES["reply_empty"]:
        reply = ""
    elif draw < RATES["reply_empty"] + RATES["reply_leak"]:
        first, last = contact.lower().split()[0], contact.lower().split()[-1]
        leak = rng.choice(_LEAKS).format(first=first, last=last, domain=vendor.split()[0].lower())
        reply = reply.replace("\n\nBest regards", f"\n\n{leak}\n\nBest regards")
    usage = _llm(rng, (250, 500), (60, 140))
    latency = rng.uniform(1.5, 4.0)
    records.append(
        _step(
            run_key,
            "draft_reply",
            "llm",
            now,
            latency,
            output=reply,
            run_status="completed",
            input={"to": contact, "vendor": vendor, "invoice_number": doc["invoice_number"]},
            attributes={"prompt_version": "reply-v2"},
            **usage,
        )
    )
    return records


def _start_record(end: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "source",
        "workflow",
        "run_key",
        "step_key",
        "attempt",
        "name",
        "kind",
        "started_at",
        "input",
        "model",
        "attributes",
    )
    return {**{k: end[k] for k in keep if k in end}, "status": "running"}


def simulate_runs(
    *, runs: int = 300, seed: int = 7, start: datetime | None = None, clean: dict[tuple[str, str], Any] | None = None
) -> list[dict[str, Any]]:
    """Records of ``runs`` runs of the invoice agent; the same ``seed`` gives the same records.
    ``clean``, if given, gets the correct output of each run's extraction, by (run key, step key)."""
    rng = random.Random(seed)
    moment = start or DEFAULT_START
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    out: list[dict[str, Any]] = []
    for index in range(1, runs + 1):
        records = _run(rng, index, moment, clean)
        if rng.random() < RATES["start_record"]:
            at = rng.randrange(len(records))
            records.insert(at, _start_record(records[at]))
        records[0]["run_attributes"] = {
            "mailbox": "ap-inbox",
            "customer_tier": rng.choice(("smb", "mid", "enterprise")),
        }
        out.extend(records)
        moment += timedelta(seconds=rng.uniform(20, 180))
    return out


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write one JSON object a line (UTF-8), creating the parent directory if needed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
