"""End to end: blue/green deploys and rollbacks of the example app on provisioned web hosts, under wrk load.

Two web hosts get the whole provisioning (nginx, ACME certificate from the lab's Pebble, firewall, fail2ban);
the app is built from examples/app on the controller. Every operation on e2e-app1 runs while wrk (2 threads,
32 connections, keep-alive) requests https://e2e-app1.opsbook.test/ from the controller for its whole duration,
and the test asserts that not one request failed. Figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsbook import lab
from opsbook.lab import load
from tests.e2e.conftest import FAST, ROOT, LabEnv, last_report, outcome, provisioned_lab

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


def task_outputs(report: dict[str, object], prefix: str) -> dict[str, dict[str, object]]:
    """Per host, the result of the task whose name starts with PREFIX and that ran (not skipped), from the run's
    ansible-runner events."""
    out = {}
    for path in Path(str(report["artifacts"])).glob("**/job_events/*.json"):
        ev = json.loads(path.read_text())
        data = ev.get("event_data") or {}
        if ev["event"] in ("runner_on_ok", "runner_on_failed") and str(data.get("task", "")).startswith(prefix):
            out[str(data["host"])] = dict(data.get("res") or {})
    return out


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
    host = last_report("deploy", "e2e-app1")["hosts"]["e2e-app1"]  # type: ignore[index]
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
    marker = "echo opsbook-migrated-here"  # the hook is sandboxed (its own /tmp): it says so on its output
    try:
        res = deploy(app_lab, releases["2.0.0"], "2.0.0", "-e", "app_health_timeout=10",
                     "-e", f"app_migrate_command='{marker}'")
    finally:
        (hv / "e2e-app2.yml").unlink()
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "app 2.0.0 REFUSED on e2e-app2" in out and "answered 503" in out, out
    report = last_report("deploy", "e2e-app2")
    assert {f["host"] for f in report["failures"]} == {"e2e-app2"}, report["failures"]  # type: ignore[index]
    assert served_version(app_lab, "e2e-app1") == "2.0.0"
    assert served_version(app_lab, "e2e-app2") == "1.0.0"
    # the migrations hook ran once, on the first host of the rollout
    said = {h: r.get("stdout", "") for h, r in task_outputs(report, "Run the migrations hook").items()}
    assert said == {"e2e-app1": "opsbook-migrated-here"}, said
    # the operation lock was released on both hosts, on success (e2e-app1) and on the refusal (e2e-app2)
    assert [lock_status(app_lab, n) for n in NAMES] == ["free", "free"]


# --------------------------------------------------------------------------- the per-host operation lock


def lock_status(env: LabEnv, name: str) -> str:
    return env.ssh(name, "/usr/local/sbin/opsbook-lock status").stdout.strip()


def artifact(releases: dict[str, Path], version: str) -> str:
    """The release built on the controller beforehand, so that both runs start their playbooks at once."""
    from opsbook.commands.deploy import build_artifact

    return str(build_artifact(releases[version], version)["artifact"])


def refusal_timing(verb: str) -> dict[str, float]:
    """From the newest refused VERB run's events: seconds from the lock task's start and from the playbook's start
    to the refusal (printed, never asserted: benchmarks/lock_refusal.py measures the refusal)."""
    runs = sorted((ROOT / ".opsbook" / "runs").glob(f"*-{verb}.json"), key=lambda p: p.stat().st_mtime)[-3:]
    for report in reversed(runs):
        data = json.loads(report.read_text())
        if not any("is busy" in f["message"] for f in data.get("failures", [])):
            continue
        if data.get("refused_by") == "controller lock":  # refused before Ansible started: no events
            return {"from_lock_task": 0.0, "from_playbook_start": 0.0, "cli": float(data["seconds"])}
        at: dict[str, float] = {}
        for path in Path(data["artifacts"]).glob("**/job_events/*.json"):
            ev = json.loads(path.read_text())
            task = str((ev.get("event_data") or {}).get("task") or "")
            t = dt.datetime.fromisoformat(ev["created"]).timestamp()
            if ev["event"] == "playbook_on_start":
                at["start"] = t
            elif ev["event"] == "playbook_on_task_start" and task.startswith("Take the operation lock"):
                at["lock"] = t
            elif ev["event"] == "runner_on_failed" and task == "Refuse - the host is busy":
                at["refused"] = t
        return {"from_lock_task": at["refused"] - at["lock"], "from_playbook_start": at["refused"] - at["start"],
                "cli": -1.0}
    raise AssertionError(f"no refused {verb} report among {runs}")


def test_two_deploys_at_once_one_wins_the_other_is_refused_at_once_under_load(
        app_lab: LabEnv, releases: dict[str, Path]) -> None:
    res = deploy(app_lab, releases["1.0.0"], "1.0.0", "--limit", "e2e-app1")
    assert res.returncode == 0, outcome(res)
    targets = {v: artifact(releases, v) for v in ("2.0.0", "5.0.0")}
    env = dict(os.environ, OPSBOOK_ROOT=str(ROOT), NO_COLOR="1", COLUMNS="200")
    cmd = [shutil.which("opsbook") or "opsbook", "deploy"]
    with Load(app_lab, "e2e-app1") as load:
        procs, started, took = {}, {}, {}
        for version, target in targets.items():
            started[version] = time.monotonic()
            procs[version] = subprocess.Popen([*cmd, target, "--limit", "e2e-app1", "-i", str(app_lab.inventory)],
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                              cwd=ROOT)
        outs = {}
        pending = dict(procs)
        while pending:
            for version, proc in list(pending.items()):
                if proc.poll() is not None:
                    took[version] = time.monotonic() - started[version]
                    outs[version] = proc.communicate()[0]
                    del pending[version]
            time.sleep(0.05)
    codes = {v: p.returncode for v, p in procs.items()}
    print(f"concurrent deploys: exit codes {codes}, wall seconds {({v: round(t, 1) for v, t in took.items()})}")
    assert sorted(codes.values()) == [0, 2], "\n\n".join(f"== {v}: exit {codes[v]}\n{outs[v][-4000:]}" for v in outs)
    won = next(v for v, c in codes.items() if c == 0)
    lost = next(v for v, c in codes.items() if c == 2)
    flat = " ".join(outs[lost].split())
    assert re.search(rf"e2e-app1 is busy: deploy {re.escape(won)} by \S+@\S+ \(run \S+", flat), outs[lost][-4000:]
    assert "since 20" in flat and "Refused at once" in flat, outs[lost][-4000:]
    # both ran from this controller: its own lock refused the second one before Ansible started
    assert "on this controller" in flat, outs[lost][-4000:]
    timing = refusal_timing("deploy")
    assert timing["cli"] >= 0, timing
    print(f"refusal by this controller's lock: {timing['cli']:.1f} s in the lock step, "
          f"{took[lost]:.1f} s after the command")
    # no timing assertion (tests never time; benchmarks/lock_refusal.py measures the refusal): the figures above
    load.assert_no_failed_request()
    assert served_version(app_lab, "e2e-app1") == won
    assert lock_status(app_lab, "e2e-app1") == "free"


def test_a_deploy_with_wait_runs_after_the_one_holding_the_lock(app_lab: LabEnv, releases: dict[str, Path]) -> None:
    # a lock held by another run (as a deploy from another controller would): --wait waits for its release
    app_lab.ssh("e2e-app1", "/usr/local/sbin/opsbook-lock acquire --holder carol@ci --run-id ci-77 "
                            "--operation 'deploy 9.9.9' --ttl 300")
    res = deploy(app_lab, releases["2.0.0"], "2.0.0", "--limit", "e2e-app1")
    flat = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 2 and "is busy: deploy 9.9.9 by carol@ci (run ci-77" in flat, outcome(res)
    # released only once the second run is seen waiting for it on the host (its opsbook-lock acquire is running)
    releaser = subprocess.Popen([*lab.ssh_command("e2e-app1"),
                                 "for i in $(seq 600); do pgrep -f '[o]psbook-lock .*acquire .*--wait 120' >/dev/null "
                                 "&& sleep 3 && echo seen-waiting && break; sleep 0.5; done; "
                                 "/usr/local/sbin/opsbook-lock release --run-id ci-77"],
                                stdout=subprocess.PIPE, text=True)
    try:
        res = deploy(app_lab, releases["2.0.0"], "2.0.0", "--limit", "e2e-app1", "--wait", "120")
    finally:
        seen = releaser.communicate(timeout=60)[0]
    assert res.returncode == 0, outcome(res)
    assert "seen-waiting" in seen  # it did wait: the lock was held when it got there, and it went on after
    assert served_version(app_lab, "e2e-app1") == "2.0.0"
    assert lock_status(app_lab, "e2e-app1") == "free"


def test_check_mode_takes_no_lock_and_shows_a_holder(app_lab: LabEnv) -> None:
    app_lab.ssh("e2e-app1", "/usr/local/sbin/opsbook-lock acquire --holder carol@ci --run-id ci-78 "
                            "--operation 'backup run' --ttl 300")
    try:
        res = app_lab.opsbook("rollback", "--limit", "e2e-app1", "--check")
        assert "carol@ci" in res.stdout + res.stderr, outcome(res)
        assert "ci-78" in lock_status(app_lab, "e2e-app1")  # untouched
    finally:
        app_lab.ssh("e2e-app1", "/usr/local/sbin/opsbook-lock release --run-id ci-78")
