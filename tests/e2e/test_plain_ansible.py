"""End to end, without the wrapper: playbooks/status.yml run by plain ansible-playbook (as AWX would run it) on a
database host that opsbook provisioned and backed up; then the same through `opsbook status --json`.

The hosts (pa-db, pa-store) are this module's own; a short-lived certificate is planted in certbot's live directory
of pa-db so the certificate check runs over SSH too (the lab's web hosts belong to other tests).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import FAST, ROOT, LabEnv, outcome, provisioned_lab

CERT_DIR = "/etc/letsencrypt/live/pa-db.opsbook.test"
METRICS = "/var/lib/prometheus/node-exporter/opsbook_backup_app.prom"


def _pem(days: float) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pa-db.opsbook.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("pa-db.opsbook.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def pa_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    with provisioned_lab(tmp_path_factory, {"db": ["pa-db"], "backup_store": ["pa-store"]}, FAST) as env:
        res = env.opsbook("backup", "run")
        assert res.returncode == 0, f"backup run failed:\n{outcome(res)}"
        env.ssh("pa-db", f"mkdir -p {CERT_DIR} && cat > {CERT_DIR}/cert.pem <<'EOF'\n{_pem(60.5)}EOF\n")
        yield env


def ansible_playbook(env: LabEnv, *args: str) -> subprocess.CompletedProcess[str]:
    """Plain ansible-playbook from the repository, with its ansible.cfg: what AWX or a cron job runs."""
    environ = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(["ansible-playbook", "-i", str(env.inventory), "playbooks/status.yml", *args],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)


def test_plain_ansible_playbook_reports_the_verified_backup(pa_lab: LabEnv) -> None:
    res = ansible_playbook(pa_lab, "--check")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert '"database": "app"' in out
    assert '"verification": "passed"' in out
    assert "last run" in out and " ok, verification passed" in out  # the summary line of the database
    assert "certificate pa-db.opsbook.test: 60 days left" in out
    for host in ("pa-db", "pa-store"):
        assert f"{host}" in out
    recap = [ln for ln in out.splitlines() if ln.startswith(("pa-db ", "pa-store "))]
    assert len(recap) == 2 and all("changed=0" in ln and "failed=0" in ln for ln in recap), recap


def test_a_stale_backup_or_a_short_certificate_fails_the_run(pa_lab: LabEnv) -> None:
    res = ansible_playbook(pa_lab, "-e", "status_backup_max_age_hours=0", "-e", "status_cert_min_days=90")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "backup app: stale: the newest verified backup is" in out
    assert "(limit 0.0 h)" in out
    assert "certificate pa-db.opsbook.test: expires in 60 days" in out
    recap = next(ln for ln in out.splitlines() if ln.startswith("pa-db "))
    assert "failed=1" in recap and "changed=0" in recap
    assert "failed=0" in next(ln for ln in out.splitlines() if ln.startswith("pa-store "))


def test_opsbook_status_json(pa_lab: LabEnv) -> None:
    res = pa_lab.opsbook("status", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert data["ok"] is True and data["unreachable"] == [] and data["errors"] == {}
    db = data["hosts"]["pa-db"]
    (backup,) = db["backups"]
    assert backup["database"] == "app"
    assert backup["newest_verified"].startswith("app-") and backup["newest_verified"].endswith(".dump")
    assert 0 <= backup["age_hours"] < 1
    assert backup["last_run_success"] is True and backup["verification"] == "passed"
    assert db["certificates"][0]["days_left"] == 60
    assert db["problems"] == []
    assert data["hosts"]["pa-store"]["problems"] == []


def test_a_failed_last_run_is_reported_with_exit_2(pa_lab: LabEnv) -> None:
    # what a run whose restore verification failed leaves behind (opsbook-backup writes these metrics)
    zero = "sed -E -i 's/^(opsbook_backup_(last_run|verification)_success[{].*[}]) 1$/\\1 0/'"
    pa_lab.ssh("pa-db", f"cp {METRICS} /root/metrics.bak && {zero} {METRICS} && grep -q 'run_success.* 0$' {METRICS}")
    try:
        res = pa_lab.opsbook("status")
        out = res.stdout + res.stderr
        assert res.returncode == 2, out
        assert "pa-db — 1 problem(s)" in res.stdout and "pa-store — ok" in res.stdout
        assert "FAILED, verification failed" in res.stdout  # the database's row in the table
        assert "problem: backup app: the last run (" in res.stdout
        assert "failed: dump or restore verification failed" in res.stdout
    finally:
        pa_lab.ssh("pa-db", f"mv /root/metrics.bak {METRICS}")
