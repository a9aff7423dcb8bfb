"""The reads behind every request (a VM by id, a key by hash, a user, the VMs' change counter), run straight on
the DB-API.

Through a SQLAlchemy ``Connection`` such a read cost 0.67 ms on SQLite once the process had sat idle for 300 ms
(as between two execs a user sends by hand), against 0.29 ms for the pool checkout, the driver's own
``execute`` and ``fetchone`` and the return; an exec makes two of them (its key, its VM). The statement is
still SQLAlchemy's, compiled once for the engine's dialect (its quoting and placeholders); what the driver
returns is brought to the types SQLAlchemy's result processing gives (``_converter``): SQLite hands JSON and
times back as text and booleans as integers, psycopg decodes them itself.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Engine, FromClause, Select, bindparam, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from sheesh.store.errors import StoreError

Plain = dict[str, Any]
"""One row: column name -> value, typed as through SQLAlchemy."""


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _datetime(value: Any) -> Any:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _converter(column_type: object) -> Callable[[Any], Any] | None:
    """How a driver's value of a column of ``column_type`` becomes SQLAlchemy's (None: as it is)."""
    if isinstance(column_type, JSON):
        return _json
    if isinstance(column_type, DateTime):
        return _datetime
    if isinstance(column_type, Boolean):
        return bool
    return None


class HotRead:
    """``SELECT <every column of table> WHERE <column> = ?``, compiled for ``engine``, run by ``one`` on a pooled
    connection's DB-API cursor."""

    def __init__(self, engine: Engine, table: FromClause, column: str) -> None:
        stmt: Select[Any] = select(*table.c).where(table.c[column] == bindparam("value"))
        compiled = stmt.compile(dialect=engine.dialect)
        self.engine = engine
        self.sql = compiled.string
        self._positional = compiled.positional
        self._names = [c.name for c in table.c]
        self._convert = [(c.name, f) for c in table.c if (f := _converter(c.type)) is not None]
        self._errors: type[Exception] = engine.dialect.loaded_dbapi.Error

    def one(self, value: object) -> Plain | None:
        """The row whose column is ``value``, if any. A driver error raises StoreError (and that connection is not
        reused: it may be the one a database restart cut)."""
        with self._connection() as conn:
            cursor = conn.cursor()
            try:
                cursor.execute(self.sql, (value,) if self._positional else {"value": value})
                row = cursor.fetchone()
            except self._errors as exc:
                conn.invalidate(exc)
                raise StoreError(f"database error: {exc}") from exc
            finally:
                with contextlib.suppress(self._errors):
                    cursor.close()
        if row is None:
            return None
        plain = dict(zip(self._names, row, strict=True))
        for name, convert in self._convert:
            if plain[name] is not None:
                plain[name] = convert(plain[name])
        return plain

    @contextlib.contextmanager
    def _connection(self) -> Iterator[PoolProxiedConnection]:
        try:
            conn = self.engine.raw_connection()
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {exc}") from exc
        try:
            yield conn
        finally:
            with contextlib.suppress(self._errors, SQLAlchemyError):
                conn.close()  # back to the pool, rolled back
