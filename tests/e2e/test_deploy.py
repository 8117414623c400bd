"""End to end: blue/green deploys and rollbacks of the example app on provisioned web hosts, under wrk load.

Two web hosts get the whole provisioning (nginx, ACME certificate from the lab's Pebble, firewall, fail2ban);
the app is built from examples/app on the controller. Every operation on e2e-app1 runs while wrk (2 threads,
32 connections, keep-alive) requests https://e2e-app1.opsbook.test/ from the controller for its whole duration,
and the test asserts that not one request failed. Figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsbook import lab, load
from tests.e2e.conftest import FAST, ROOT, LabEnv, last_report, provisioned_lab

NAMES = ["e2e-app1", "e2e-app2"]
DOMAIN = "opsbook.test"


@pytest.fixture(scope="module")
def app_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    with provisioned_lab(tmp_path_factory, {"web": NAMES}, FAST) as env:
        yield env


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Source trees of the example app: good ones, one that fails to import, one whose /healthz answers 500."""
    base = tmp_path_factory.mktemp("releases")
    out = {}
    for version in ("1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0"):
        src = base / version
        shutil.copytree(ROOT / "examples" / "app", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        (src / "VERSION").write_text(version + "\n")
        wsgi = src / "src" / "opsbook_example_app" / "wsgi.py"
        if version == "3.0.0":  # a release whose code does not import
            wsgi.write_text(wsgi.read_text() + "\nfrom opsbook_example_app import no_such_module  # noqa\n")
        if version == "4.0.0":  # a release that starts but is not healthy
            wsgi.write_text(wsgi.read_text().replace('"200 OK", result)', '"500 Internal Server Error", result)'))
        out[version] = src
    return out


# --------------------------------------------------------------------------- helpers


def served(env: LabEnv, name: str) -> tuple[int, str]:
    """GET https://NAME/ from the controller (SNI and Host NAME, connected to the host's address)."""
    return load.https_get(env.ip(name), f"{name}.{DOMAIN}")


def served_version(env: LabEnv, name: str) -> str:
    status, body = served(env, name)
    assert status == 200, (status, body)
    return body.rsplit(" ", 1)[-1]


class Load(load.Load):
    """wrk -c32 against https://NAME/ from the controller for the whole with-block, then checked for failures."""

    def __init__(self, env: LabEnv, name: str) -> None:
        super().__init__(env.ip(name), f"{name}.{DOMAIN}")

    def __exit__(self, *exc: object) -> None:
        super().__exit__(None, None, None)
        print(self.out)  # figures, shown with pytest -s

    def assert_no_failed_request(self) -> None:
        f = self.figures
        assert f["requests"] > 100, self.out
        assert f["non2xx"] == 0, f"{f['non2xx']:.0f} non-2xx answers:\n{self.out}"
        assert f["socket_errors"] == 0, f"{f['socket_errors']:.0f} socket errors:\n{self.out}"


def deploy(env: LabEnv, src: Path, version: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return env.opsbook("deploy", str(src), "--version", version, *extra)


# --------------------------------------------------------------------------- the tests, in order


def test_first_deploy_serves_v1(app_lab: LabEnv, releases: dict[str, Path]) -> None:
    res = deploy(app_lab, releases["1.0.0"], "1.0.0", "--limit", "e2e-app1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert served_version(app_lab, "e2e-app1") == "1.0.0"
    listing = app_lab.opsbook("releases", "--limit", "e2e-app1")
    assert "e2e-app1: live 1.0.0 (blue)" in listing.stdout, listing.stdout + listing.stderr


def test_deploy_v2_under_load_fails_no_request(app_lab: LabEnv, releases: dict[str, Path]) -> None:
    with Load(app_lab, "e2e-app1") as load:
        res = deploy(app_lab, releases["2.0.0"], "2.0.0", "--limit", "e2e-app1")
    assert res.returncode == 0, res.stdout + res.stderr
    load.assert_no_failed_request()
    assert served_version(app_lab, "e2e-app1") == "2.0.0"
    units = app_lab.ssh("e2e-app1", "systemctl is-active app@blue app@green; systemctl is-enabled app@green",
                        check=False).stdout.split()
    assert units == ["inactive", "active", "enabled"], units  # old colour drained and stopped


def test_redeploying_the_live_version_changes_nothing(app_lab: LabEnv) -> None:
    res = app_lab.opsbook("deploy", "2.0.0", "--limit", "e2e-app1")
    assert res.returncode == 0, res.stdout + res.stderr
    host = last_report("deploy")["hosts"]["e2e-app1"]  # type: ignore[index]
    assert host["changed"] == 0, host


@pytest.mark.parametrize(("version", "check", "why"), [
    ("3.0.0", "Start the idle colour", "did not start.*cannot import name 'no_such_module'"),
    ("4.0.0", "Health gate", "answered 500"),
])
def test_a_bad_release_is_refused_under_load(app_lab: LabEnv, releases: dict[str, Path],
                                             version: str, check: str, why: str) -> None:
    with Load(app_lab, "e2e-app1") as load:
        res = deploy(app_lab, releases[version], version, "--limit", "e2e-app1", "-e", "app_health_timeout=15")
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    flat = " ".join(out.split())  # the console wraps long lines wherever a space falls (once inside "cannot import")
    assert f"app {version} REFUSED on e2e-app1" in flat and check in flat, out
    assert re.search(why, flat), out
    assert "still serving: 2.0.0" in flat, out
    load.assert_no_failed_request()
    assert served_version(app_lab, "e2e-app1") == "2.0.0"


def test_rollback_to_previous_and_to_a_named_release_under_load(app_lab: LabEnv,
                                                                 releases: dict[str, Path]) -> None:
    res = deploy(app_lab, releases["5.0.0"], "5.0.0", "--limit", "e2e-app1")
    assert res.returncode == 0, res.stdout + res.stderr
    with Load(app_lab, "e2e-app1") as load:
        res = app_lab.opsbook("rollback", "--limit", "e2e-app1")
    assert res.returncode == 0, res.stdout + res.stderr
    load.assert_no_failed_request()
    assert served_version(app_lab, "e2e-app1") == "2.0.0"  # 5.0.0's previous; refused 3 and 4 never counted
    with Load(app_lab, "e2e-app1") as load:
        res = app_lab.opsbook("rollback", "--to", "1.0.0", "--limit", "e2e-app1")
    assert res.returncode == 0, res.stdout + res.stderr
    load.assert_no_failed_request()
    assert served_version(app_lab, "e2e-app1") == "1.0.0"
    res = app_lab.opsbook("rollback", "--to", "9.9.9", "--limit", "e2e-app1")
    assert res.returncode == 2 and "release 9.9.9 is not on the host" in res.stdout + res.stderr


def test_after_a_restart_the_current_release_serves_again(app_lab: LabEnv) -> None:
    lab.restart(["e2e-app1"], progress=False)
    deadline = time.monotonic() + 90
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = served(app_lab, "e2e-app1")
            if status == 200 and body.endswith("1.0.0"):
                return
            last = (status, body)
        except OSError as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"1.0.0 not served within 90 s of the restart; last: {last}")


def test_rolling_deploy_stops_at_the_failing_host(app_lab: LabEnv, releases: dict[str, Path]) -> None:
    res = deploy(app_lab, releases["1.0.0"], "1.0.0", "--limit", "e2e-app2")
    assert res.returncode == 0, res.stdout + res.stderr
    # e2e-app2's app gets a database it can't reach: its /healthz answers 503 (a real misconfiguration)
    hv = app_lab.inventory / "host_vars"
    hv.mkdir(exist_ok=True)
    (hv / "e2e-app2.yml").write_text('app_env: {DATABASE_URL: "postgresql://app:x@127.0.0.1:1/app"}\n')
    marker = "touch /tmp/opsbook-migrated"
    try:
        res = deploy(app_lab, releases["2.0.0"], "2.0.0", "-e", "app_health_timeout=10",
                     "-e", f"app_migrate_command='{marker}'")
    finally:
        (hv / "e2e-app2.yml").unlink()
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "app 2.0.0 REFUSED on e2e-app2" in out and "answered 503" in out, out
    report = last_report("deploy")
    assert {f["host"] for f in report["failures"]} == {"e2e-app2"}, report["failures"]  # type: ignore[index]
    assert served_version(app_lab, "e2e-app1") == "2.0.0"
    assert served_version(app_lab, "e2e-app2") == "1.0.0"
    # the migrations hook ran once, on the first host of the rollout
    assert app_lab.ssh("e2e-app1", "test -e /tmp/opsbook-migrated", check=False).returncode == 0
    assert app_lab.ssh("e2e-app2", "test -e /tmp/opsbook-migrated", check=False).returncode != 0
