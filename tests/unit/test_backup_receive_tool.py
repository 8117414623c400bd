"""The store's forced command (roles/backup/files/opsbook-backup-receive) run as sshd runs it: a real process with
the authorized_keys arguments, SSH_ORIGINAL_COMMAND and the upload on its real stdin (test_backup_store.py drives
the same code in-process for the store's scenarios)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECEIVE = Path(os.environ.get("OPSBOOK_BACKUP_FILES", ROOT / "roles" / "backup" / "files")) / "opsbook-backup-receive"
NAME = "app-20261129T023002Z.dump"


def receive(directory: Path, command: str, data: bytes = b"", *limits: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, SSH_ORIGINAL_COMMAND=command)
    return subprocess.run([sys.executable, str(RECEIVE), str(directory), *limits], input=data, capture_output=True,
                          env=env, timeout=60)


def ledger(directory: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (directory / "ledger.jsonl").read_text().splitlines()]


def test_an_upload_through_stdin_is_stored_once_recorded_and_listed(tmp_path: Path) -> None:
    data = b"PGDMP" + os.urandom(3 << 20)  # several read chunks
    digest = hashlib.sha256(data).hexdigest()
    res = receive(tmp_path, f"put {NAME} {digest}", data)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode() == f"stored {NAME}\n"
    assert (tmp_path / NAME).read_bytes() == data
    assert stat.S_IMODE((tmp_path / NAME).stat().st_mode) == 0o600
    [entry] = ledger(tmp_path)
    assert {k: entry[k] for k in ("name", "size", "sha256")} == {"name": NAME, "size": len(data), "sha256": digest}
    again = receive(tmp_path, f"put {NAME} {digest}", data)  # a retried copy: a success, nothing new
    assert again.returncode == 0 and again.stdout.decode() == f"stored {NAME} (already)\n"
    assert len(ledger(tmp_path)) == 1
    other = b"PGDMP other"
    refused = receive(tmp_path, f"put {NAME} {hashlib.sha256(other).hexdigest()}", other)
    assert refused.returncode == 1 and b"never replaced" in refused.stderr
    assert (tmp_path / NAME).read_bytes() == data
    listed = receive(tmp_path, "list")
    assert listed.returncode == 0 and listed.stdout.decode() == f"{NAME} {len(data)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME, "ledger.jsonl"]  # no temporary file left


def test_an_upload_that_does_not_match_its_sha256_or_the_quota_leaves_nothing(tmp_path: Path) -> None:
    data = b"PGDMP" + b"x" * 1000
    res = receive(tmp_path, f"put {NAME} {hashlib.sha256(b'else').hexdigest()}", data)
    assert res.returncode == 1 and b"sha256 mismatch" in res.stderr
    res = receive(tmp_path, f"put {NAME} {hashlib.sha256(data).hexdigest()}", data, "--max-bytes", "500")
    assert res.returncode == 1 and b"upload cut off" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_only_put_and_list_with_strict_names_and_valid_arguments_are_accepted(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"").hexdigest()
    for command in ("", "rm -rf /", "list --all", f"put ../{NAME} {digest}", f"put {NAME} {digest.upper()}",
                    f"put app-20261399T023002Z.dump {digest}", f"put  {NAME} {digest}", f"put {NAME}"):
        res = receive(tmp_path, command)
        assert res.returncode == 1 and b"only `put NAME SHA256` and `list` are allowed" in res.stderr, command
    for limits in (("--max-bytes",), ("--max-bytes", "-1"), ("--max-files", "x"), ("--other", "1")):
        res = receive(tmp_path, "list", b"", *limits)
        assert res.returncode == 2 and b"bad arguments" in res.stderr, limits
    res = subprocess.run([sys.executable, str(RECEIVE)], capture_output=True, timeout=60,
                         env=dict(os.environ, SSH_ORIGINAL_COMMAND="list"))
    assert res.returncode == 2 and b"usage: opsbook-backup-receive DIR" in res.stderr
    assert list(tmp_path.iterdir()) == []
