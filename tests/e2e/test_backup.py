"""End to end: a fully provisioned database host (every role, as in production) takes a verified backup.

The molecule backup scenario converges only postgresql + backup; this one composes them with common (whose
libpam-tmpdir once made opsbook-backup fail over SSH) and the firewall, and drives them through the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import LabEnv, last_report, provisioned_lab


@pytest.fixture(scope="module")
def db_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    with provisioned_lab(tmp_path_factory, {"db": ["e2e-db"], "backup_store": ["e2e-store"]}) as env:
        yield env


def test_backup_run_over_a_fresh_ssh_session_is_verified(db_lab: LabEnv) -> None:
    db_lab.ssh("e2e-db", "cd /tmp && sudo -u postgres /usr/lib/postgresql/15/bin/pgbench -i -q -s 1 app")
    # a new SSH session, as an operator or a cron job on another host would open it
    out = db_lab.ssh("e2e-db", "/usr/local/sbin/opsbook-backup run && /usr/local/sbin/opsbook-backup list --json")
    listing = json.loads(out.stdout[out.stdout.index("{"):])
    newest = listing["backups"][-1]
    assert newest["verification"] == "passed" and newest["latest_good"]
    assert newest["rows"] == 100_000 + 1 + 10  # pgbench scale 1: accounts, branches, tellers
    # the copy on the store host
    stored = db_lab.ssh("e2e-store", f"find / -xdev -name {newest['file']} -size +0 2>/dev/null").stdout
    assert newest["file"] in stored


def test_backup_run_through_the_cli(db_lab: LabEnv) -> None:
    res = db_lab.opsbook("backup", "run")
    assert res.returncode == 0, res.stdout + res.stderr
    res = db_lab.opsbook("backup", "list")
    assert res.returncode == 0
    report = last_report("backup-list")
    assert report["hosts"]["e2e-db"]["failed"] == 0  # type: ignore[index]
    assert "passed" in res.stdout
