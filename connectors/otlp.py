"""OpenTelemetry (OTLP/HTTP JSON and protobuf) spans to step records."""

from __future__ import annotations
