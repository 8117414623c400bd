"""plugins/filter/opsbook_status.py: the judgement of playbooks/status.yml, as plain functions (no Ansible run).

The playbook tests in test_status.py run the same code through ansible-playbook; these pin each rule."""

from __future__ import annotations

import base64
import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 22, 4, 0, tzinfo=dt.UTC).timestamp()


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("opsbook_status_filter", ROOT / "plugins/filter/opsbook_status.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


f = _load()


def slurp(text: str, **extra: Any) -> dict[str, Any]:
    return {"content": base64.b64encode(text.encode()).decode(), **extra}


def pem(days: float, name: str = "web1.example.test") -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Pebble Intermediate CA")])
    now = dt.datetime.fromtimestamp(NOW, dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def metrics(last_run: float, success: int, verified: int) -> str:
    return (f'opsbook_backup_last_run_timestamp_seconds{{database="app"}} {int(last_run)}\n'
            f'opsbook_backup_last_run_success{{database="app"}} {success}\n'
            f'opsbook_backup_verification_success{{database="app"}} {verified}\n')


def listing(*snapshots: tuple[str, bool]) -> dict[str, Any]:
    backups = [{"file": f"app-{i}.dump", "snapshot_time": t, "latest_good": good}
               for i, (t, good) in enumerate(snapshots)]
    return {"rc": 0, "stdout": json.dumps({"database": "app", "backups": backups})}


# ---------------------------------------------------------------- units

def test_units_active_loaded_missing_unreadable() -> None:
    checks = [{"what": "firewall", "unit": "nftables.service"}, {"what": "database", "unit": "pg.service"},
              {"what": "database", "unit": "gone.service"}, {"what": "database", "unit": "x.service"}]
    results = {"results": [
        {"rc": 0, "stdout": "LoadState=loaded\nActiveState=active\nSubState=running\nResult=success"},
        {"rc": 0, "stdout": "LoadState=loaded\nActiveState=failed\nSubState=failed\nResult=exit-code"},
        {"rc": 0, "stdout": "LoadState=not-found\nActiveState=inactive"},
        {"rc": 1, "stdout": "", "stderr": "Failed to connect to bus\n"},
    ]}
    ok, failed, missing, unreadable = f.units(checks, results)
    assert ok["problems"] == [] and ok["summary"] == "firewall nftables.service: active (running)"
    assert failed["problems"] == ["database pg.service: failed (failed, result exit-code): the database is not running"]
    assert missing["problems"] == ["database gone.service: not installed (not-found); the database is not running"]
    assert unreadable["problems"] == ["database x.service: cannot read its state: Failed to connect to bus"]
    assert unreadable["active_state"] is None and unreadable["summary"] == "database x.service: unknown"


# ---------------------------------------------------------------- the app

def test_app_live_missing_and_not_required() -> None:
    fact = {"name": "app", "live_version": "2.0.0", "live_colour": "blue", "previous_version": "1.0.0",
            "releases": ["1.0.0", "2.0.0"], "deployed_at": "2026-11-21T10:00:00Z"}
    app, problems = f.app(slurp(json.dumps(fact)), "/f", True)
    assert problems == [] and app["live_version"] == "2.0.0"
    assert app["summary"] == ("app app: 2.0.0 live on blue since 2026-11-21T10:00:00Z; previous 1.0.0; "
                              "releases on the host: 1.0.0, 2.0.0")
    app, problems = f.app(slurp(json.dumps({"name": "app", "live_version": None})), "/f", True)
    assert problems == ["app app: no live release"] and app["problems"] == problems
    assert f.app({"msg": "file not found"}, "/f", True) == (None, ["app: no live release (/f: file not found)"])
    assert f.app({"msg": "file not found"}, "/f", False) == (None, [])


# ---------------------------------------------------------------- backups

def test_metrics_files_from_the_configurations() -> None:
    configs = {"results": [slurp(json.dumps({"metrics_file": "/m/app.prom", "ping_urls": {}})), {"failed": True},
                           slurp("not json")]}
    assert f.metrics_files(configs) == ["/m/app.prom", "", ""]


def test_backup_fresh_and_verified() -> None:
    b = f.backup("app", slurp("{}"), listing(("2026-11-21T02:00:00Z", True), ("2026-11-22T03:00:00Z", True)),
                 slurp(metrics(NOW - 3700, 1, 1)), NOW, 26.0, "/etc/opsbook/backup")
    assert b["problems"] == [] and b["newest_verified"] == "app-1.dump" and b["age_hours"] == 1.0
    assert (b["backups"], b["last_run_success"], b["verification"]) == (2, True, "passed")
    assert b["summary"] == ("backup app: newest verified app-1.dump (snapshot 2026-11-22T03:00:00Z, 1.0 h old); "
                            "last run 2026-11-22T02:58:20Z ok, verification passed")


def test_backup_stale_and_last_run_failed() -> None:
    b = f.backup("app", slurp("{}"), listing(("2026-11-20T02:30:00Z", True), ("2026-11-22T02:30:00Z", False)),
                 slurp(metrics(NOW - 5400, 0, 0)), NOW, 26.0, "/c")
    assert b["problems"] == [
        "backup app: stale: the newest verified backup is 49.5 h old (limit 26.0 h)",
        "backup app: the last run (2026-11-22T02:30:00Z) failed: dump or restore verification failed",
    ]
    b = f.backup("app", slurp("{}"), listing(("2026-11-22T03:00:00Z", True)), slurp(metrics(NOW - 60, 0, 1)),
                 NOW, 26.0, "/c")
    assert b["problems"] == ["backup app: the last run (2026-11-22T03:59:00Z) failed: verification passed, "
                             "the off-host copy or pruning failed"]


@pytest.mark.parametrize(
    ("config", "lst", "metric", "problem"),
    [
        ({"failed": True}, {"skipped": True}, {"skipped": True},
         "backup app: not configured on this host (/c/app.json is missing; run opsbook provision)"),
        (slurp("{}"), {"rc": 2, "stdout": "", "stderr": "no such database\n"}, {"skipped": True},
         "backup app: cannot list the backups: no such database"),
        (slurp("{}"), listing(), {"skipped": True}, "backup app: never ran (no backup, no metrics)"),
        (slurp("{}"), listing(("2026-11-22T03:00:00Z", False)), {"skipped": True},
         "backup app: no verified backup (1 backups, none passed verification)"),
    ],
)
def test_backup_problems(config: dict[str, Any], lst: dict[str, Any], metric: dict[str, Any], problem: str) -> None:
    assert f.backup("app", config, lst, metric, NOW, 26.0, "/c")["problems"] == [problem]


# ---------------------------------------------------------------- certificates

def test_certificates_days_left_short_expired_unreadable() -> None:
    good = f.certificate(slurp(pem(60.5), item="/live/web1.example.test"), NOW, 14)
    assert (good["name"], good["days_left"], good["problems"]) == ("web1.example.test", 60, [])
    assert good["names"] == ["web1.example.test"] and good["issuer"] == "Pebble Intermediate CA"
    assert good["path"] == "/live/web1.example.test/cert.pem"
    short = f.certificate(slurp(pem(3.5), item="/live/s"), NOW, 14)
    assert short["problems"] == [f"certificate s: expires in 3 days ({short['not_after']}; limit 14 days)"]
    expired = f.certificate(slurp(pem(-2), item="/live/e"), NOW, 14)
    assert expired["problems"] == [f"certificate e: EXPIRED at {expired['not_after']}"]
    gone = f.certificate({"item": "/live/g", "msg": "permission denied"}, NOW, 14)
    assert gone["problems"] == ["certificate g: cannot read /live/g/cert.pem: permission denied"]
    junk = f.certificate(slurp("junk", item="/live/j"), NOW, 14)
    assert junk["days_left"] is None and junk["problems"][0].startswith("certificate j: cannot read")


# ---------------------------------------------------------------- the report

def test_report_orders_problems_units_app_backups_certificates() -> None:
    raw = {
        "unit_checks": [{"what": "firewall", "unit": "nftables.service"}],
        "unit_states": {"results": [{"rc": 0, "stdout": "LoadState=loaded\nActiveState=failed\nSubState=failed"}]},
        "app_fact": {"msg": "missing"},
        "databases": ["app"], "backup_configs": {"results": [{"failed": True}]},
        "backup_lists": {"results": [{"skipped": True}]}, "backup_metrics": {"results": [{"skipped": True}]},
        "cert_files": {"results": []},
    }
    report = f.opsbook_status(raw, "web1", now=NOW, app_required=True, cert_required=True, app_fact_file="/f",
                              cert_dir="/live", backup_config_dir="/c")
    assert report["host"] == "web1" and report["checked_at"] == "2026-11-22T04:00:00Z"
    assert [p.split(":")[0] for p in report["problems"]] == [
        "firewall nftables.service", "app", "backup app", "certificates"]
    assert set(report) == {"host", "checked_at", "app", "backups", "certificates", "units", "problems"}
    assert f.FilterModule().filters()["opsbook_status"] is f.opsbook_status
