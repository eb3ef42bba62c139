"""OTLP trace ingest throughput of evalsvc (protobuf and JSON) next to the generic JSON ingest.

For each store it starts ``evalsvc serve`` as a real subprocess on a fresh store, applies three
rule evaluators (so that every finished span gets its evaluations scheduled), and posts the same
GenAI spans three ways, one httpx client, sequentially, in batches of ``--batch`` spans (512 is the
OTel SDK's ``BatchSpanProcessor`` default):

- ``OTLP protobuf``: ``POST /v1/traces``, ``application/x-protobuf`` (what the OTel SDK exporters send);
- ``OTLP JSON``: ``POST /v1/traces``, ``application/json`` (OTLP/JSON);
- ``generic JSON``: ``POST /v1/ingest/json`` with the step records the connector makes of the
  same spans (same run keys, steps, content, tokens and attributes).

Each way gets its own project (its own key), so every span is new to the store. Bodies are encoded
before the clock starts; the clock covers the round trips (send, decode, translate, validate,
store, schedule evaluations, answer). The service uses the Celery runner on a private Redis queue
that no worker consumes: evaluations are *scheduled* (pending rows written, their ids sent to the
broker) but not scored, so the figure is ingest + scheduling alone (scoring is
``bench/ingest.py``'s subject). With ``--runner inprocess`` the service scores in its own
background thread instead, which competes for the same core.

The peak RSS of ``serve`` (``VmHWM``) is read after all three ways ran.

    $ .venv/bin/python bench/otlp.py                        # 100,000 spans per way, SQLite
    $ .venv/bin/python bench/otlp.py --spans 20000 --store both
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from ingest import DEFAULT_PG_URL, _cpu_seconds, _evalsvc_exe, _free_port, _rss_mb, cli, service_env
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from connectors.otlp import OtlpConnector

TARGET_SPANS_PER_S = 11_000
TARGET_RSS_MB = 400
WAY_OPTIONS = {"OTLP protobuf": "protobuf", "OTLP JSON": "json", "generic JSON": "generic"}
REDIS_URL = "redis://127.0.0.1:6379/12"
BASE_NS = 1_795_000_000_000_000_000

EVALUATORS_YAML = r"""
evaluators:
  - name: answer_not_empty
    scorer: not_empty
    target: {kind: llm}
    params: {field: output.0.content}
  - name: answer_no_email
    scorer: regex
    target: {kind: llm}
    params:
      pattern: '[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}'
      must_match: false
      field: output.0.content
  - name: span_latency
    scorer: max_latency_ms
    params: {max_ms: 3000}
