"""The results store: open (and migrate) a database, record runs and results, read them back."""

from __future__ import annotations

import json
import os
import sqlite3
import weakref
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from sqlalchemy import Connection, Engine, create_engine, delete, desc, event, inspect, make_url, select
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError

from ..errors import ConfigError, StoreError
from .schema import (
    SCHEMA_VERSION,
    current_version,
    device_health,
    metadata,
    metrics,
    migrate,
    results,
    runs,
    samples,
)

if TYPE_CHECKING:  # records pulls in scipy; the CLI starts faster without it
    from ..records import JobResult

SAMPLE_CODEC = "zlib-int64le"


@dataclass(frozen=True)
class RunInfo:
    """Provenance of one run."""

    id: str
    started_at: str
    host: str
    harness_version: str
    git_sha: str | None = None
    lab_name: str | None = None
    lab_file: str | None = None
    command: str | None = None


def _parse_target(target: str | Path) -> tuple[str, Path | None, str]:
    """``--db`` as the engine URL, the SQLite file it names (None for a server) and how to show it.

    A URL (``postgresql+psycopg://…``, ``sqlite:///…``) goes to SQLAlchemy as it is; anything else is
    a SQLite file path. Shown with any password hidden.
    """
    text = str(target)
    if "://" not in text:
        path = Path(text).expanduser()
        return f"sqlite:///{path}", path, str(path)
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(
            f"cannot read database URL {text!r}: {exc}",
            key="--db",
            fix="use a SQLite path or a URL such as postgresql://user@host:5432/edgebench",
        ) from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return text, Path(url.database).expanduser(), shown
    return text, None, shown


def database_path(target: str | Path) -> Path | None:
    """The SQLite file ``--db`` names (None for a server URL), without opening anything."""
    return _parse_target(target)[1]


def check_new_database(path: Path) -> None:
    """Refuse a new SQLite path that could not be created, without creating it or its directory."""
    ancestor = next((p for p in path.parents if p.exists()), None)
    if ancestor is None or not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise StoreError(
            f"cannot create the results database {path}: {ancestor} is not a writable directory",
            fix="pass --db a path in a writable directory",
        )


def _foreign(tables: set[str], dialect: str) -> bool:
    """Someone else's database: a SQLite file with other tables, or a server database that has
    tables of edgebench's names (``runs``, ``results``, ...) but no schema_info.

    A PostgreSQL database is often shared by several applications, so other tables are fine there;
    one of these names is another application's table, which edgebench must not write into.
    """
    if _unfinished(tables):
        return False
    return bool(tables) if dialect == "sqlite" else bool(tables & set(metadata.tables))


def _unfinished(tables: set[str]) -> bool:
    """Edgebench's own tables and a schema_info without its version row: a creation cut short.

    Edgebench now creates a schema in one transaction, but older versions let pysqlite commit each
    CREATE TABLE on its own, so a crash between them and the version row left this; a writer finishes
    it (every table is created only if missing), a reader refuses it.
    """
    return "schema_info" in tables and tables <= set(metadata.tables)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the directory of the results database {path}: {exc.strerror}",
            fix="pass --db a path in a writable directory",
        ) from None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def encode_samples(values: np.ndarray) -> bytes:
    return zlib.compress(np.asarray(values, dtype="<i8").tobytes(), 6)


def decode_samples(blob: bytes) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype="<i8").copy()


