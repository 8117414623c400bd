"""End to end, the data tier on one lab: a web host, a database host and a backup store, provisioned through the CLI
with every role (as in production, minus the FAST extras), the example app deployed and notes written.

In order, on the same hosts:
- backups: a verified backup over a fresh SSH session (common's libpam-tmpdir once made opsbook-backup fail there),
  through the CLI, and by the sandboxed opsbook-backup@ unit itself, with the copy on the store (in its ledger);
- status: playbooks/status.yml run by plain ansible-playbook (as AWX would run it), then `opsbook status`; a
  short-lived certificate is planted in certbot's live directory of the database host so the certificate check
  runs there too;
- last, a DR drill: `opsbook drill` builds a fresh host from the inventory alone, restores the newest verified
  backup from the store, deploys the live release, and must serve the restored notes, with RTO and RPO measured;
  before it, the database host's key uploads forged copies (a manifest naming ../../../../etc/shadow, a newer
  one-byte dump with a "passed" manifest): the drill still restores the newest real copy and leaves no dump on the
  controller (issue 11 items 2 and 9).

One lab instead of three (each used to provision its own database host and store: about 15 min of CI).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from opsbook import lab
from tests.e2e.conftest import FAST, ROOT, LabEnv, last_report, outcome, provisioned_lab

NAMES = ["dr-web", "dr-db", "dr-store"]
DRILL = "dr-drill"
NOTES = 321
# the body of the first note: a row value that must never be readable on the store (issue 11 item 11)
MARKER = "opsbook-marker-note-5d0e2a71"
STORE_DIR = "/srv/opsbook-backup/dr-db"
AGE_HEADER = b"age-encryption.org/v1\n"
# the store grep (tests/store_grep.py): every occurrence of a marker under a directory, raw and in zlib streams
STORE_GREP = (Path(__file__).resolve().parents[1] / "store_grep.py").read_text()

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
        sql = (f"INSERT INTO notes(body) SELECT CASE g WHEN 1 THEN '{MARKER}' ELSE 'note ' || g END"  # noqa: S608
               f" FROM generate_series(1, {NOTES:d}) g")
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
    report = last_report("backup-list", "dr-db")
    assert report["hosts"]["dr-db"]["failed"] == 0  # type: ignore[index]
    assert "passed" in res.stdout


def backups(env: LabEnv) -> list[dict[str, object]]:
    out = env.ssh("dr-db", "/usr/local/sbin/opsbook-backup list --json").stdout
    listing: list[dict[str, object]] = json.loads(out[out.index("{"):])["backups"]
    return listing


def test_the_sandboxed_backup_unit_takes_a_verified_backup_onto_the_store(dr_lab: LabEnv) -> None:
    unit = "opsbook-backup@app.service"
    # the sandbox as the host's own systemd sees it (issue 11 item 8: at most 5.0)
    out = dr_lab.ssh("dr-db", f"systemd-analyze security --no-pager {unit}").stdout
    exposure = float(re.findall(r"Overall exposure level for \S+: (\d+\.\d+)", out)[-1])
    print(f"{unit}: exposure {exposure}")
    assert exposure <= 5.0, out[-3000:]
    before = {b["file"] for b in backups(dr_lab)}
    res = dr_lab.ssh("dr-db", f"systemctl start {unit}", check=False, timeout=900)  # oneshot: returns when done
    journal = dr_lab.ssh("dr-db", f"journalctl --no-pager -o cat -n 60 -u {unit}", check=False).stdout
    assert res.returncode == 0, f"{res.stderr}\n{journal}"
    assert dr_lab.ssh("dr-db", f"systemctl show -P Result {unit}").stdout.strip() == "success", journal
    (new,) = [b for b in backups(dr_lab) if b["file"] not in before]
    assert new["verification"] == "passed" and new["latest_good"], journal
    name = str(new["file"])
    manifest = json.loads(dr_lab.ssh("dr-db", f"cat /var/lib/opsbook/backup/{name.removesuffix('.dump')}"
                                               ".manifest.json").stdout)
    # the store received the age-encrypted copy (the sandboxed unit ran age): a line of its ledger with the
    # copy's sha256 and size, as the local manifest notes them
    assert manifest["copy"]["encryption"] == "age"
    ledger = [json.loads(line) for line in
              dr_lab.ssh("dr-store", f"cat {STORE_DIR}/ledger.jsonl").stdout.splitlines() if line]
    assert {"name": name, "sha256": manifest["copy"]["sha256"], "size": manifest["copy"]["size"]}.items() <= next(
        e for e in ledger if e.get("name") == name).items(), ledger


def grep_store(env: LabEnv) -> dict[str, object]:
    out = env.ssh("dr-store", f"python3 - {MARKER} {STORE_DIR} <<'EOF'\n{STORE_GREP}\nEOF").stdout
    result: dict[str, object] = json.loads(out)
    print(f"store grep for {MARKER}: {result}")
    return result


def test_the_store_holds_no_plaintext(dr_lab: LabEnv) -> None:
    """Issue 11 item 11, acceptance 3: the first note's body is in the dumps on the database host (plaintext, they
    are verified there) and in none of the store's files, raw or compressed; every copy the store's ledger received
    starts with the age header."""
    local = dr_lab.ssh("dr-db", f"python3 - {MARKER} /var/lib/opsbook/backup <<'EOF'\n{STORE_GREP}\nEOF").stdout
    assert json.loads(local)["matches"], local  # the marker is really in the dumps
    result = grep_store(dr_lab)
    assert int(str(result["files"])) >= 7 and result["matches"] == {}, result  # 3 copies of 2 files and the ledger
    ledger = [json.loads(line) for line in
              dr_lab.ssh("dr-store", f"cat {STORE_DIR}/ledger.jsonl").stdout.splitlines() if line]
    dumps = sorted({e["name"] for e in ledger if e["name"].endswith(".dump") and "received" in e})
    assert len(dumps) >= 3, ledger
    for name in dumps:
        head = subprocess.run([*lab.ssh_command("dr-store"), f"head -c {len(AGE_HEADER)} {STORE_DIR}/{name}"],
                              capture_output=True, timeout=60).stdout
        assert head == AGE_HEADER, (name, head)


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

# Run on the database host with its own store key, through the store's forced receive command: what a compromised
# database host can do. Two forged copies, received after every real one.
FORGE = r"""
import datetime as dt, hashlib, json, subprocess
store = json.load(open("/etc/opsbook/backup/app.json"))["store"]
ssh = ["ssh", "-i", store["key"], "-p", str(store["port"]), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
       "-o", "UserKnownHostsFile=" + store["known_hosts"], "-o", "StrictHostKeyChecking=yes",
       store["user"] + "@" + store["address"]]
