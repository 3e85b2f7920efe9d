"""The results schema (SQLAlchemy Core) and its migrations, one function per version step.

Works on SQLite (default, one file) and PostgreSQL (a shared lab). Raw samples are stored as
zlib-compressed little-endian int64 nanoseconds; scalar metrics as rows, so a new metric needs no
migration.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
)

SCHEMA_VERSION = 2

metadata = MetaData()

schema_info = Table(
    "schema_info",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("started_at", String(40), nullable=False),
    Column("finished_at", String(40)),
    Column("status", String(16), nullable=False),
    Column("git_sha", String(64)),
    Column("host", String(255), nullable=False),
    Column("harness_version", String(32), nullable=False),
    Column("lab_name", String(255)),
    Column("lab_file", Text),
    Column("command", Text),
)

results = Table(
    "results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("job_id", Text, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("model", String(255), nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("artifact_sha256", String(64)),
    Column("device", String(255), nullable=False),
    Column("platform", String(64), nullable=False),
    Column("backend", String(64), nullable=False),
    Column("runtime", String(64), nullable=False),
    Column("precision", String(16), nullable=False),
    Column("input_shape", String(64), nullable=False),
    Column("threads", Integer),
    Column("status", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("valid", Boolean, nullable=False),
    Column("n", Integer, nullable=False),
    Column("started_at", String(40), nullable=False),
    Column("finished_at", String(40), nullable=False),
    Column("record", Text, nullable=False),  # the full flat record as JSON
    Column("facts", Text, nullable=False),  # device and runtime facts as JSON
    Index("ix_results_run", "run_id"),
    Index("ix_results_series", "model", "backend", "precision", "device"),
)

samples = Table(
    "samples",
    metadata,
    Column("result_id", Integer, ForeignKey("results.id", ondelete="CASCADE"), primary_key=True),
    Column("codec", String(32), nullable=False),
    Column("count", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

metrics = Table(
    "metrics",
    metadata,
    Column("result_id", Integer, ForeignKey("results.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", Float),
    Column("text", Text),
)

device_health = Table(
    "device_health",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("checked_at", String(40), nullable=False),
    Column("device", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("facts", Text, nullable=False),
)


def _v1(conn: Connection) -> None:
    """Version 1: runs, results, samples, metrics."""
    for table in (schema_info, runs, results, samples, metrics):
        table.create(conn, checkfirst=True)


def _v2(conn: Connection) -> None:
    """Version 2: device health history."""
    device_health.create(conn, checkfirst=True)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1, 2: _v2}


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_info"):
        return 0
    version = conn.execute(select(schema_info.c.version).where(schema_info.c.id == 1)).scalar()
    return int(version or 0)


def migrate(conn: Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION inside the caller's transaction; return the old version."""
    old = current_version(conn)
    if old > SCHEMA_VERSION:
        return old
    for version in range(old + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version](conn)
        if version == 1:
            conn.execute(schema_info.insert().values(id=1, version=1))
        else:
            conn.execute(schema_info.update().where(schema_info.c.id == 1).values(version=version))
    if conn.dialect.name == "sqlite":
        conn.execute(text("PRAGMA foreign_keys=ON"))
    return old
