"""opsbook status: the CLI's parsing and display (canned events), and the playbook's judgement on this machine
(connection local, faked app fact, backup command, metrics and certificates: no lab needed)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from opsbook import runner
from opsbook.commands import status

ROOT = Path(__file__).resolve().parents[2]

GOOD = {
    "host": "web1",
    "checked_at": "2026-11-22T04:00:00Z",
    "app": {"name": "app", "live_version": "2.0.0", "live_colour": "green", "previous_version": "1.0.0",
            "releases": ["1.0.0", "2.0.0"], "deployed_at": "2026-11-21T10:00:00Z", "problems": []},
    "backups": [],
    "certificates": [{"name": "web1.opsbook.test", "names": ["web1.opsbook.test"], "issuer": "Pebble Intermediate CA",
                      "not_after": "2027-02-19T16:07:31Z", "days_left": 89, "problems": []}],
    "problems": [],
}
BAD = {
    "host": "db1",
    "checked_at": "2026-11-22T04:00:00Z",
    "app": None,
    "backups": [
        {"database": "app", "newest_verified": "app-20261120T023000Z.dump",
         "newest_verified_at": "2026-11-20T02:30:00Z", "age_hours": 49.5, "last_run_at": "2026-11-22T02:30:00Z",
         "last_run_success": False, "verification": "failed",
         "problems": ["backup app: stale: the newest verified backup is 49.5 h old (limit 26.0 h)",
                      "backup app: the last run (2026-11-22T02:30:00Z) failed: dump or restore verification failed"]},
        {"database": "[shop]", "newest_verified": None, "age_hours": None, "last_run_at": None,
         "problems": ["backup [shop]: never ran (no backup, no metrics)"]},
    ],
    "certificates": [],
    "problems": ["backup app: stale: the newest verified backup is 49.5 h old (limit 26.0 h)",
                 "backup app: the last run (2026-11-22T02:30:00Z) failed: dump or restore verification failed",
                 "backup [shop]: never ran (no backup, no metrics)"],
}


FIREWALL_DOWN = {
    "host": "db2",
    "checked_at": "2026-11-22T04:00:00Z",
    "app": None, "backups": [], "certificates": [],
    "units": [
        {"what": "firewall", "unit": "nftables.service", "load_state": "loaded", "active_state": "failed",
         "sub_state": "failed", "result": "exit-code",
         "problems": ["firewall nftables.service: failed (failed, result exit-code): the firewall is not loaded"]},
        {"what": "database", "unit": "postgresql@15-main.service", "load_state": "loaded", "active_state": "inactive",
         "sub_state": "dead", "result": "success",
         "problems": ["database postgresql@15-main.service: inactive (dead, result success): "
                      "the database is not running"]},
    ],
    "problems": ["firewall nftables.service: failed (failed, result exit-code): the firewall is not loaded",
                 "database postgresql@15-main.service: inactive (dead, result success): the database is not running"],
}


def ev(kind: str, **data: Any) -> dict[str, Any]:
    return {"event": kind, "event_data": data}


def canned_events() -> list[dict[str, Any]]:
    return [
        ev("playbook_on_task_start", task="Report status"),
        ev("runner_on_ok", host="web1", task="Report status", res={"opsbook_status": {"host": "old"}}),
        ev("runner_on_failed", host="db1", task="Fail when something is missing, stale or failed", res={"msg": "x"}),
        ev("playbook_on_stats", ok={"web1": 9, "db1": 9}, artifact_data=canned_results()),
    ]


def canned_results() -> dict[str, Any]:
    """A status run's results: the statistic opsbook_status (set_stats), {host: report}."""
    return {"opsbook_status": {"web1": GOOD, "db1": BAD}}


def test_register_adds_the_verb_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="opsbook")
    status.register(parser.add_subparsers(dest="verb"), argparse.RawDescriptionHelpFormatter)
    args = parser.parse_args(["status", "-i", "inv", "--limit", "db", "--json", "-e", "status_cert_min_days=7"])
    assert (args.inventory, args.limit, args.json, args.extra_vars) == ("inv", "db", True, ["status_cert_min_days=7"])
    assert args.func is status.run
    with pytest.raises(SystemExit):
        parser.parse_args(["status", "--help"])
    assert "examples:" in capsys.readouterr().out


def test_reports_come_from_the_runs_opsbook_status_statistic() -> None:
    reports = status.from_results(canned_results())
    assert set(reports) == {"web1", "db1"}
    assert reports["db1"]["backups"][0]["age_hours"] == 49.5