def put(name, data):
    res = subprocess.run([*ssh, "put %s %s" % (name, hashlib.sha256(data).hexdigest())], input=data,
                         capture_output=True)
    assert res.returncode == 0, (name, res.stderr)
now = dt.datetime.now(dt.timezone.utc)
snap = lambda h: (now + dt.timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ")
stamp = lambda h: (now + dt.timedelta(hours=h)).strftime("%Y%m%dT%H%M%SZ")
passed = {"status": "passed"}
# a dump that looks like one, whose manifest names a file outside the directory
put("app-%s.dump" % stamp(1), b"PGDMP forged")
put("app-%s.manifest.json" % stamp(1), json.dumps({"file": "../../../../etc/shadow", "verification": passed,
    "snapshot_time": snap(1), "tables": {"public.notes": 1}}).encode())
# a newer one-byte dump with a consistent "passed" manifest
put("app-%s.dump" % stamp(2), b"x")
put("app-%s.manifest.json" % stamp(2), json.dumps({"file": "app-%s.dump" % stamp(2), "sha256":
    hashlib.sha256(b"x").hexdigest(), "size": 1, "verification": passed, "snapshot_time": snap(2),
    "tables": {"public.notes": 1}}).encode())
print(stamp(1), stamp(2))
"""


DRILL_WORK = ROOT / ".opsbook" / "drills" / "work"


def dump_copies_on_the_controller() -> list[Path]:
    return [p for p in DRILL_WORK.rglob("*") if p.name.startswith("dump-") or ".dump" in p.name
            or p.name.endswith(".manifest.json")]


def test_a_drill_that_fails_after_fetching_the_dump_leaves_no_copy_on_the_controller(dr_lab: LabEnv,
                                                                                     tmp_path: Path) -> None:
    # dr-web as the drill host: it has no backup directory, so the drill fails right after the dump was fetched to
    # the controller. The provisioning plays are skipped (--start-at-task); nothing is changed on dr-web.
    inv = tmp_path / "inventory"
    shutil.copytree(dr_lab.inventory, inv)
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())
    hosts["all"]["children"]["drill"] = {"hosts": {"dr-web": {"ansible_host": dr_lab.ip("dr-web")}}}
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
    environ = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    res = subprocess.run(["ansible-playbook", "-i", str(inv), "playbooks/drill.yml", "--limit", "dr-web",
                          "--start-at-task", "Check the database name (it becomes part of file names and SQL)"],
                         cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out

    def result_of(task: str) -> str:
        """The first result line of TASK (profile_tasks prints a time line between the two)."""
        m = re.search(r"TASK \[" + re.escape(task) + r"\][^\n]*\n(?:[^\n]*\n){0,3}?"
                      r"((?:ok|changed|failed|fatal|skipping): \[[^\n]*|\[ERROR\]: [^\n]*)", out)
        assert m, f"no result of {task!r} in:\n{out[-4000:]}"
        return m[1]

    assert result_of("Fetch the dump and its manifest from the store to the controller").startswith("changed: [dr-web")
    assert result_of("Put them into the drill host's backup directory").startswith(("failed", "fatal", "[ERROR]"))
    assert result_of("Remove the copy of the dump (production data) from the controller").startswith("changed")
    assert not dump_copies_on_the_controller()


def test_drill_restores_the_newest_real_copy_despite_forged_uploads_and_measures_rto_and_rpo(dr_lab: LabEnv) -> None:
    real = backups(dr_lab)[-1]
    assert real["verification"] == "passed"
    forged = dr_lab.ssh("dr-db", f"python3 - <<'EOF'\n{FORGE}\nEOF").stdout.split()
    newest = dr_lab.ssh("dr-store", "/usr/local/sbin/opsbook-backup-store newest --dir /srv/opsbook-backup/dr-db"
                                    " --database app")
    assert json.loads(newest.stdout)["dump"] == real["file"], newest.stdout + newest.stderr
    assert all(f"app-{s}.dump" in newest.stderr for s in forged), newest.stderr  # each named as skipped
    start = time.time()
    res = dr_lab.opsbook("drill", "--host", DRILL)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    reports = sorted((ROOT / ".opsbook" / "drills").glob(f"drill-{DRILL}-*.json"))
    assert reports and reports[-1].stat().st_mtime >= start, out
    report = json.loads(reports[-1].read_text())
    print(json.dumps(report, indent=2))
    assert report["backup"] == real["file"]  # the newest real copy, not a forged one
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
    # no copy of the production dump left on the controller, and its work directory is private
    assert not dump_copies_on_the_controller()
    assert DRILL_WORK.stat().st_mode & 0o777 == 0o700
    # the drill decrypted the copy with the identity on the drill host; the store still holds no plaintext
    assert "Decrypt the copy on the drill host" in out
    assert grep_store(dr_lab)["matches"] == {}
