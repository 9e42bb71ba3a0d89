"""create_app(): routes, problem handlers, and the expiry sweeper's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from app.api import health, problems
from app.budgets import router as budgets_router
from app.budgets.sweeper import Sweeper
from app.config import Settings
from app.gateway import router as gateway_router
from app.overrides import router as overrides_router
from app.overrides.service import PriceBook
from app.pricing.sources import load_table


def create_app(engine: Engine, settings: Settings | None = None, *, sweep: bool = True) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = Sweeper(engine, settings.expiry_sweep_seconds) if sweep else None
        if sweeper is not None:
            sweeper.start()
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.stop()

    app = FastAPI(
        title="usage-ledger",
        version="0.1.0",
        summary="Exact, atomic, auditable ledger for LLM spend.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.settings = settings
    base = load_table(prices_path=settings.prices_path, prices_url=settings.prices_url)
    app.state.prices = PriceBook(base, engine)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(budgets_router.router)
    app.include_router(gateway_router.router)
    app.include_router(overrides_router.router)
    return app
