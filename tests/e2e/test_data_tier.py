"""End to end, the data tier on one lab: a web host, a database host and a backup store, provisioned through the CLI
with every role (as in production, minus the FAST extras), the example app deployed and notes written.

In order, on the same hosts:
- backups: a verified backup over a fresh SSH session (common's libpam-tmpdir once made opsbook-backup fail there)
  and through the CLI, with the copy on the store;
- status: playbooks/status.yml run by plain ansible-playbook (as AWX would run it), then `opsbook status`; a
  short-lived certificate is planted in certbot's live directory of the database host so the certificate check
  runs there too;
- last, a DR drill: `opsbook drill` builds a fresh host from the inventory alone, restores the newest verified
  backup from the store, deploys the live release, and must serve the restored notes, with RTO and RPO measured.

One lab instead of three (each used to provision its own database host and store: about 15 min of CI).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsbook import lab
from tests.e2e.conftest import FAST, ROOT, LabEnv, last_report, outcome, provisioned_lab

NAMES = ["dr-web", "dr-db", "dr-store"]
DRILL = "dr-drill"
NOTES = 321

CERT_DIR = "/etc/letsencrypt/live/dr-db.opsbook.test"
METRICS = "/var/lib/prometheus/node-exporter/opsbook_backup_app.prom"


def _pem(days: float) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dr-db.opsbook.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("dr-db.opsbook.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()

@pytest.fixture(scope="module")
def dr_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    groups = {"web": ["dr-web"], "db": ["dr-db"], "backup_store": ["dr-store"]}
    with provisioned_lab(tmp_path_factory, groups, FAST, also_down=(DRILL,)) as env:
        res = env.opsbook("deploy", "1.0.0")  # builds examples/app as 1.0.0; its migration makes the notes table
        assert res.returncode == 0, f"deploy failed:\n{outcome(res)}"
        sql = f"INSERT INTO notes(body) SELECT 'note ' || g FROM generate_series(1, {NOTES:d}) g"  # noqa: S608
        env.ssh("dr-db", f"cd /tmp && runuser -u postgres -- psql -q app -c \"{sql}\"")
        res = env.opsbook("backup", "run")
        assert res.returncode == 0, f"backup failed:\n{outcome(res)}"
        env.ssh("dr-db", f"mkdir -p {CERT_DIR} && cat > {CERT_DIR}/cert.pem <<'EOF'\n{_pem(60.5)}EOF\n")
        yield env


# --------------------------------------------------------------------------- backups


def test_backup_run_over_a_fresh_ssh_session_is_verified(dr_lab: LabEnv) -> None:
    dr_lab.ssh("dr-db", "cd /tmp && sudo -u postgres /usr/lib/postgresql/15/bin/pgbench -i -q -s 1 app")
    # a new SSH session, as an operator or a cron job on another host would open it
    out = dr_lab.ssh("dr-db", "/usr/local/sbin/opsbook-backup run && /usr/local/sbin/opsbook-backup list --json")
    listing = json.loads(out.stdout[out.stdout.index("{"):])
    newest = listing["backups"][-1]
    assert newest["verification"] == "passed" and newest["latest_good"]
    # pgbench scale 1 (accounts, branches, tellers) and the notes the fixture wrote; the app has no other table
    assert newest["rows"] == 100_000 + 1 + 10 + NOTES
    # the copy on the store host
    stored = dr_lab.ssh("dr-store", f"find / -xdev -name {newest['file']} -size +0 2>/dev/null").stdout
    assert newest["file"] in stored


def test_backup_run_through_the_cli(dr_lab: LabEnv) -> None:
    res = dr_lab.opsbook("backup", "run")
    assert res.returncode == 0, res.stdout + res.stderr
    res = dr_lab.opsbook("backup", "list")
    assert res.returncode == 0
    report = last_report("backup-list")
    assert report["hosts"]["dr-db"]["failed"] == 0  # type: ignore[index]
    assert "passed" in res.stdout


# --------------------------------------------------------------------------- status (plain ansible-playbook, as AWX)


def ansible_playbook(env: LabEnv, *args: str) -> subprocess.CompletedProcess[str]:
    """Plain ansible-playbook from the repository, with its ansible.cfg: what AWX or a cron job runs."""
    environ = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(["ansible-playbook", "-i", str(env.inventory), "playbooks/status.yml", *args],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)


def test_plain_ansible_playbook_reports_the_verified_backup(dr_lab: LabEnv) -> None:
    res = ansible_playbook(dr_lab, "--check")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert '"database": "app"' in out
    assert '"verification": "passed"' in out
    assert "last run" in out and " ok, verification passed" in out  # the summary line of the database
    assert "certificate dr-db.opsbook.test: 60 days left" in out
    for host in ("dr-db", "dr-store"):
        assert f"{host}" in out
    recap = [ln for ln in out.splitlines() if ln.startswith(("dr-db ", "dr-store "))]
    assert len(recap) == 2 and all("changed=0" in ln and "failed=0" in ln for ln in recap), recap


def test_a_stale_backup_or_a_short_certificate_fails_the_run(dr_lab: LabEnv) -> None:
    res = ansible_playbook(dr_lab, "-e", "status_backup_max_age_hours=0", "-e", "status_cert_min_days=90")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "backup app: stale: the newest verified backup is" in out
    assert "(limit 0.0 h)" in out
    assert "certificate dr-db.opsbook.test: expires in 60 days" in out
    recap = next(ln for ln in out.splitlines() if ln.startswith("dr-db "))
    assert "failed=1" in recap and "changed=0" in recap
    assert "failed=0" in next(ln for ln in out.splitlines() if ln.startswith("dr-store "))


def test_opsbook_status_json(dr_lab: LabEnv) -> None:
    res = dr_lab.opsbook("status", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert data["ok"] is True and data["unreachable"] == [] and data["errors"] == {}
    db = data["hosts"]["dr-db"]
    (backup,) = db["backups"]
    assert backup["database"] == "app"
    assert backup["newest_verified"].startswith("app-") and backup["newest_verified"].endswith(".dump")
    assert 0 <= backup["age_hours"] < 1
    assert backup["last_run_success"] is True and backup["verification"] == "passed"
    assert db["certificates"][0]["days_left"] == 60
    assert db["problems"] == []
    assert data["hosts"]["dr-store"]["problems"] == []


def test_a_failed_last_run_is_reported_with_exit_2(dr_lab: LabEnv) -> None:
    # what a run whose restore verification failed leaves behind (opsbook-backup writes these metrics)
    zero = "sed -E -i 's/^(opsbook_backup_(last_run|verification)_success[{].*[}]) 1$/\\1 0/'"
    dr_lab.ssh("dr-db", f"cp {METRICS} /root/metrics.bak && {zero} {METRICS} && grep -q 'run_success.* 0$' {METRICS}")
    try:
        res = dr_lab.opsbook("status")
        out = res.stdout + res.stderr
        assert res.returncode == 2, out
        assert "dr-db — 1 problem(s)" in res.stdout and "dr-store — ok" in res.stdout
        assert "FAILED, verification failed" in res.stdout  # the database's row in the table
        assert "problem: backup app: the last run (" in res.stdout
        assert "failed: dump or restore verification failed" in res.stdout
    finally:
        dr_lab.ssh("dr-db", f"mv /root/metrics.bak {METRICS}")


# --------------------------------------------------------------------------- the DR drill, last


def test_drill_restores_the_data_and_measures_rto_and_rpo(dr_lab: LabEnv) -> None:
    start = time.time()
    res = dr_lab.opsbook("drill", "--host", DRILL)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    reports = sorted((ROOT / ".opsbook" / "drills").glob(f"drill-{DRILL}-*.json"))
    assert reports and reports[-1].stat().st_mtime >= start, out
    report = json.loads(reports[-1].read_text())
    print(json.dumps(report, indent=2))
    assert report["data"]["count"] == NOTES and int(report["expected_rows"]) == NOTES  # served through the app
    assert report["health"] == {"status": "ok", "version": "1.0.0", "database": "ok"}
    assert report["release"] == "1.0.0" and report["release_source"] == "dr-web"
    rto, rpo = float(report["rto_seconds"]), float(report["rpo_seconds"])
    elapsed = time.time() - start
    assert 0 < rto <= elapsed  # measured from the start of the drill (host boot included) to healthy
    assert rto < rpo  # the backup was taken before the drill started
    assert "RTO" in res.stdout and "| RPO" in res.stdout  # the Markdown report is printed
    assert Path(str(reports[-1]).removesuffix(".json") + ".md").is_file()
    # torn down afterwards: no drill host left in the lab
    assert DRILL not in {h.name for h in lab.load_hosts()}
    # no copy of the production dump left on the controller
    assert not list((ROOT / ".opsbook" / "drills" / "work").glob("*.dump"))
