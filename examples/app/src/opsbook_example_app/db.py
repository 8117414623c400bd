"""The database behind the app (PostgreSQL through pg8000), configured by DATABASE_URL; optional."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit

import pg8000.native


def configured() -> bool:
    return bool(os.environ.get("DATABASE_URL"))


def connect(timeout: float = 5.0) -> pg8000.native.Connection:
    """A connection from DATABASE_URL (postgresql://user:password@host:port/database)."""
    url = urlsplit(os.environ["DATABASE_URL"])
    if url.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {url.scheme}://")
    return pg8000.native.Connection(
        user=unquote(url.username or ""),
        password=unquote(url.password or "") or None,
        host=url.hostname or "localhost",
        port=url.port or 5432,
        database=(url.path or "/").lstrip("/") or None,
        timeout=timeout,
    )


def query(sql: str, **params: Any) -> list[list[Any]]:
    conn = connect()
    try:
        rows: list[list[Any]] = conn.run(sql, **params)
        return rows
    finally:
        conn.close()