class Store:
    """One results database (SQLite file or PostgreSQL URL); every write is one transaction."""

    def __init__(self, target: str | Path, *, read_only: bool = False) -> None:
        """Open ``target``; a writer creates and migrates it, a reader (``read_only``) changes nothing.

        A reader needs an existing edgebench database: a missing file or one without the
        ``schema_info`` table is an error, never an empty database.
        """
        self.url, self.path, self.location = _parse_target(target)
        self.read_only = read_only
        if self.path is not None:
            self._check_file()
        try:
            if read_only and self.path is not None:
                path = self.path
                # mode=ro: SQLite itself refuses any write, so reading leaves the file as it was.
                self.engine: Engine = create_engine(
                    "sqlite://",
                    creator=lambda: sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True),
                )
            else:
                self.engine = create_engine(self.url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            fix = "pass --db a SQLite file path or a postgresql://user@host/db URL"
            if isinstance(exc, ImportError) and self.url.startswith("postgresql"):
                fix = "install the PostgreSQL driver (pip install 'edgebench[postgres]'), or pass --db a SQLite path"
            raise ConfigError(f"cannot use database {self.location}: {exc}", key="--db", fix=fix) from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        try:
            # One transaction: a new database's tables, indexes and version row all appear, or none do.
            with self._begin(write=not read_only) as conn:
                old = current_version(conn)
                tables = set(inspect(conn).get_table_names()) if old == 0 else set()
                if old == 0 and read_only and _unfinished(tables):
                    raise ConfigError(
                        f"{self.location} is an edgebench results database whose schema was never finished "
                        "(schema_info holds no version: its creation was cut short)",
                        key="--db",
                        fix="run edgebench run --db with it once to finish it, or pass another database",
                    )
                if old == 0 and (read_only or _foreign(tables, conn.dialect.name)):
                    wrote = "pass the database 'edgebench run' wrote (see its 'database:' line)"
                    new = ", or a new file name for a new one" if self.path else ", or a database of its own"
                    raise ConfigError(
                        f"{self.location} is not an edgebench results database (it has no schema_info table)",
                        key="--db",
                        fix=wrote if read_only else wrote + new,
                    )
                if old <= SCHEMA_VERSION and not read_only:
                    migrate(conn)
            if self.engine.dialect.name == "sqlite" and not read_only and old <= SCHEMA_VERSION:
                # Set once the file is known to be ours, and not a newer edgebench's (refused below, with
                # no close to turn it back): while a writer has it open, readers and writers of a WAL
                # database do not block each other (the last writer to close turns it back into a
                # rollback-journal file, see _close). Outside any transaction, where SQLite allows the
                # change: on the DBAPI connection, which no BEGIN precedes.
                raw = self.engine.raw_connection()
                try:
                    raw.cursor().execute("PRAGMA journal_mode=WAL")
                finally:
                    raw.close()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            self.engine.dispose()
            verb = "open" if read_only else "open or migrate"
            if self.path is None:
                fix = "check the URL, that the server runs and that it accepts this user"
            elif read_only and _journal(self.path).exists() and "readonly" in str(exc).lower():
                raise StoreError(
                    f"cannot open the results database {self.location}: a write to it was cut short "
                    f"({_journal(self.path).name} is beside it) and a reader may not roll it back",
                    fix="run edgebench run --db with it once (a writer rolls the write back), or pass another database",
                ) from None
            elif read_only:
                fix = "pass --db the SQLite file 'edgebench run' wrote"
            else:
                fix = "pass --db a writable edgebench SQLite file, or a new file name"
            raise StoreError(
                f"cannot {verb} the results database {self.location}: {_first_line(exc)}", fix=fix
            ) from None
        except ConfigError:
            self.engine.dispose()
            raise
        if old > SCHEMA_VERSION:
            self.engine.dispose()
            raise StoreError(
                f"{self.location} has schema version {old}, newer than this edgebench ({SCHEMA_VERSION})",
                fix="upgrade edgebench",
            )
        # Also when the Store is dropped or the process exits unclosed (a pytest session's store).
        sqlite_writer = self.engine.dialect.name == "sqlite" and not read_only
        self._closer = weakref.finalize(self, _close, self.engine, self.path if sqlite_writer else None)

    def _check_file(self) -> None:
        """A SQLite path: a reader needs the file; a writer needs a file path, not a directory."""
        assert self.path is not None
        if self.path.is_dir():
            raise ConfigError(
                f"results database {self.path} is a directory",
                key="--db",
                fix=f"pass a file path, e.g. --db {self.path / 'results.sqlite'}",
            )
        if self.read_only:
            if not self.path.is_file():
                raise ConfigError(
                    f"results database {self.path} not found",
                    key="--db",
                    fix="pass the database 'edgebench run' wrote (see its 'database:' line)",
                )
        else:
            _make_parent(self.path)

    @contextmanager
    def _begin(self, *, write: bool) -> Iterator[Connection]:
        """One transaction; a write one takes SQLite's write lock at its start (see _sqlite_begin)."""
        with self.engine.connect() as conn:
            if write:
                conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self._begin(write=True) as conn:
                yield conn
        except (SQLAlchemyError, sqlite3.Error) as exc:
            # The driver's own words ("database or disk is full"), without SQLAlchemy's wrapper around them.
            cause = exc.orig if isinstance(exc, DBAPIError) and isinstance(exc.orig, Exception) else exc
            raise StoreError(
                f"database write failed in {self.location}: {_first_line(cause)}", fix=self._write_fix(exc)
            ) from None

    def _write_fix(self, exc: Exception) -> str:
        """How to get a failed write through: the usual causes differ for a SQLite file and a server."""
        text = str(exc).lower()
        if isinstance(exc, IntegrityError | sqlite3.IntegrityError):
            return "the database's constraints refuse the record (the same run written twice?): run again"
        if "locked" in text or "busy" in text:
            return "another program holds the database's write lock: let it finish (or stop it), then run again"
        if self.path is None:
            return "check that the database server is running and accepts writes (its disk, its quota), then run again"
        return f"check the free space and permissions of {self.path.parent}, then run again (or pass --db elsewhere)"

    def start_run(self, info: RunInfo) -> None:
        with self._tx() as conn:
            conn.execute(runs.insert().values(status="running", **info.__dict__))

    def finish_run(self, run_id: str, finished_at: str, status: str) -> None:
        with self._tx() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(finished_at=finished_at, status=status))

    def add_result(self, result: JobResult) -> int:
        """Store a result with its samples and metrics atomically; return its row id."""
        record = result.flat()
        with self._tx() as conn:
            row = conn.execute(
                results.insert().values(
                    run_id=result.run_id,
                    job_id=result.job_id,
                    kind=result.kind,
                    model=result.model,
                    model_sha256=result.model_sha256,
                    artifact_sha256=result.artifact_sha256,
                    device=result.device,
                    platform=result.platform,
                    backend=result.backend,
                    runtime=result.runtime,
                    precision=result.precision,
                    input_shape="x".join(map(str, result.input_shape)),
                    threads=result.threads,
                    status=result.status,
                    message=result.message,
                    valid=bool(record["valid"]),
                    n=int(record["n"]),
                    started_at=result.started_at,
                    finished_at=result.finished_at,
                    record=json.dumps(record, default=_json_default),
                    facts=json.dumps(dict(result.facts), default=_json_default),
                )
            )
            key = row.inserted_primary_key
            assert key is not None
            result_id = int(key[0])
            if result.samples_ns is not None and len(result.samples_ns):
                conn.execute(
                    samples.insert().values(
                        result_id=result_id,
                        codec=SAMPLE_CODEC,
                        count=len(result.samples_ns),
                        data=encode_samples(result.samples_ns),
                    )
                )
            rows = [_metric_row(result_id, k, v) for k, v in result.metrics.items()]
            if rows:
                conn.execute(metrics.insert(), rows)
        return result_id

    def record_health(self, checked_at: str, device: str, state: str, reason: str, facts: Mapping[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(
                device_health.insert().values(
                    checked_at=checked_at, device=device, state=state, reason=reason, facts=json.dumps(facts)
                )
            )

    def health(self) -> list[dict[str, Any]]:
        """The latest health record per device."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(device_health).order_by(device_health.c.id)).mappings().all()
        latest: dict[str, dict[str, Any]] = {}
        for row in rows:
            latest[row["device"]] = {**row, "facts": json.loads(row["facts"])}
        return list(latest.values())

    def resolve_run(self, run: str = "latest") -> str:
        with self.engine.connect() as conn:
            if run == "latest":
                found = conn.execute(select(runs.c.id).order_by(desc(runs.c.started_at)).limit(1)).scalar()
                if found is None:
                    raise ConfigError(
                        "the results database has no runs yet", key="--run", fix="run edgebench run first"
                    )
                return str(found)
            # autoescape: a '%' or '_' the user types is a character of the id, not a LIKE wildcard.
            prefixed = runs.c.id.startswith(run, autoescape=True)
            found = conn.execute(select(runs.c.id).where(prefixed)).scalars().all()
        if len(found) != 1:
            raise ConfigError(
                f"run {run!r} {'is ambiguous' if found else 'not found'}",
                key="--run",
                fix="pass 'latest' or a run id from 'edgebench results --runs'",
            )
        return str(found[0])

    def run_info(self, run_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().one()
        return dict(row)

    def list_runs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(runs).order_by(desc(runs.c.started_at))).mappings().all()
        return [dict(r) for r in rows]

    def results(self, run_id: str) -> list[dict[str, Any]]:
        """Flat records of a run, in the order they were recorded."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(results.c.id, results.c.record).where(results.c.run_id == run_id).order_by(results.c.id)
            ).all()
        return [json.loads(r.record) for r in rows]

    def job_history(self, job_id: str, artifact_sha256: str, limit: int = 20) -> list[dict[str, Any]]:
        """Earlier valid latency records of one job with one artifact (passed or failed), newest first.

        Filtered in SQL before the limit, so other sizes, threads, kinds or errors of the series never
        crowd a job's own runs out. Raises StoreError when the database cannot be read.
        """
        query = (
            select(results.c.record)
            .where(
                (results.c.job_id == job_id)
                & (results.c.artifact_sha256 == artifact_sha256)
                & (results.c.kind == "latency")
                & results.c.valid
                & results.c.status.in_(("passed", "failed"))
            )
            .order_by(desc(results.c.id))
            .limit(limit)
        )
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot read earlier runs of {job_id} from {self.location}: {_first_line(exc)}",
                fix="check the database (edgebench results --runs)",
            ) from None
        return [json.loads(r.record) for r in rows]

    def device_facts(self, run_id: str) -> dict[str, dict[str, Any]]:
        """The facts each device reported in a run (from its last result)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(results.c.device, results.c.facts).where(results.c.run_id == run_id).order_by(results.c.id)
            ).all()
        facts: dict[str, dict[str, Any]] = {}
        for row in rows:
            value = json.loads(row.facts)
            if value:
                facts[row.device] = value
        return facts

    def samples_of(self, run_id: str, job_id: str, kind: str = "latency") -> np.ndarray:
        """The raw samples of one result; a job id can have a latency, a robustness and an interleaved one."""
        with self.engine.connect() as conn:
            blob = conn.execute(
                select(samples.c.data)
                .join(results, results.c.id == samples.c.result_id)
                .where((results.c.run_id == run_id) & (results.c.job_id == job_id) & (results.c.kind == kind))
            ).scalar()
        return decode_samples(blob) if blob is not None else np.zeros(0, dtype=np.int64)

    def delete_run(self, run_id: str) -> None:
        with self._tx() as conn:
            ids = select(results.c.id).where(results.c.run_id == run_id)
            conn.execute(delete(samples).where(samples.c.result_id.in_(ids)))
            conn.execute(delete(metrics).where(metrics.c.result_id.in_(ids)))
            conn.execute(delete(results).where(results.c.run_id == run_id))
            conn.execute(delete(runs).where(runs.c.id == run_id))

    def close(self) -> None:
        self._closer()


def _metric_row(result_id: int, name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict, str)):
        return {"result_id": result_id, "name": name, "value": None, "text": json.dumps(value)}
    return {"result_id": result_id, "name": name, "value": float(value), "text": None}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


_WRITE = "edgebench_write"  # an execution option: this transaction will write


def _journal(path: Path) -> Path:
    return path.with_name(path.name + "-journal")


def _close(engine: Engine, wrote: Path | None) -> None:
    """Close the engine; the last writer to close a SQLite file turns it back into a rollback-journal file.

    A reader opens the file read-only (mode=ro). In WAL mode SQLite makes it create a -wal and a -shm
    file beside the database, which it cannot remove again, while a rollback-journal file is read with
    no trace; a writer keeps WAL while it has the file open, so a report can read during a run.
    Leaving WAL needs the file to itself: while another connection has it open SQLite refuses at once
    (SQLITE_BUSY), and that connection's own close, if a writer's, does it.
    """
    engine.dispose()
    if wrote is None:
        return
    try:  # mode=rw: never create the file again if it was moved away meanwhile
        conn = sqlite3.connect(f"file:{quote(str(wrote.resolve()))}?mode=rw", uri=True, timeout=0)
    except sqlite3.Error:
        return
    try:
        conn.isolation_level = None
        with suppress(sqlite3.Error):
            conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own transaction handling BEGINs only before INSERT, UPDATE and DELETE, so each CREATE
    # TABLE would commit on its own; with it off, _sqlite_begin's BEGIN makes every transaction whole
    # (SQLAlchemy's documented recipe for the sqlite3 driver before Python 3.12's autocommit=False).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE for a write takes the write lock first, so a second writer (two runs opening a new file
    # at once) waits for the first (the busy timeout) instead of failing when its first read, of the
    # tables that are there, would have to become a write.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")
