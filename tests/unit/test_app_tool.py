"""The app role's release switch (roles/app/files/opsbook-app) and artifact build, on real files in tmp dirs."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType
from typing import ClassVar

import pytest

Capture = pytest.CaptureFixture[str]
ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    path = ROOT / "roles" / "app" / "files" / name
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


tool = load("opsbook-app")
builder = load("opsbook-app-build")


def release(root: Path, version: str, complete: bool = True, age: float = 0) -> None:
    d = root / "releases" / version
    d.mkdir(parents=True)
    if complete:
        (d / ".complete").write_text(version)
        t = time.time() - age
        os.utime(d / ".complete", (t, t))


def point(root: Path, colour: str, version: str) -> None:
    (root / "colours").mkdir(exist_ok=True)
    link = root / "colours" / colour
    link.unlink(missing_ok=True)
    link.symlink_to(f"../releases/{version}")


def test_first_switch_then_second_records_previous(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fact = tmp_path / "facts" / "opsbook_app.fact"
    release(tmp_path, "1.0.0", age=100)
    point(tmp_path, "blue", "1.0.0")
    first = tool.switch(tmp_path, run, "blue", None, fact, "app")
    assert first == {"from_colour": None, "from_version": None, "to_colour": "blue", "to_version": "1.0.0",
                     "previous_version": None}
    assert os.readlink(tmp_path / "live.sock") == str(run / "blue.sock")
    release(tmp_path, "2.0.0")
    point(tmp_path, "green", "2.0.0")
    second = tool.switch(tmp_path, run, "green", None, fact, "app")
    assert second["from_version"] == "1.0.0" and second["previous_version"] == "1.0.0"
    st = tool.state(tmp_path, run)
    assert (st["live_colour"], st["live_version"], st["previous_version"], st["idle_colour"]) == \
        ("green", "2.0.0", "1.0.0", "blue")
    assert os.readlink(tmp_path / "current") == "releases/2.0.0"
    data = json.loads(fact.read_text())
    assert data["live_version"] == "2.0.0" and data["releases"] == ["1.0.0", "2.0.0"] and data["deployed_at"]


def test_switch_back_keeps_the_given_previous(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for v, age in (("1.0.0", 200), ("2.0.0", 100), ("3.0.0", 0)):
        release(tmp_path, v, age=age)
    point(tmp_path, "blue", "1.0.0")
    tool.switch(tmp_path, run, "blue", None, None, "app")
    point(tmp_path, "green", "2.0.0")
    tool.switch(tmp_path, run, "green", None, None, "app")
    point(tmp_path, "blue", "3.0.0")
    tool.switch(tmp_path, run, "blue", None, None, "app")  # 3.0.0 failed its check through nginx:
    point(tmp_path, "green", "2.0.0")
    tool.switch(tmp_path, run, "green", "1.0.0", None, "app")  # ... the role puts 2.0.0 back, previous stays 1.0.0
    st = tool.state(tmp_path, run)
    assert (st["live_version"], st["previous_version"]) == ("2.0.0", "1.0.0")


def test_switch_refuses_an_unfinished_release(tmp_path: Path) -> None:
    release(tmp_path, "1.0.0", complete=False)
    point(tmp_path, "blue", "1.0.0")
    with pytest.raises(SystemExit, match="no complete release"):
        tool.switch(tmp_path, tmp_path / "run", "blue", None, None, "app")
    assert not (tmp_path / "live.sock").is_symlink()


def test_prune_keeps_n_and_never_live_previous_or_a_colour(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for i, v in enumerate(["1", "2", "3", "4", "5", "6"]):
        release(tmp_path, v, age=1000 - i * 100)
    release(tmp_path, "7-broken", complete=False)
    point(tmp_path, "blue", "1")  # oldest, but live after a rollback to it
    tool.switch(tmp_path, run, "blue", "2", None, "app")
    point(tmp_path, "green", "6")
    removed = tool.prune(tmp_path, run, 3, None, "app")
    assert sorted(removed) == ["3", "4", "5", "7-broken"]
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == ["1", "2", "6"]


def test_release_order_is_completion_time_not_name(tmp_path: Path) -> None:
    release(tmp_path, "10.0.0", age=0)
    release(tmp_path, "9.0.0", age=50)
    assert [r["version"] for r in tool.releases(tmp_path)] == ["9.0.0", "10.0.0"]


class _Handler(BaseHTTPRequestHandler):
    statuses: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        status = self.statuses.pop(0) if self.statuses else 200
        self.send_response(status)
        self.send_header("X-App-Version", "2.0.0")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _serve(statuses: list[int]) -> HTTPServer:
    _Handler.statuses = statuses
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Args:
    def __init__(self, **kw: object) -> None:
        self.socket = None
        self.connect = None
        self.sni = "example.test"
        self.path = "/healthz"
        self.successes = 3
        self.timeout = 5.0
        self.interval = 0.01
        self.expect_version = None
        self.unit = None
        self.print_body = False
        self.__dict__.update(kw)


def test_check_needs_consecutive_good_answers(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    # the TLS connection class swapped for plain HTTP to a local server; the check logic is the same
    server = _serve([200, 500, 200, 200, 200])
    try:
        monkeypatch.setattr(tool, "_PinnedHTTPSConnection", _plain(server))
        assert tool.check(_Args(connect="127.0.0.1:1")) == 0
    finally:
        server.shutdown()
    assert "3 consecutive good answers" in capsys.readouterr().out
    assert _Handler.statuses == []  # all five answers were needed


def test_check_fails_naming_the_last_answer(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    server = _serve([500] * 1000)
    try:
        monkeypatch.setattr(tool, "_PinnedHTTPSConnection", _plain(server))
        assert tool.check(_Args(connect="127.0.0.1:1", timeout=0.5)) == 1
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    assert "UNHEALTHY" in out and "/healthz answered 500" in out


def test_check_prints_the_body_when_asked(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    server = _serve([])
    try:
        monkeypatch.setattr(tool, "_PinnedHTTPSConnection", _plain(server))
        assert tool.check(_Args(connect="127.0.0.1:1", successes=1, print_body=True)) == 0
    finally:
        server.shutdown()
    assert capsys.readouterr().out == "ok\n"


def test_state_says_when_the_live_colour_runs_an_outdated_config(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    release(tmp_path, "1.0.0")
    point(tmp_path, "blue", "1.0.0")
    tool.switch(tmp_path, tmp_path / "run", "blue", None, None, "app")
    env = tmp_path / "app.env"
    env.write_text("A=1\n")
    started = time.time()
    monkeypatch.setattr(tool, "_started", lambda unit: started)
    os.utime(env, (started - 10, started - 10))
    assert not tool.state(tmp_path, tmp_path / "run", "app", [env])["live_stale"]
    os.utime(env, (started + 10, started + 10))  # changed after the live colour started
    assert tool.state(tmp_path, tmp_path / "run", "app", [env])["live_stale"]


def test_check_wants_the_expected_version(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    server = _serve([])
    try:
        monkeypatch.setattr(tool, "_PinnedHTTPSConnection", _plain(server))
        assert tool.check(_Args(connect="127.0.0.1:1", timeout=0.3, expect_version="3.0.0")) == 1
    finally:
        server.shutdown()
    assert "from version 2.0.0, not 3.0.0" in capsys.readouterr().out


def _plain(server: HTTPServer) -> type:
    import http.client

    port = server.server_address[1]

    class Plain(http.client.HTTPConnection):
        def __init__(self, address: str, _port: int, name: str, timeout: float) -> None:
            super().__init__("127.0.0.1", port, timeout=timeout)

    return Plain


def test_build_makes_an_offline_wheelhouse_of_the_requested_version(tmp_path: Path) -> None:
    src = tmp_path / "app"
    (src / "pkg_x").mkdir(parents=True)
    (src / "pkg_x" / "__init__.py").write_text("")
    (src / "VERSION").write_text("0.0.1\n")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "pkg-x"\ndynamic = ["version"]\n'
        '[tool.setuptools.dynamic]\nversion = {file = "VERSION"}\n')
    out = tmp_path / "out"
    try:
        result = builder.build(src, out, "x", "v4.2.0", False)
    except SystemExit as exc:  # no package index reachable: say so instead of failing on the network
        if "pip wheel failed" in str(exc):
            pytest.skip(f"no package index for the build backend: {exc}")
        raise
    assert result["version"] == "4.2.0" and result["package"] == "pkg_x" and not result["reused"]
    with tarfile.open(result["artifact"]) as tar:
        names = tar.getnames()
        reqs = tar.extractfile("requirements.txt").read().decode()  # type: ignore[union-attr]
    assert "manifest.json" in names and "wheels/pkg_x-4.2.0-py3-none-any.whl" in names
    assert "pkg_x==4.2.0" in reqs.splitlines()
    assert any(line.startswith("pip==") for line in reqs.splitlines())  # hosts install with it, offline
    assert (src / "VERSION").read_text() == "0.0.1\n"  # the source is never touched
    again = builder.build(src, out, "x", "4.2.0", False)
    assert again["reused"] and again["sha256"] == result["sha256"]
    with pytest.raises(SystemExit, match="not a Python project"):
        builder.build(tmp_path, out, "x", "1", False)


# ---------------------------------------------------------------- deploy metrics (node exporter textfile)

def test_deploy_metrics_follow_the_results_and_count_failures(tmp_path: Path) -> None:
    """A good deploy, a refused one, then a good rollback: last result, last good time and live release follow each
    run; the failure count carries on across runs (read back from the file); the file parses as Prometheus text."""
    run = tmp_path / "run"
    prom = tmp_path / "textfile" / "opsbook_app_shop.prom"
    release(tmp_path, "1.0.0")
    point(tmp_path, "blue", "1.0.0")
    tool.switch(tmp_path, run, "blue", None, None, "shop")
    tool.write_metrics(prom, tmp_path, "shop", "deploy", True, now=1000)
    first = prom.read_text()
    assert 'opsbook_deploy_last_run_success{app="shop"} 1' in first
    assert 'opsbook_deploy_live_release_info{app="shop",release="1.0.0"} 1' in first
    assert 'opsbook_deploy_last_success_timestamp_seconds{app="shop"} 1000' in first
    assert 'opsbook_deploy_failed_runs_total{app="shop"} 0' in first

    assert tool.main(["metrics", "--root", str(tmp_path), "--file", str(prom), "--name", "shop",
                      "--operation", "deploy", "--result", "failed"]) == 0
    refused = prom.read_text()
    assert 'opsbook_deploy_last_run_success{app="shop"} 0' in refused
    assert 'opsbook_deploy_last_success_timestamp_seconds{app="shop"} 1000' in refused  # the good one's time stays
    assert 'opsbook_deploy_failed_runs_total{app="shop"} 1' in refused
    assert 'opsbook_deploy_live_release_info{app="shop",release="1.0.0"} 1' in refused  # the old one still serves
    assert 'operation="deploy"' in refused

    tool.write_metrics(prom, tmp_path, "shop", "rollback", True, now=3000)
    back = prom.read_text()
    assert 'opsbook_deploy_last_run_success{app="shop"} 1' in back
    assert 'opsbook_deploy_failed_runs_total{app="shop"} 1' in back
    assert 'opsbook_deploy_last_run_timestamp_seconds{app="shop",operation="rollback"} 3000' in back
    assert not list(prom.parent.glob(".*.tmp"))
    for line in back.splitlines():  # exposition format: comments, or NAME{LABELS} VALUE
        assert line.startswith("# ") or re.fullmatch(r'opsbook_deploy_[a-z_]+\{[^}]*\} -?\d+', line), line