"""

# ---- spans ------------------------------------------------------------------------------------


def _kv(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    if isinstance(value, list):
        return {"key": key, "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}}}
    return {"key": key, "value": {"stringValue": value}}


def _span(trace: str, span: str, parent: str | None, name: str, start: int, ms: int, attrs: dict[str, Any],
          error: bool = False) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {
        "traceId": trace,
        "spanId": span,
        "name": name,
        "kind": 3 if attrs.get("gen_ai.operation.name") == "chat" else 1,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + ms * 1_000_000),
        "attributes": [_kv(k, v) for k, v in attrs.items()],
        "status": {"code": 2, "message": "upstream timeout"} if error else {"code": 0},
    }
    if parent:
        out["parentSpanId"] = parent
    if error:
        out["events"] = [{"name": "exception", "timeUnixNano": str(start), "attributes": [
            _kv("exception.type", "TimeoutError"), _kv("exception.message", "weather API timed out")]}]  # fmt: skip
    return out


def make_export(start: int, count: int) -> dict[str, Any]:
    """Spans ``start .. start+count`` of a deterministic stream, as one OTLP/JSON export: 5 spans per
    trace (an agent, three chat completions with GenAI messages and usage, a tool call), in the
    order a BatchSpanProcessor sends them (children first)."""
    spans = []
    for i in range(start, start + count):
        t, k = divmod(i, 5)
        trace = f"{t + 1:032x}"
        root = f"{t * 8 + 1:016x}"
        sid = f"{t * 8 + 2 + k:016x}"
        t0 = BASE_NS + t * 9_000_000_000 + k * 1_500_000_000
        if k == 4:
            spans.append(_span(trace, root, None, "invoke_agent weather-agent", t0 - 6_000_000_000, 7000, {
                "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "weather-agent",
                "gen_ai.conversation.id": f"conv-{t // 3:07d}"}))  # fmt: skip
            continue
        if k == 1:
            tool: dict[str, Any] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather",
                     "gen_ai.tool.call.id": f"call_{t:07d}", "gen_ai.tool.call.arguments": '{"city":"Paris"}',
                     "gen_ai.tool.call.result": '{"temp_c":21,"sky":"clear"}'}  # fmt: skip
            spans.append(_span(trace, sid, root, "execute_tool get_weather", t0, 120 + i % 300, tool,
                               error=t % 40 == 7))  # fmt: skip
            continue
        answer = f"It is 21 degrees and clear in Paris (request {i})."
        if t % 27 == 4 and k == 3:
            answer += " Write to weather-desk@example.com for details."
        elif t % 101 == 9 and k == 3:
            answer = ""
        tin, tout = 300 + i % 700, 40 + i % 200
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4.1-nano",
            "gen_ai.response.model": "gpt-4.1-nano-2025-04-14",
            "gen_ai.response.id": f"chatcmpl-{i:010d}",
            "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.usage.input_tokens": tin,
            "gen_ai.usage.output_tokens": tout,
            "server.address": "api.openai.com",
            "server.port": 443,
            "gen_ai.input.messages": orjson.dumps([
                {"role": "system", "parts": [{"type": "text", "content": "You are a weather assistant."}]},
                {"role": "user", "parts": [{"type": "text", "content": f"Weather in Paris? ({t})"}]},
            ]).decode(),
            "gen_ai.output.messages": orjson.dumps([
                {"role": "assistant", "finish_reason": "stop", "parts": [{"type": "text", "content": answer}]}
            ]).decode(),
        }  # fmt: skip
        spans.append(_span(trace, sid, root, "chat gpt-4.1-nano", t0, 400 + (i * 7919) % 2900, attrs))
    resource = {"attributes": [_kv("service.name", "weather-agent"), _kv("telemetry.sdk.name", "opentelemetry"),
                               _kv("telemetry.sdk.language", "python")]}  # fmt: skip
    scope = {"name": "opentelemetry.instrumentation.openai_v2", "version": "2.1b0"}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": scope, "spans": spans}]}]}


def _pb_value(target: Any, value: dict[str, Any]) -> None:
    ((kind, v),) = value.items()
    if kind == "stringValue":
        target.string_value = v
    elif kind == "intValue":
        target.int_value = int(v)
    elif kind == "doubleValue":
        target.double_value = v
    elif kind == "boolValue":
        target.bool_value = v
    elif kind == "arrayValue":
        for item in v["values"]:
            _pb_value(target.array_value.values.add(), item)


def to_protobuf(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    """The same export as a protobuf message (ids from hex to bytes, as the SDK sends them)."""
    req = ExportTraceServiceRequest()
    for rs in doc["resourceSpans"]:
        prs = req.resource_spans.add()
        for kv in rs["resource"]["attributes"]:
            a = prs.resource.attributes.add(key=kv["key"])
            _pb_value(a.value, kv["value"])
        for ss in rs["scopeSpans"]:
            pss = prs.scope_spans.add()
            pss.scope.name, pss.scope.version = ss["scope"]["name"], ss["scope"]["version"]
            for s in ss["spans"]:
                ps = pss.spans.add(trace_id=bytes.fromhex(s["traceId"]), span_id=bytes.fromhex(s["spanId"]),
                                   name=s["name"], kind=s["kind"], start_time_unix_nano=int(s["startTimeUnixNano"]),
                                   end_time_unix_nano=int(s["endTimeUnixNano"]))  # fmt: skip
                if "parentSpanId" in s:
                    ps.parent_span_id = bytes.fromhex(s["parentSpanId"])
                for kv in s["attributes"]:
                    _pb_value(ps.attributes.add(key=kv["key"]).value, kv["value"])
                for ev in s.get("events", ()):
                    pe = ps.events.add(name=ev["name"], time_unix_nano=int(ev["timeUnixNano"]))
                    for kv in ev["attributes"]:
                        _pb_value(pe.attributes.add(key=kv["key"]).value, kv["value"])
                ps.status.code = s["status"]["code"]
                ps.status.message = s["status"].get("message", "")
    return req


def generic_records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The step records the OTLP connector makes of this export, as generic JSON records."""
    return [
        r.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        | {"source": "otel", "run_key": r.run_key, "step_key": r.step_key}
        for r in OtlpConnector().translate(doc).records
    ]


