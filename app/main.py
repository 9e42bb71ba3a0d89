"""create_app(): routes, problem handlers, and the expiry sweeper's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from sqlalchemy import Engine

from app.alerts import router as alerts_router
from app.alerts.delivery import DeliveryWorker
from app.api import health, limits, problems
from app.audit.checkpointer import Checkpointer
from app.auth import service as auth
from app.budgets import router as budgets_router
from app.budgets.sweeper import Sweeper
from app.config import Settings
from app.dashboard import router as dashboard_router
from app.gateway import router as gateway_router
from app.ledger import router as ledger_router
from app.overrides import router as overrides_router
from app.overrides.service import PriceBook
from app.pricing.sources import load_table
from app.reconcile import router as reconcile_router
from app.reports import router as reports_router
from app.reports.rollups import Folder

_NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


def create_app(engine: Engine, settings: Settings | None = None, *, sweep: bool = True) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = Sweeper(engine, settings.expiry_sweep_seconds) if sweep else None
        folder = Folder(engine, settings.rollup_fold_seconds) if sweep else None
        deliverer = DeliveryWorker(engine) if sweep else None
        checkpointer = Checkpointer(engine) if sweep else None
        revocations = auth.RevocationListener(engine, app.state.verified_keys)
        revocations.start()
        for worker in (sweeper, folder, deliverer, checkpointer):
            if worker is not None:
                worker.start()
        try:
            yield
        finally:
            for worker in (sweeper, folder, deliverer, checkpointer):
                if worker is not None:
                    worker.stop()
            revocations.stop()
            app.state.transactions.shutdown(wait=False)

    app = FastAPI(
        title="usage-ledger",
        version="0.1.0",
        summary="Exact, atomic, auditable ledger for LLM spend.",
        lifespan=lifespan,
        # Off unless asked for: FastAPI checks for OpenTelemetry providers on every request,
        # a few percent of the hot path's CPU (docs/benchmarks.md, "Run of 09:15 UTC").
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
    )
    app.state.engine = engine
    app.state.settings = settings
    # Remembers verified keys only while its listener hears revocations (lifespan).
    app.state.verified_keys = auth.VerifiedKeys(listening=False)
    # The hot routes' transactions run here: a plain executor's hand-off costs less than
    # half of anyio's (docs/benchmarks.md); one thread per pooled connection and a few over.
    app.state.transactions = ThreadPoolExecutor(
        max_workers=settings.pool_size + 4, thread_name_prefix="transaction"
    )
    base = load_table(prices_path=settings.prices_path, prices_url=settings.prices_url)
    app.state.prices = PriceBook(base, engine)
    problems.install(app)
    limits.install(app)
    app.include_router(health.router)
    app.include_router(budgets_router.router)
    app.include_router(alerts_router.router)
    app.include_router(gateway_router.router)
    app.include_router(overrides_router.router)
    app.include_router(reports_router.router)
    app.include_router(reconcile_router.router)
    app.include_router(ledger_router.router)
    app.include_router(dashboard_router.router)
    return app