def test_collect_reads_the_runs_artifacts(tmp_path: Path) -> None:
    events = tmp_path / "artifacts" / "run1" / "job_events"
    events.mkdir(parents=True)
    for n, e in enumerate(canned_events()):
        (events / f"{n}-x.json").write_text(json.dumps(e))
    (events / "99-broken.json").write_text("{not json")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"artifacts": str(tmp_path / "artifacts")}))
    assert set(status.collect(report)) == {"web1", "db1"}
    assert status.collect(tmp_path / "missing.json") == {}
    # a report that kept the results (runner.run_playbook writes them) is read as is
    report.write_text(json.dumps({"artifacts": "/nonexistent", "results": {"opsbook_status": {"web1": GOOD}}}))
    assert set(status.collect(report)) == {"web1"}


def test_rows_show_release_backup_age_verification_and_days_left() -> None:
    good = status.rows(GOOD)
    assert good[0] == ("app app", "2.0.0 (green)",
                       "previous 1.0.0; deployed 2026-11-21T10:00:00Z; 2 releases on the host", False)
    assert good[1][:2] == ("certificate web1.opsbook.test", "89 days left")
    bad = status.rows(BAD)
    assert bad[0][1] == "2.1 d old" and bad[0][3] is True
    assert "last run 2026-11-22T02:30:00Z FAILED, verification failed" in bad[0][2]
    assert bad[1][1:] == ("no verified backup", "last run unknown", True)


def test_render_prints_every_host_and_problem_verbatim() -> None:
    buf = io.StringIO()
    status.render(Console(file=buf, width=200, color_system=None), status.from_results(canned_results()),
                  ["web2"], {"db2": "Read the app's local fact: permission denied"})
    out = buf.getvalue()
    assert out.index("db1") < out.index("web1")
    assert "web1 — ok" in out and "db1 — 3 problem(s)" in out
    assert "problem: backup [shop]: never ran" in out  # brackets are text, not rich markup
    assert "web2: unreachable" in out and "db2: no report: Read the app's local fact" in out


def test_rows_and_render_show_a_failed_firewall_and_a_stopped_database() -> None:
    assert status.rows(FIREWALL_DOWN) == [
        ("firewall nftables.service", "failed (failed)", "loaded, result exit-code", True),
        ("database postgresql@15-main.service", "inactive (dead)", "loaded, result success", True),
    ]
    buf = io.StringIO()
    status.render(Console(file=buf, width=200, color_system=None), {"db2": FIREWALL_DOWN}, [], {})
    out = buf.getvalue()
    assert "db2 — 2 problem(s)" in out
    assert "problem: firewall nftables.service: failed" in out and "the database is not running" in out


@pytest.mark.parametrize(
    ("tally", "rc", "reports", "expected"),
    [
        (runner.HostTally(ok=9), 0, {"web1": GOOD}, 0),
        (runner.HostTally(ok=9, failed=1), 2, {"db1": BAD}, 2),
        (runner.HostTally(ok=9), 0, {"db1": BAD}, 2),  # a problem never exits 0
        (runner.HostTally(ok=9), 0, {"db2": FIREWALL_DOWN}, 2),
        (runner.HostTally(unreachable=1), 4, {}, 3),
    ],
)
def test_exit_codes(tally: runner.HostTally, rc: int, reports: dict[str, Any], expected: int) -> None:
    result = runner.RunResult("status.yml", rc, "x", {"h": tally}, Path("/dev/null"), 0.0)
    assert status.exit_code(result, reports) == expected


# ---------------------------------------------------------------- the playbook, on this machine

