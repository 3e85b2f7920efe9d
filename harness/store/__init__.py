"""Results storage: schema and queries in SQLAlchemy Core (SQLite by default, PostgreSQL for a shared lab)."""

from .db import RunInfo, Store, check_new_database, database_path

__all__ = ["RunInfo", "Store", "check_new_database", "database_path"]
