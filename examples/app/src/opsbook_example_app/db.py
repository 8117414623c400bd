"""The database behind the app (PostgreSQL through pg8000), configured by DATABASE_URL; optional.

DATABASE_URL is a libpq-style URL, postgresql://user:password@host:port/database?sslmode=MODE&sslrootcert=FILE, with
libpq's TLS modes: disable, allow/prefer (TLS if the server offers it, unverified: pg8000's default, also when sslmode
is absent), require (TLS, unverified; verify-ca when sslrootcert is given, as libpq does), verify-ca (the server's
certificate chains to sslrootcert) and verify-full (verify-ca, and the certificate names the host of the URL).
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

if TYPE_CHECKING:
    import pg8000.native

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def configured() -> bool:
    return bool(os.environ.get("DATABASE_URL"))


def ssl_option(query: str) -> bool | ssl.SSLContext | None:
    """pg8000's ssl_context for the sslmode and sslrootcert of a URL's query (libpq's meanings).

    False: no TLS; None: TLS when offered, unverified; True: TLS required, unverified; a context: TLS required and
    the certificate verified against sslrootcert (and the host name checked for verify-full)."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - {"sslmode", "sslrootcert"})
    if unknown:
        raise ValueError(f"DATABASE_URL: unsupported parameter(s) {', '.join(unknown)} (sslmode, sslrootcert only)")
    mode = params.get("sslmode", "prefer")
    rootcert = params.get("sslrootcert", "")
    if mode not in SSLMODES:
        raise ValueError(f"DATABASE_URL: sslmode={mode} is not one of {', '.join(SSLMODES)}")
    if mode == "disable":
        return False
    if mode in ("allow", "prefer"):
        return None
    if mode == "require" and not rootcert:
        return True
    if not rootcert:
        raise ValueError(f"DATABASE_URL: sslmode={mode} needs sslrootcert=FILE (the CA the server's certificate "
                         "must chain to) or sslrootcert=system")
    context = ssl.create_default_context(cafile=None if rootcert == "system" else rootcert)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = mode == "verify-full"
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def connect(timeout: float = 5.0) -> pg8000.native.Connection:
    """A connection from DATABASE_URL (postgresql://user:password@host:port/database?sslmode=...&sslrootcert=...)."""
    import pg8000.native

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
        ssl_context=ssl_option(url.query),
    )


def query(sql: str, **params: Any) -> list[list[Any]]:
    conn = connect()
    try:
        rows: list[list[Any]] = conn.run(sql, **params)
        return rows
    finally:
        conn.close()
