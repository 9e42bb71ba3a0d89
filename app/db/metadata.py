"""Shared SQLAlchemy metadata and column types. DDL itself lives in migrations/."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import MetaData, Numeric
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from app.money import checked_pico

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class PicoUSD(TypeDecorator[int]):
    """Integer pico-USD held in ``numeric(38,0)``: exact, and no 64-bit overflow in sums."""

    impl = Numeric(38, 0)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return Decimal(checked_pico(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        as_int = int(value)
        if as_int != value:
            raise ValueError(f"non-integral pico-USD amount {value}")
        return as_int