# ---- the service ------------------------------------------------------------------------------


@dataclass
class Way:
    name: str
    path: str
    content_type: str
    bodies: list[bytes] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    spans: int = 0
    pending: int = 0


def _wait_healthy(client: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"serve exited: {server.stderr.read().decode() if server.stderr else ''}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("serve did not answer /healthz within 60 s")
        time.sleep(0.1)


def _counts(home: Path, database_url: str | None) -> dict[str, tuple[int, int]]:
    """Per project: (steps stored, evaluations scheduled)."""
    import sqlalchemy as sa

    from evalsvc.settings import Settings
    from evalsvc.store.db import dispose_engines, get_engine

    engine = get_engine(Settings(home=home, database_url=database_url).resolved_database_url())
    out: dict[str, tuple[int, int]] = {}
    with engine.connect() as conn:
        for name, pid in conn.execute(sa.text("SELECT name, id FROM project")):
            steps = conn.execute(sa.text("SELECT count(*) FROM step WHERE project_id = :p"), {"p": pid}).scalar()
            evals = conn.execute(sa.text("SELECT count(*) FROM eval_result WHERE project_id = :p"), {"p": pid}).scalar()
            out[name] = (int(steps or 0), int(evals or 0))
    dispose_engines()
    return out


def _post(client: httpx.Client, path: str, body: bytes, headers: dict[str, str]) -> None:
    resp = client.post(path, content=body, headers=headers)
    if resp.status_code != 200:
        raise RuntimeError(f"{path} answered {resp.status_code}: {resp.text[:500]}")
    if path == "/v1/traces" and resp.content not in (b"", b"{}"):
        raise RuntimeError(f"{path} rejected spans: {resp.content[:500]!r}")


def _post_all(port: int, path: str, bodies: list[bytes], headers: dict[str, str]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
        for body in bodies:
            _post(client, path, body, headers)


def run_store(store: str, database_url: str | None, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    home = workdir / f"{store}-home"
    home.mkdir(parents=True)
    queue = f"bench-otlp-{secrets.token_hex(4)}"
    extra = {"EVALSVC_BROKER_URL": REDIS_URL, "EVALSVC_QUEUE": queue} if args.runner == "celery" else {}
    env = service_env(home, database_url, **extra)
    ways = [Way("OTLP protobuf", "/v1/traces", "application/x-protobuf"),
            Way("OTLP JSON", "/v1/traces", "application/json"),
            Way("generic JSON", "/v1/ingest/json", "application/json")]  # fmt: skip
    ways = [w for w in ways if WAY_OPTIONS[w.name] in args.ways.split(",")]
    keys = {}
    (home / "evalsvc.yaml").write_text(EVALUATORS_YAML)
    for w in ways:
        project = w.name.lower().replace(" ", "-")
        keys[w.name] = cli(env, "keys", "create", "--project", project).strip().splitlines()[-1]
        cli(env, "evaluators", "apply", str(home / "evalsvc.yaml"), "--project", project)
    print(f"[{store}] encoding {args.spans:,} spans three ways ...", flush=True)
    for start in range(0, args.spans, args.batch):
        doc = make_export(start, min(args.batch, args.spans - start))
        for w in ways:
            if w.name == "OTLP protobuf":
                w.bodies.append(to_protobuf(doc).SerializeToString())
            elif w.name == "OTLP JSON":
                w.bodies.append(orjson.dumps(doc))
            else:
                w.bodies.append(orjson.dumps(generic_records(doc)))
    port = _free_port()
    server = subprocess.Popen([_evalsvc_exe(), "serve", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", str(args.workers)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    result: dict[str, Any] = {"store": store}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            _wait_healthy(client, server)
            time.sleep(1.0 + args.workers)  # every worker process up
            result["idle_rss_mb"] = _rss_mb(server.pid, "VmRSS")
            for w in ways:
                print(f"[{store}] {w.name}: {args.spans:,} spans ...", flush=True)
                headers = {"authorization": f"Bearer {keys[w.name]}", "content-type": w.content_type}
                cpu0 = _cpu_seconds(server.pid)
                if args.clients == 1:
                    for body in w.bodies:
                        t0 = time.perf_counter()
                        _post(client, w.path, body, headers)
                        w.seconds += time.perf_counter() - t0
                else:  # the batches dealt round-robin to concurrent clients; the clock is the whole span
                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(args.clients) as pool:
                        parts = [w.bodies[n :: args.clients] for n in range(args.clients)]
                        list(pool.map(_post_all, [port] * len(parts), [w.path] * len(parts), parts,
                                      [headers] * len(parts)))  # fmt: skip
                    w.seconds = time.perf_counter() - t0
                w.cpu_seconds = _cpu_seconds(server.pid) - cpu0
                w.spans = args.spans
                w.bodies = []
                result[f"rss_after_{w.name}"] = _rss_mb(server.pid, "VmHWM")
            result["peak_rss_mb"] = _rss_mb(server.pid, "VmHWM")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if args.runner == "celery":
            import redis

            redis.Redis.from_url(REDIS_URL).delete(queue)
    counts = _counts(home, database_url)
    for w in ways:
        stored, w.pending = counts[w.name.lower().replace(" ", "-")]
        if stored != w.spans:
            raise RuntimeError(f"{w.name}: {stored} steps stored of {w.spans} spans")
    result["ways"] = ways
    return result


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(f"{args.spans:,} spans per way, batches of {args.batch}, runner {args.runner}, 3 evaluators active, "
          f"serve --workers {args.workers}, {args.clients} client(s)")  # fmt: skip
    print("| store | way | spans/s (wall) | spans per CPU second of serve | evaluations scheduled | target |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        for w in r["ways"]:
            rate = w.spans / w.seconds if w.seconds else 0.0
            per_cpu = w.spans / w.cpu_seconds if w.cpu_seconds else 0.0
            target = f">= {TARGET_SPANS_PER_S:,}" if w.name == "OTLP protobuf" else ""
            print(f"| {r['store']} | {w.name} | {rate:,.0f} | {per_cpu:,.0f} | {w.pending:,} | {target} |")
        first = r["ways"][0].name
        print(f"| {r['store']} | serve RSS (all processes) | {r['idle_rss_mb']:.0f} MB idle; peak after {first} "
              f"{r['rss_after_' + first]:.0f} MB, after all {r['peak_rss_mb']:.0f} MB | | | "
              f"< {TARGET_RSS_MB} MB |")  # fmt: skip
    print(
        f"calibration: a 10,000,000-step Python loop took {_calibrate():.2f} s here (load average "
        f"{os.getloadavg()[0]:.1f})"
    )


def _calibrate() -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(10_000_000):
        x += i
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=100_000, help="spans per way (default 100,000)")
    parser.add_argument("--batch", type=int, default=512, help="spans per request (default 512)")
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="admin URL; the bench creates and drops a database")
    parser.add_argument("--runner", choices=("celery", "inprocess"), default="celery")
    parser.add_argument("--ways", default="protobuf,json,generic", help="which ways, comma-separated (default all)")
    parser.add_argument("--workers", type=int, default=1, help="`serve --workers N`: HTTP worker processes (default 1)")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients posting the batches (default 1)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="evalsvc-bench-otlp-"))
    results = []
    started = time.perf_counter()
    try:
        if args.store in ("sqlite", "both"):
            results.append(run_store("sqlite", None, args, workdir))
        if args.store in ("postgres", "both"):
            import sqlalchemy as sa

            admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
            name = f"evalsvc_bench_otlp_{secrets.token_hex(3)}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            try:
                results.append(run_store("postgres", f"{args.pg_url.rsplit('/', 1)[0]}/{name}", args, workdir))
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, args)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
