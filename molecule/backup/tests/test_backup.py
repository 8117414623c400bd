"""Verify the backup role by running real backups on mol-backup-db (PostgreSQL 15 seeded with pgbench) and reading
what they leave: dumps, manifests, the copy on mol-backup-store, metrics, the journal, the restored database.

The tests run in file order and build on each other (seed → backups → failures → restore)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import testinfra

testinfra_hosts = ["ansible://mol-backup-db"]

DB = "shop"
BACKUP_DIR = "/var/lib/opsbook/backup"
METRICS = f"/var/lib/prometheus/node-exporter/opsbook_backup_{DB}.prom"
STORE = "mol-backup-store"
STORE_DIR = "/srv/opsbook-backup/mol-backup-db"
KEY = "/etc/opsbook/backup/id_ed25519"
KNOWN_HOSTS = "/etc/opsbook/backup/known_hosts"
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
SEEDED = {"public.pgbench_accounts": 100000, "public.pgbench_branches": 1, "public.pgbench_history": 0,
          "public.pgbench_tellers": 10}
# a row value of the seeded data (the branch's filler): never readable on the store
MARKER = "opsbook-marker-b7c41e9d"
AGE_IDENTITY = "/var/lib/opsbook/lab/secrets/backup_age_identity"
AGE_HEADER = b"age-encryption.org/v1\n"
LAB_KEY = "/var/lib/opsbook/lab/ssh/id_ed25519"
# the store grep (tests/store_grep.py): every occurrence of a marker under a directory, raw and in zlib streams
STORE_GREP = (Path(__file__).resolve().parents[3] / "tests" / "store_grep.py").read_text()


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def store_host() -> Any:
    return testinfra.get_host(f"ansible://{STORE}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def sql(host: Any, query: str, database: str = DB) -> str:
    cmd = host.run("runuser -u postgres -- psql --no-psqlrc -Atc %s %s", query, database)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def live_counts(host: Any) -> dict[str, int]:
    return {t: int(sql(host, f"SELECT count(*) FROM {t}")) for t in SEEDED}  # noqa: S608 - fixed table names


def backups(host: Any) -> list[dict[str, Any]]:
    cmd = host.run("opsbook-backup list --json")
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)["backups"]


def latest_good(host: Any) -> str | None:
    return next((b["file"] for b in backups(host) if b["latest_good"]), None)


def manifest(host: Any, dump: str) -> dict[str, Any]:
    return json.loads(host.file(f"{BACKUP_DIR}/{dump.removesuffix('.dump')}.manifest.json").content_string)


def sha256(host: Any, path: str) -> str:
    cmd = host.run("sha256sum %s", path)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.split()[0]


def metrics(host: Any) -> dict[str, float]:
    out = {}
    for line in host.file(METRICS).content_string.splitlines():
        if line.startswith("opsbook_backup_"):
            name, value = line.split()
            out[name.split("{")[0].removeprefix("opsbook_backup_")] = float(value)
    return out


def run_backup(host: Any) -> Any:
    return host.run("opsbook-backup run")


def leftovers(host: Any) -> list[str]:
    """Temporary files in the backup directory and scratch databases: none may be left after any run."""
    tmp = host.run("find %s -name '.tmp-*'", BACKUP_DIR).stdout.split()
    scratch = sql(host, "SELECT datname FROM pg_database WHERE datname LIKE 'opsbook_verify_%'", "postgres").split()
    return tmp + scratch


@pytest.fixture(scope="module", autouse=True)
def seeded(host: Any) -> None:
    cmd = host.run("runuser -u postgres -- %s -i -s 1 -q %s", PGBENCH, DB)
    assert cmd.rc == 0, cmd.stderr
    sql(host, f"UPDATE pgbench_branches SET filler = '{MARKER}'")  # noqa: S608 - a constant
    assert live_counts(host) == SEEDED


def test_run_makes_a_verified_dump_with_manifest_copy_and_metrics(host: Any) -> None:
    before = time.time()
    cmd = run_backup(host)
    assert cmd.rc == 0, cmd.stdout + cmd.stderr
    newest = backups(host)[-1]
    assert newest["verification"] == "passed" and newest["latest_good"]
    m = manifest(host, newest["file"])
    assert m["tables"] == SEEDED
    assert m["server_version"].startswith("15.")
    assert m["sha256"] == sha256(host, f"{BACKUP_DIR}/{newest['file']}")
    assert m["size"] == host.file(f"{BACKUP_DIR}/{newest['file']}").size
    assert m["verification"]["smoke"] == "passed"
    # the copy on the store is the age-encrypted dump the local manifest notes; the copy's manifest describes those
    # bytes (the store's ledger checks them) and keeps the plaintext's figures
    store = store_host()
    assert m["copy"]["encryption"] == "age"
    assert sha256(store, f"{STORE_DIR}/{newest['file']}") == m["copy"]["sha256"]
    stored_manifest = json.loads(store.file(f"{STORE_DIR}/{newest['file'].removesuffix('.dump')}.manifest.json")
                                 .content_string)
    assert stored_manifest["verification"]["status"] == "passed"
    assert stored_manifest["sha256"] == m["copy"]["sha256"] and stored_manifest["size"] == m["copy"]["size"]
    assert stored_manifest["plaintext"] == {"sha256": m["sha256"], "size": m["size"]}
    values = metrics(host)
    assert values["last_run_success"] == 1 and values["verification_success"] == 1
    assert values["size_bytes"] == m["size"]
    assert values["restore_seconds"] > 0
    assert values["last_success_timestamp_seconds"] >= int(before) - 1
    assert leftovers(host) == []


def on_host(host: Any, command: str) -> bytes:
    """COMMAND's stdout as bytes, over the lab's SSH key (testinfra's Ansible backend decodes output as text)."""
    address = host.ansible.get_variables()["ansible_host"]
    proc = subprocess.run(["ssh", "-i", LAB_KEY, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{address}", command],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_store_holds_no_plaintext_and_the_identity_decrypts_its_copies(host: Any) -> None:
    """Issue 11 item 11, acceptance 3: a row value of the database (the seeded branch's filler) is nowhere in the
    store's files, raw or in any zlib stream in them; every copy the store's ledger received starts with the age
    header; decrypted with the lab's identity on the controller, the newest is the verified dump (its plaintext
    sha256) and pg_restore reads its table of contents. The marker is really in the dumps: the local one has it."""
    store = store_host()
    local = host.run("python3 -c %s %s %s", STORE_GREP, MARKER, BACKUP_DIR)
    assert local.rc == 0, local.stderr
    assert json.loads(local.stdout)["matches"], local.stdout  # the row value is in the (plaintext) local dumps
    grep = store.run("python3 -c %s %s %s", STORE_GREP, MARKER, STORE_DIR)
    assert grep.rc == 0, grep.stderr
    result = json.loads(grep.stdout)
    print(f"store grep for {MARKER}: {result}")
    assert result["files"] >= 3 and result["matches"] == {}, result
    ledger = [json.loads(line) for line in store.file(f"{STORE_DIR}/ledger.jsonl").content_string.splitlines()]
    dumps = sorted({e["name"] for e in ledger if e["name"].endswith(".dump") and "received" in e})
    assert dumps
    for name in dumps:
        head = on_host(store, f"head -c {len(AGE_HEADER)} {STORE_DIR}/{name}")
        assert head == AGE_HEADER, (name, head)
    newest = latest_good(host)
    assert newest
    copy = on_host(store, f"cat {STORE_DIR}/{newest}")
    stored = json.loads(store.file(f"{STORE_DIR}/{newest.removesuffix('.dump')}.manifest.json").content_string)
    assert hashlib.sha256(copy).hexdigest() == stored["sha256"]
    plain = subprocess.run(["age", "--decrypt", "--identity", AGE_IDENTITY], input=copy, capture_output=True,
                           timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith(b"PGDMP")
    assert hashlib.sha256(plain.stdout).hexdigest() == stored["plaintext"]["sha256"] == manifest(host, newest)["sha256"]
    toc = subprocess.run(["pg_restore", "--list"], input=plain.stdout, capture_output=True, timeout=120)
    assert toc.returncode == 0, toc.stderr
    assert b"TABLE DATA public pgbench_branches" in toc.stdout


CLI = """
import argparse, sys
from opsbook.commands import backup
parser = argparse.ArgumentParser(prog="opsbook")
backup.register(parser.add_subparsers(required=True), argparse.RawDescriptionHelpFormatter)
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def opsbook_backup(host: Any, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`opsbook backup ARGV` (src/opsbook/commands/backup.py → playbooks/backup.yml) against mol-backup-db as `db`."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"children": {"db": {"hosts": {"mol-backup-db": {
        "ansible_host": host.ansible.get_variables()["ansible_host"], "ansible_user": "root",
        "ansible_ssh_private_key_file": "/var/lib/opsbook/lab/ssh/id_ed25519"}}}}}}))
    return subprocess.run([sys.executable, "-c", CLI, "backup", *argv, "-i", str(inventory), "-q"],
                          capture_output=True, text=True, timeout=600)


def test_cli_runs_verifies_and_lists_through_the_playbook(host: Any, tmp_path: Path) -> None:
    before = backups(host)[-1]["file"]
    run = opsbook_backup(host, tmp_path, "run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verified and copied" in run.stdout
    newest = backups(host)[-1]
    assert newest["file"] != before and newest["latest_good"]
    verify = opsbook_backup(host, tmp_path, "verify", newest["file"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    listing = opsbook_backup(host, tmp_path, "list")
    assert listing.returncode == 0 and newest["file"] in listing.stdout
    refused = opsbook_backup(host, tmp_path, "restore", newest["file"])
    assert refused.returncode != 0 and "--yes-overwrite-live" in refused.stderr


def test_manifest_counts_and_dump_share_one_snapshot_under_writes(host: Any) -> None:
    """pgbench writes (a history row per transaction) during the backup: the counts taken in the exported snapshot
    match the restored dump exactly, so verification passes."""
    load = host.run("(timeout 40 runuser -u postgres -- %s -c 2 -T 30 %s >/dev/null 2>&1 &) ; sleep 3", PGBENCH, DB)
    assert load.rc == 0, load.stderr
    try:
        cmd = run_backup(host)
        assert cmd.rc == 0, cmd.stdout + cmd.stderr
        m = manifest(host, backups(host)[-1]["file"])
        assert m["verification"]["status"] == "passed"
        assert m["tables"]["public.pgbench_history"] > 0
        wait_for(lambda: int(sql(host, "SELECT count(*) FROM pgbench_history")) > m["tables"]["public.pgbench_history"],
                 60, "pgbench to write after the snapshot")
    finally:
        host.run("pkill -x pgbench")
        wait_for(lambda: host.run("pgrep -x pgbench").rc != 0, 60, "pgbench to stop")


def test_timer_fires_on_its_own_and_makes_a_verified_backup(host: Any) -> None:
    timer = host.run("systemctl show opsbook-backup@%s.timer -p Persistent -p RandomizedDelayUSec -p ActiveState", DB)
    assert "Persistent=yes" in timer.stdout and "ActiveState=active" in timer.stdout
    assert host.service(f"opsbook-backup@{DB}.timer").is_enabled
    newest = backups(host)[-1]["file"]
    dropin = f"/etc/systemd/system/opsbook-backup@{DB}.timer.d"
    host.run("mkdir -p %s && printf '[Timer]\\nOnActiveSec=2s\\n' > %s/molecule-test.conf", dropin, dropin)
    try:
        assert host.run("systemctl daemon-reload && systemctl restart opsbook-backup@%s.timer", DB).rc == 0
        wait_for(lambda: backups(host)[-1]["file"] != newest and backups(host)[-1]["verification"] == "passed", 240,
                 "the timer's backup")
        wait_for(lambda: "ActiveState=inactive" in host.run("systemctl show opsbook-backup@%s.service -p ActiveState",
                                                            DB).stdout, 60, "the service to finish")
        result = host.run("systemctl show opsbook-backup@%s.service -p Result -p ExecMainStatus", DB).stdout
        assert "Result=success" in result and "ExecMainStatus=0" in result
        journal = host.run("journalctl -u opsbook-backup@%s.service --no-pager -n 50", DB).stdout
        assert "verified and copied" in journal
    finally:
        host.run("rm -rf %s && systemctl daemon-reload && systemctl restart opsbook-backup@%s.timer", dropin, DB)


def test_postgresql_answers_the_app_host_only(host: Any) -> None:
    address = host.ansible.get_variables()["ansible_host"]
    with socket.create_connection((address, 5432), timeout=10):
        pass  # the controller (10.213.0.1) is the scenario's app host
    probe = f"import socket; socket.create_connection(({address!r}, 5432), 5)"
    other = subprocess.run(["ip", "netns", "exec", f"olab-{STORE}", "python3", "-c", probe],
                           capture_output=True, text=True, timeout=60)
    assert other.returncode != 0
    assert "timed out" in other.stderr or "refused" in other.stderr.lower()


def test_store_key_can_only_add_files(host: Any) -> None:
    store = store_host()
    address = store.ansible.get_variables()["ansible_host"]
    ssh = (f"ssh -i {KEY} -o BatchMode=yes -o IdentitiesOnly=yes -o UserKnownHostsFile={KNOWN_HOSTS} "
           f"-o StrictHostKeyChecking=yes opsbook-backup@{address}")
    shell = host.run(f"{ssh} cat /etc/passwd")
    assert shell.rc != 0 and "only `put NAME SHA256` and `list` are allowed" in shell.stderr
    zeros = "0" * 64
    escape = host.run(f"echo x | {ssh} put ../escape.dump {zeros}")
    assert escape.rc != 0 and "escape" not in store.run("ls /srv/opsbook-backup").stdout
    existing = latest_good(host)
    before = sha256(store, f"{STORE_DIR}/{existing}")
    data = "not a dump"
    digest = host.run("printf %s %s | sha256sum", "%s", data).stdout.split()[0]
    overwrite = host.run(f"printf %s {shlex.quote(data)} | {ssh} put {existing} {digest}", "%s")
    assert overwrite.rc != 0 and "exists already" in overwrite.stderr
    assert sha256(store, f"{STORE_DIR}/{existing}") == before
    forward = host.run(f"timeout 30 {ssh} -W 127.0.0.1:22 </dev/null 2>&1; echo rc=$?")
    assert "administratively prohibited" in forward.stdout and "rc=0" not in forward.stdout, forward.stdout
    listing = host.run(f"{ssh} list")
    assert listing.rc == 0 and existing in listing.stdout


def store_sha256s(store: Any) -> dict[str, str]:
    out = store.run("cd %s && sha256sum -- *.dump", STORE_DIR).stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines()}


def test_store_prunes_its_copies_on_its_own_timer(host: Any) -> None:
    """The key cannot delete on the store, so the store applies backup_retention itself, by the receipt times of its
    ledger, as an unprivileged sandboxed user: copies the ledger says arrived in 2020 go (the names say nothing);
    the newest copy stays; files the ledger does not list are never touched."""
    store = store_host()
    assert store.service("opsbook-backup-store-prune.timer").is_enabled
    unit = store.run("systemctl show opsbook-backup-store-prune.service -p User -p PrivateNetwork -p ProtectSystem")
    assert "User=opsbook-backup-prune" in unit.stdout and "ProtectSystem=strict" in unit.stdout, unit.stdout
    score = store.run("systemd-analyze security opsbook-backup-store-prune.service --no-pager | tail -1")
    exposure = float(score.stdout.split("level for opsbook-backup-store-prune.service:")[1].split()[0])
    assert exposure <= 5.0, score.stdout
    newest = latest_good(host)
    received_2020 = ["shop-20260105T010000Z", "shop-20260212T010000Z"]  # named for 2026, received in 2020
    lines = []
    for i, stem in enumerate(received_2020):
        for name, content in ((f"{stem}.dump", "old"), (f"{stem}.manifest.json", '{"verification": {}}')):
            store.run("printf %s %s > %s", "%s", content, f"{STORE_DIR}/{name}")
            digest = sha256(store, f"{STORE_DIR}/{name}")
            lines.append(json.dumps({"name": name, "size": len(content), "sha256": digest,
                                     "received": f"2020-0{i + 1}-05T01:00:00Z"}))
    # the past written into the store's ledger by the test (as root): nothing a database host's key can do
    for line in lines:
        assert store.run("printf '%%s\\n' %s >> %s", line, f"{STORE_DIR}/ledger.jsonl").rc == 0
    store.run("printf keep > %s", f"{STORE_DIR}/shop-20200301T010000Z.dump")  # not received: not the store's
    store.run("printf keep > %s", f"{STORE_DIR}/README")
    start = store.run("systemctl start opsbook-backup-store-prune.service")
    assert start.rc == 0, start.stderr + store.run("journalctl -t opsbook-backup-store-prune -n 20").stdout
    left = set(store.run("ls %s", STORE_DIR).stdout.split())
    assert not {n for n in left if n.startswith(tuple(received_2020))}, left
    assert {newest, newest.removesuffix(".dump") + ".manifest.json", "README", "shop-20200301T010000Z.dump"} <= left
    # by its identifier: lines of a short-lived process can reach the journal without their unit
    journal = store.run("journalctl -t opsbook-backup-store-prune -n 50").stdout
    assert "delete shop-20260105T010000Z.dump" in journal and "delete shop-20260212T010000Z.dump" in journal, journal
    store.run("rm -f %s %s", f"{STORE_DIR}/README", f"{STORE_DIR}/shop-20200301T010000Z.dump")


def test_a_flood_of_forged_copies_over_the_key_leaves_every_real_copy(host: Any) -> None:
    """Issue 11 item 1 over SSH with the database host's real key: 50 one-byte dumps named for the last 50 days at
    23:59:59, with manifests saying passed. After the store's prune unit every real copy is there, byte-identical,
    and the store's `newest` still names the newest real copy."""
    store = store_host()
    real = store_sha256s(store)
    assert real
    newest = latest_good(host)
    address = store.ansible.get_variables()["ansible_host"]
    ssh = (f"ssh -i {KEY} -o BatchMode=yes -o IdentitiesOnly=yes -o UserKnownHostsFile={KNOWN_HOSTS} "
           f"-o StrictHostKeyChecking=yes opsbook-backup@{address}")
    flood = f"""
set -e
cd "$(mktemp -d)"
printf x > dump
for i in $(seq 1 50); do
  stem=shop-$(date -u -d "-$i days" +%Y%m%d)T235959Z
  printf '{{"file": "%s.dump", "sha256": "%s", "size": 1, "verification": {{"status": "passed"}}}}' \
    $stem $(sha256sum < dump | cut -d' ' -f1) > manifest
  {ssh} put $stem.dump $(sha256sum < dump | cut -d' ' -f1) < dump
  {ssh} put $stem.manifest.json $(sha256sum < manifest | cut -d' ' -f1) < manifest
done
"""
    cmd = host.run("bash -c %s", flood)
    assert cmd.rc == 0, cmd.stderr[-2000:]
    assert len(store_sha256s(store)) == len(real) + 50
    start = store.run("systemctl start opsbook-backup-store-prune.service")
    assert start.rc == 0, start.stderr + store.run("journalctl -t opsbook-backup-store-prune -n 20").stdout
    after = store_sha256s(store)
    assert {n: after.get(n) for n in real} == real
    picked = store.run("opsbook-backup-store newest --dir %s --database %s", STORE_DIR, DB)
    assert picked.rc == 0, picked.stderr
    assert json.loads(picked.stdout)["dump"] == newest
    assert "T235959Z" not in picked.stdout


def test_the_store_key_is_refused_from_another_address(host: Any, tmp_path: Path) -> None:
    """The key's authorized_keys line carries from="<db host address>": the same private key, used from the
    controller (another address), is refused before the forced command runs."""
    store = store_host()
    line = store.file("/srv/opsbook-backup/.ssh/authorized_keys").content_string
    db_address = host.ansible.get_variables()["ansible_host"]
    assert f'from="{db_address}"' in line and "--max-bytes" in line, line
    key = tmp_path / "stolen_key"
    key.write_text(host.file(KEY).content_string)
    key.chmod(0o600)
    address = store.ansible.get_variables()["ansible_host"]
    stolen = subprocess.run(["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                             "-o", "ConnectTimeout=20", f"opsbook-backup@{address}", "list"],
                            capture_output=True, text=True, timeout=60)
    assert stolen.returncode == 255 and "Permission denied" in stolen.stderr, stolen.stderr
    from_db = host.run(f"ssh -i {KEY} -o BatchMode=yes -o IdentitiesOnly=yes -o UserKnownHostsFile={KNOWN_HOSTS} "
                       f"-o StrictHostKeyChecking=yes opsbook-backup@{address} list")
    assert from_db.rc == 0, from_db.stderr


def test_failed_smoke_query_is_a_loud_failure(host: Any) -> None:
    """The app's smoke SQL (count(*) > 0 FROM pgbench_branches) fails in the restored copy: failed unit, reason in
    the journal, metrics say failed, no copy on the store, the latest good backup stays the previous one."""
    good = latest_good(host)
    sql(host, "DELETE FROM pgbench_branches")
    try:
        start = host.run("systemctl start opsbook-backup@%s.service", DB)
        assert start.rc != 0
        assert host.run("systemctl is-failed opsbook-backup@%s.service", DB).stdout.strip() == "failed"
        journal = host.run("journalctl -u opsbook-backup@%s.service --no-pager -n 30", DB).stdout
        assert "BACKUP FAILED" in journal and "smoke SQL returned 'f'" in journal
        failed = backups(host)[-1]
        assert failed["verification"] == "failed" and not failed["latest_good"]
        assert latest_good(host) == good
        values = metrics(host)
        assert values["last_run_success"] == 0 and values["verification_success"] == 0
        assert not store_host().file(f"{STORE_DIR}/{failed['file']}").exists
        assert leftovers(host) == []
    finally:
        host.run("systemctl reset-failed opsbook-backup@%s.service", DB)
        assert host.run("runuser -u postgres -- %s -i -s 1 -q %s", PGBENCH, DB).rc == 0


def test_corrupted_dumps_fail_verification_and_retention_keeps_the_last_good(host: Any) -> None:
    """Two later backups (copies of the good one under newer names, passed until now) get damaged on disk: one byte
    flipped, and truncated to half. Verification fails loudly and the older good backup stays the latest good."""
    cmd = run_backup(host)
    assert cmd.rc == 0, cmd.stdout + cmd.stderr
    good = backups(host)[-1]["file"]
    stamp = good.removeprefix(f"{DB}-").removesuffix(".dump")
    taken = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")
    flipped, truncated = (f"{DB}-{taken + datetime.timedelta(seconds=n):%Y%m%dT%H%M%SZ}.dump" for n in (1, 2))
    for dump in (flipped, truncated):
        copy = host.run("cp -a %s %s && cp -a %s %s", f"{BACKUP_DIR}/{good}", f"{BACKUP_DIR}/{dump}",
                        f"{BACKUP_DIR}/{good.removesuffix('.dump')}.manifest.json",
                        f"{BACKUP_DIR}/{dump.removesuffix('.dump')}.manifest.json")
        assert copy.rc == 0, copy.stderr
    assert latest_good(host) == truncated  # before the damage is found
    host.run("python3 -c %s %s", "import sys; f = open(sys.argv[1], 'r+b'); f.seek(f.seek(0, 2) // 2);"
             " b = f.read(1); f.seek(-1, 1); f.write(bytes([b[0] ^ 0xFF]))", f"{BACKUP_DIR}/{flipped}")
    host.run("truncate -s %s %s", str(host.file(f"{BACKUP_DIR}/{truncated}").size // 2), f"{BACKUP_DIR}/{truncated}")
    for dump in (truncated, flipped):
        cmd = host.run("opsbook-backup verify %s", dump)
        assert cmd.rc != 0
        assert "differs from the manifest" in cmd.stderr
        assert manifest(host, dump)["verification"]["status"] == "failed"
    # corruption the checksum cannot see (the manifest made to match the damaged bytes): the restore catches it
    m = manifest(host, flipped)
    m.update(sha256=sha256(host, f"{BACKUP_DIR}/{flipped}"))
    host.run("python3 -c %s %s %s", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
             f"{BACKUP_DIR}/{flipped.removesuffix('.dump')}.manifest.json", json.dumps(m))
    cmd = host.run("opsbook-backup verify %s", flipped)
    # pg_restore, or the server reading the rows of a large table, or the row counts catch it, by where the damage is
    assert cmd.rc != 0 and any(w in cmd.stderr for w in ("pg_restore", "COPY into", "differ")), cmd.stderr
    assert latest_good(host) == good
    assert leftovers(host) == []
    # a year later every backup is out of the policy's windows: only the last good one stays
    prune = host.run("opsbook-backup prune --now %s", "2099-01-01T00:00:00Z")
    assert prune.rc == 0, prune.stderr
    assert [b["file"] for b in backups(host)] == [good]


def test_disk_full_fails_with_the_reason_and_leaves_earlier_backups(host: Any) -> None:
    """The backup directory becomes a small tmpfs (holding the last good backup) with less room than a dump."""
    good = latest_good(host)
    assert good
    digest = sha256(host, f"{BACKUP_DIR}/{good}")
    saved = "/root/molecule-backup-saved"
    try:
        setup = host.run(
            f"rm -rf {saved} && cp -a {BACKUP_DIR} {saved} && size=$(( $(du -sb {saved} | cut -f1) + 262144 ))"
            f" && mount -t tmpfs -o size=$size,mode=0700 tmpfs {BACKUP_DIR}"
            f" && cp -a {saved}/. {BACKUP_DIR}/ && avail=$(df --output=avail -B1 {BACKUP_DIR} | tail -1)"
            f" && fallocate -l $((avail - 65536)) {BACKUP_DIR}/.filler"
        )
        assert setup.rc == 0, setup.stderr
        files = sorted(host.run("ls %s", BACKUP_DIR).stdout.split())
        assert good in files
        start = host.run("systemctl start opsbook-backup@%s.service", DB)
        assert start.rc != 0
        journal = host.run("journalctl -u opsbook-backup@%s.service --no-pager -n 30", DB).stdout
        assert "No space left on device" in journal
        assert leftovers(host) == []
        assert sorted(host.run("ls %s", BACKUP_DIR).stdout.split()) == files
        assert sha256(host, f"{BACKUP_DIR}/{good}") == digest
        assert latest_good(host) == good
        assert metrics(host)["last_run_success"] == 0
    finally:
        host.run("systemctl reset-failed opsbook-backup@%s.service", DB)
        host.run("while mountpoint -q %s; do umount %s; done; rm -rf %s", BACKUP_DIR, BACKUP_DIR, saved)
        assert not host.mount_point(BACKUP_DIR).exists
    assert latest_good(host) == good


RETENTION_SCRIPT = r"""
set -eu
dir=/root/molecule-retention
rm -rf $dir && mkdir -p $dir
mk() {  # mk STAMP STATUS: a backup's files as the real ones are named
  printf 'dump' > $dir/shop-$1.dump
  printf '{"verification": {"status": "%s"}}' $2 > $dir/shop-$1.manifest.json
}
day=2026-01-01
while [ "$day" != 2026-05-01 ]; do
  stamp=$(date -u -d "$day 01:00" +%Y%m%dT%H%M%SZ)
  mk $stamp passed
  # a failed backup on two days: never counts, goes once out of the 3-day window
  case $day in 2026-04-01|2026-04-29) mk $(date -u -d "$day 13:00" +%Y%m%dT%H%M%SZ) failed ;; esac
  opsbook-backup prune --dir $dir --now "$(date -u -d "$day 12:00" +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
  opsbook-backup prune --dir $dir --now "$(date -u -d "$day 23:59" +%Y-%m-%dT%H:%M:%SZ)" >/dev/null
  day=$(date -u -d "$day + 1 day" +%Y-%m-%d)
done
ls $dir | grep '\.dump$'
"""


def test_retention_keeps_exactly_the_policy_over_four_months(host: Any) -> None:
    """A backup a day from 2026-01-01 to 2026-04-30, pruned twice a day with days=3, weeks=2, months=2 (converge.yml).
    On Thu 2026-04-30: days → Apr 28, 29, 30; ISO weeks 18 and 17 → Apr 30, Sun Apr 26; months → Apr 30, Mar 31;
    the failed backup of Apr 29 13:00 is still inside the 3-day window; the one of Apr 1 is gone."""
    cmd = host.run("bash -c %s", RETENTION_SCRIPT)
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.split() == [
        "shop-20260331T010000Z.dump",
        "shop-20260426T010000Z.dump",
        "shop-20260428T010000Z.dump",
        "shop-20260429T010000Z.dump",
        "shop-20260429T130000Z.dump",
        "shop-20260430T010000Z.dump",
    ]
    host.run("rm -rf /root/molecule-retention")


def test_restore_brings_the_live_database_back(host: Any, tmp_path: Path) -> None:
    """`opsbook backup restore FILE --yes-overwrite-live` (CLI → playbook → opsbook-backup on the host)."""
    good = latest_good(host)
    assert good
    expected = manifest(host, good)["tables"]
    sql(host, "DELETE FROM pgbench_accounts WHERE aid <= 5000;"
              " INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now())")
    assert live_counts(host) != expected
    refused = host.run("opsbook-backup restore %s", good)
    assert refused.rc != 0 and "--yes-overwrite-live" in refused.stderr
    assert live_counts(host)["public.pgbench_accounts"] == 95000
    cmd = opsbook_backup(host, tmp_path, "restore", good, "--yes-overwrite-live")
    assert cmd.returncode == 0, cmd.stdout + cmd.stderr
    assert live_counts(host) == expected
    # the app's role still owns what it owned and can read it
    assert sql(host, "SELECT count(*) FROM pgbench_branches") == str(expected["public.pgbench_branches"])


@pytest.fixture(scope="module", autouse=True)
def no_failed_units(host: Any) -> Iterator[None]:
    yield
    host.run("systemctl reset-failed 'opsbook-backup@*'")
