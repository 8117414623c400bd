"""The WSGI application: `gunicorn opsbook_example_app.wsgi:application`.

GET /          the version, as text (also in the X-App-Version header of every answer)
GET /healthz   200 when the app works and, if DATABASE_URL is set, its database answers; 503 otherwise
GET /notes     the number of notes in the database and the newest one (JSON): the drill's data query
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from opsbook_example_app import __version__, db

StartResponse = Callable[..., Any]
RELEASE = os.environ.get("APP_RELEASE", __version__)


def _answer(start_response: StartResponse, status: str, body: str, ctype: str = "text/plain") -> Iterable[bytes]:
    data = body.encode()
    start_response(status, [
        ("Content-Type", f"{ctype}; charset=utf-8"),
        ("Content-Length", str(len(data))),
        ("X-App-Version", __version__),
        ("Cache-Control", "no-store"),
    ])
    return [data]


def _json(start_response: StartResponse, status: str, payload: dict[str, Any]) -> Iterable[bytes]:
    return _answer(start_response, status, json.dumps(payload, default=str) + "\n", "application/json")


def healthz(start_response: StartResponse) -> Iterable[bytes]:
    result: dict[str, Any] = {"status": "ok", "version": __version__, "database": "not configured"}
    if db.configured():
        try:
            db.query("SELECT 1")
            result["database"] = "ok"
        except Exception as exc:  # any failure of the database makes the app unhealthy
            result.update(status="unhealthy", database=f"{type(exc).__name__}: {exc}")
            return _json(start_response, "503 Service Unavailable", result)
    return _json(start_response, "200 OK", result)


def notes(start_response: StartResponse) -> Iterable[bytes]:
    if not db.configured():
        return _json(start_response, "404 Not Found", {"error": "no database configured"})
    rows = db.query("SELECT count(*), max(created_at) FROM notes")
    return _json(start_response, "200 OK", {"count": rows[0][0], "newest": rows[0][1]})


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        return _answer(start_response, "405 Method Not Allowed", "GET only\n")
    if path == "/":
        return _answer(start_response, "200 OK", f"opsbook example app {__version__}\n")
    if path == "/healthz":
        return healthz(start_response)
    if path == "/notes":
        return notes(start_response)
    return _answer(start_response, "404 Not Found", "not found\n")
