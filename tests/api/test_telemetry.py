"""FastAPI's native OpenTelemetry spans come only with --opentelemetry (app/config.py)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine
from starlette.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_requests_are_traced_only_with_opentelemetry_on(engine: Engine) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The process's global provider, as opentelemetry-instrument would set it (once only).
    trace.set_tracer_provider(provider)
    spans = {}
    for enabled in (False, True):
        app = create_app(
            engine, Settings(insecure_no_auth=True, opentelemetry=enabled), sweep=False
        )
        with TestClient(app) as client:
            assert client.get("/v1/budgets", params={"org": "acme"}).status_code == 200
        spans[enabled] = [span.name for span in exporter.get_finished_spans()]
        exporter.clear()
    assert spans[False] == []
    assert any("/v1/budgets" in name for name in spans[True]), spans[True]
