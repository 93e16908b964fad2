"""Tiny helpers shared by the data-access modules: typed fetches into frozen dataclasses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any, TypeVar

import psycopg
from psycopg.rows import class_row

from knowledgebase.errors import NotFound

T = TypeVar("T")


def columns(cls: type, alias: str = "") -> str:
    """The comma-separated column list of a row dataclass, for module-level SQL constants; each column
    qualified with ``alias`` when given (``t.id, t.title, ...``)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + f.name for f in fields(cls))


def fetch_one(
    conn: psycopg.Connection, cls: type[T], query: str, params: Sequence[Any] | dict[str, Any] = ()
) -> T | None:
    with conn.cursor(row_factory=class_row(cls)) as cur:
        cur.execute(query, params)
        return cur.fetchone()


def fetch_required(
    conn: psycopg.Connection, cls: type[T], query: str, params: Sequence[Any] | dict[str, Any], what: str
) -> T:
    row = fetch_one(conn, cls, query, params)
    if row is None:
        raise NotFound(f"{what} does not exist")
    return row


def fetch_all(
    conn: psycopg.Connection, cls: type[T], query: str, params: Sequence[Any] | dict[str, Any] = ()
) -> list[T]:
    with conn.cursor(row_factory=class_row(cls)) as cur:
        cur.execute(query, params)
        return cur.fetchall()