def _cert(path: Path, days: float) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, path.name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(path.name)]), critical=False)
            .sign(key, hashes.SHA256()))
    path.mkdir(parents=True)
    (path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@pytest.fixture
def fake_host(tmp_path: Path) -> Path:
    """A web host with a live release, one database backed up an hour ago and a certificate of 60 days."""
    now = time.time()
    (tmp_path / "app.fact").write_text(json.dumps({
        "name": "app", "live_version": "2.0.0", "live_colour": "blue", "previous_version": "1.0.0",
        "releases": ["1.0.0", "2.0.0"], "deployed_at": _iso(now - 7200)}))
    _cert(tmp_path / "live" / "web1.example.test", 60.5)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "app.json").write_text(json.dumps({
        "database": "app", "metrics_file": str(tmp_path / "app.prom"),
        "ping_urls": {"success": "https://hc.example/ping/TOKEN-never-shown"}}))
    (tmp_path / "app.prom").write_text(textwrap.dedent(f"""\
        # HELP opsbook_backup_last_run_timestamp_seconds Unix time of the last backup run
        opsbook_backup_last_run_timestamp_seconds{{database="app"}} {int(now - 3700)}
        opsbook_backup_last_run_success{{database="app"}} 1
        opsbook_backup_last_success_timestamp_seconds{{database="app"}} {int(now - 3600)}
        opsbook_backup_verification_success{{database="app"}} 1
        """))
    listing = {"database": "app", "dir": "/x", "backups": [
        {"file": "app-1.dump", "snapshot_time": _iso(now - 3600), "verification": "passed", "latest_good": True}]}
    (tmp_path / "list.json").write_text(json.dumps(listing))
    # systemctl show: every unit active, unless units.json names its properties (tests write it)
    (tmp_path / "units.json").write_text("{}")
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        unit = sys.argv[-1]
        units = json.load(open({str(tmp_path / "units.json")!r}))
        if unit == "broken.service":
            sys.exit("Failed to connect to bus: No such file or directory")
        state = {{"LoadState": "loaded", "ActiveState": "active", "SubState": "running", "Result": "success"}}
        state.update(units.get(unit, {{}}))
        print("\\n".join(f"{{k}}={{v}}" for k, v in state.items()))
        """))
    systemctl.chmod(0o755)
    cmd = tmp_path / "opsbook-backup"
    cmd.write_text(f"#!/bin/sh\n[ \"$2\" = app ] && [ \"$3\" = list ] && exec cat {tmp_path / 'list.json'}\nexit 2\n")
    cmd.chmod(0o755)
    inventory = {"all": {"children": {"web": {"hosts": {"web1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "backup_databases": [{"name": "app"}],
        "status_app_fact_file": str(tmp_path / "app.fact"), "status_cert_dir": str(tmp_path / "live"),
        "__status_backup_command": str(cmd), "__status_backup_config_dir": str(tmp_path / "cfg"),
        "__status_systemctl": str(systemctl),
    }}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    return tmp_path


def play(host: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run playbooks/status.yml with plain ansible-playbook; return rc, web1's report and the whole output."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_SHOW_CUSTOM_STATS="true", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    # the play's internal paths are play vars: only extra vars override them
    internal = {k: v for k, v in yaml.safe_load((host / "hosts.yml").read_text())["all"]["children"]["web"]["hosts"]
                ["web1"].items() if k.startswith("__")}
    playbook = str(Path(sys.executable).parent / "ansible-playbook")
    res = subprocess.run([playbook, "-i", str(host / "hosts.yml"), "playbooks/status.yml", "-e", json.dumps(internal),
                          *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    start = res.stdout.find("\n{\n")  # profile_tasks (ansible.cfg) prints timing lines around the JSON
    assert start >= 0, res.stdout + res.stderr
    out, _ = json.JSONDecoder().raw_decode(res.stdout[start + 1:])
    report = out["global_custom_stats"]["opsbook_status"]["web1"]  # the run statistic (set_stats), as AWX reads it
    assert out["stats"]["web1"]["changed"] == 0, "status must change nothing"
    return res.returncode, report, res.stdout


def test_playbook_healthy_host_passes(fake_host: Path) -> None:
    rc, report, out = play(fake_host, "--check")
    assert rc == 0, out
    assert report["problems"] == []
    assert report["app"]["live_version"] == "2.0.0" and report["app"]["live_colour"] == "blue"
    (backup,) = report["backups"]
    assert backup["newest_verified"] == "app-1.dump" and 0.9 <= backup["age_hours"] <= 1.1
    assert backup["last_run_success"] is True and backup["verification"] == "passed"
    assert "verification passed" in backup["summary"]
    (cert,) = report["certificates"]
    assert cert["name"] == "web1.example.test" and cert["days_left"] == 60
    assert "TOKEN-never-shown" not in out  # the database's config (ping URLs) is read with no_log
    (unit,) = report["units"]  # a web host: the firewall, no database
    assert (unit["what"], unit["unit"], unit["active_state"], unit["problems"]) == (
        "firewall", "nftables.service", "active", [])


def test_playbook_fails_the_host_for_each_problem(fake_host: Path) -> None:
    (fake_host / "app.fact").write_text(json.dumps({"name": "app", "live_version": None, "releases": []}))
    prom = fake_host / "app.prom"
    prom.write_text(prom.read_text().replace("last_run_success{database=\"app\"} 1",
                                             "last_run_success{database=\"app\"} 0"))
    _cert(fake_host / "live" / "short.example.test", 3.5)
    rc, report, out = play(fake_host, "-e", "status_backup_max_age_hours=0.5", "-e", "status_cert_min_days=30")
    assert rc != 0
    problems = report["problems"]
    assert "app app: no live release" in problems
    stale = "backup app: stale: the newest verified backup is 1.0 h old (limit 0.5 h)"
    assert any(p.startswith(stale) for p in problems)
    assert any(p.startswith("backup app: the last run") and "off-host copy or pruning failed" in p for p in problems)
    assert "certificate short.example.test: expires in 3 days" in " ".join(problems)
    assert not any(p.startswith("certificate web1.example.test") for p in problems)
    assert len(problems) == 4, problems
    assert "4 problem(s): app app: no live release" in out  # the failing task names them for ansible-playbook users


def test_playbook_bare_web_host_has_nothing_and_says_so(fake_host: Path) -> None:
    for name in ("app.fact", "cfg/app.json"):
        (fake_host / name).unlink()
    (fake_host / "live" / "web1.example.test" / "cert.pem").unlink()
    (fake_host / "live" / "web1.example.test").rmdir()
    rc, report, _ = play(fake_host)
    assert rc != 0
    assert report["app"] is None and report["certificates"] == []
    assert [p.split(" (")[0] for p in report["problems"]] == [
        "app: no live release", "backup app: not configured on this host",
        "certificates: none in " + str(fake_host / "live")]


def test_playbook_never_run_backup(fake_host: Path) -> None:
    (fake_host / "app.prom").unlink()
    (fake_host / "list.json").write_text(json.dumps({"database": "app", "dir": "/x", "backups": []}))
    rc, report, _ = play(fake_host)
    assert rc != 0
    assert report["problems"] == ["backup app: never ran (no backup, no metrics)"]
    assert report["backups"][0]["summary"] == "backup app: no verified backup; last run unknown"


def test_playbook_fails_for_a_failed_firewall_and_a_stopped_database(fake_host: Path) -> None:
    """Issue 11 item 6: after a boot with an invalid /etc/nftables.conf, nftables.service is failed and PostgreSQL
    (which requires it) was not started; status must say both and fail."""
    (fake_host / "units.json").write_text(json.dumps({
        "nftables.service": {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code"},
        "postgresql@15-main.service": {"ActiveState": "inactive", "SubState": "dead", "Result": "success"},
    }))
    rc, report, out = play(fake_host, "-e", '{"status_database_units": ["postgresql@15-main.service"]}')
    assert rc != 0
    units = {u["unit"]: u for u in report["units"]}
    assert units["nftables.service"]["what"] == "firewall"
    assert units["nftables.service"]["active_state"] == "failed"
    assert units["nftables.service"]["result"] == "exit-code"
    assert units["postgresql@15-main.service"]["what"] == "database"
    assert units["postgresql@15-main.service"]["active_state"] == "inactive"
    assert report["problems"][:2] == [
        "firewall nftables.service: failed (failed, result exit-code): the firewall is not loaded "
        "(fix /etc/nftables.conf: nft -c -f); the services it guards stay down",
        "database postgresql@15-main.service: inactive (dead, result success): the database is not running",
    ]
    assert len(report["problems"]) == 2, report["problems"]
    assert "2 problem(s): firewall nftables.service: failed" in out


def test_playbook_units_missing_or_unreadable_are_problems(fake_host: Path) -> None:
    (fake_host / "units.json").write_text(json.dumps({"nftables.service": {"LoadState": "not-found",
                                                                            "ActiveState": "inactive"}}))
    rc, report, _ = play(fake_host, "-e", '{"status_database_units": ["broken.service"]}')
    assert rc != 0
    assert report["problems"] == [
        "firewall nftables.service: not installed (not-found); the firewall is not loaded "
        "(fix /etc/nftables.conf: nft -c -f); the services it guards stay down",
        "database broken.service: cannot read its state: Failed to connect to bus: No such file or directory",
    ]


def test_playbook_firewall_check_can_be_switched_off(fake_host: Path) -> None:
    (fake_host / "units.json").write_text(json.dumps({"nftables.service": {"ActiveState": "failed"}}))
    rc, report, out = play(fake_host, "-e", "status_firewall_unit=")
    assert rc == 0, out
    assert report["units"] == [] and report["problems"] == []


def test_playbook_refuses_a_database_unit_list_given_as_a_string(fake_host: Path) -> None:
    """-e status_database_units=[x] is Ansible's KEY=VALUE: a string. The play refuses it naming the variable (it
    checked the characters of the string as unit names before, and found no database unit)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    internal = {k: v for k, v in yaml.safe_load((fake_host / "hosts.yml").read_text())["all"]["children"]["web"]
                ["hosts"]["web1"].items() if k.startswith("__")}
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(fake_host / "hosts.yml"),
                          "playbooks/status.yml", "-e", json.dumps(internal),
                          "-e", "status_database_units=[postgresql@15-main.service]"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "status_database_units must be a list of unit names" in res.stdout, res.stdout[-3000:]
