"""The checkpoint chain (DDL in migrations/versions/0010_audit_checkpoints.py)."""

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    SmallInteger,
    Table,
    func,
)

from app.db.metadata import metadata

ledger_checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("from_seq", BigInteger, primary_key=True),  # the range is [from_seq, below_seq)
    Column("below_seq", BigInteger, nullable=False, unique=True),
    Column("events", Integer, nullable=False),
    Column("format", SmallInteger, nullable=False),
    Column("previous_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("entries", LargeBinary, nullable=False),  # 40 bytes per event: seq, sha256
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
