"""Issue 11 item 6 / acceptance 5: the firewall fails closed at boot.

mol-pg is rebooted with an /etc/nftables.conf that does not load: nftables.service fails and the ruleset is empty.
PostgreSQL (which the firewall opens only to the app hosts) must then stay down, so 5432 is closed to a client host
that is not an app host (mol-pg-client, scanned from its own network namespace with src/opsbook/lab/portscan.py), while
sshd still starts so that the host can be repaired; `opsbook status` must report both units and exit 2.
Before the fix PostgreSQL started anyway and answered on 5432 from mol-pg-client.

Also here: a pg_hba.conf that the server refuses is never left in place (issue 11 item 11).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_postgresql import apply_role, local_psql

import opsbook.lab.portscan

testinfra_hosts = ["ansible://mol-pg"]

TARGET = "mol-pg"
CLIENT_NS = "olab-mol-pg-client"  # the lab's network namespace of mol-pg-client (not an app host)
UNIT = "postgresql@15-main.service"
GUARD = f"/etc/systemd/system/{UNIT}.d/opsbook-firewall.conf"
BIN = Path(sys.executable).parent


def address(host: Any) -> str:
    return host.ansible.get_variables()["ansible_host"]


def open_ports(netns: str | None, ip: str) -> list[int]:
    """Open TCP ports among 22 and 5432 of IP, scanned from NETNS (None: the controller, the scenario's app host)."""
    cmd = [sys.executable, opsbook.lab.portscan.__file__, ip, "22,5432"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    return [int(p) for p in json.loads(out)]


def active_state(host: Any, unit: str) -> str:
    return host.run("systemctl show --property=ActiveState --value %s", unit).stdout.strip()


def reboot(host: Any) -> None:
    """Power mol-pg off and boot it again (same disk), then wait until the boot has finished."""
    subprocess.run([str(BIN / "opsbook"), "lab", "restart", TARGET], check=True, timeout=300,
                   capture_output=True, text=True)
    # every boot job done: "degraded" when a unit failed (nftables.service here), "running" otherwise
    state = host.run("timeout 120 systemctl is-system-running --wait").stdout.strip()
    assert state in ("running", "degraded"), state


@pytest.fixture
def broken_firewall_config(host: Any) -> Iterator[None]:
    """/etc/nftables.conf that nft refuses; the good file, nftables and PostgreSQL are back afterwards."""
    host.run_expect([0], "cp -p /etc/nftables.conf /root/nftables.conf.good")
    host.run_expect([0], "printf 'this line is not nftables syntax\\n' >> /etc/nftables.conf")
    assert host.run("nft -c -f /etc/nftables.conf").rc != 0
    yield
    host.run_expect([0], "cp -p /root/nftables.conf.good /etc/nftables.conf")
    host.run_expect([0], f"systemctl start nftables.service {UNIT}")
    assert active_state(host, UNIT) == "active"


def test_postgresql_requires_the_firewall(host: Any) -> None:
    guard = host.file(GUARD)
    assert guard.is_file and guard.mode == 0o644
    assert "Requires=nftables.service" in guard.content_string
    assert "After=nftables.service" in guard.content_string
    deps = host.run("systemctl show --property=Requires,After %s", UNIT).stdout
    assert "nftables.service" in deps.split("Requires=")[1].splitlines()[0]
    # sshd is never guarded: the host must stay reachable for repair
    assert not host.file("/etc/systemd/system/ssh.service.d/opsbook-firewall.conf").exists


def test_invalid_firewall_config_at_boot_keeps_5432_closed(host: Any, broken_firewall_config: None) -> None:
    ip = address(host)
    # before: 5432 answers the app host (the controller) only; mol-pg-client is filtered
    assert open_ports(None, ip) == [22, 5432]
    assert open_ports(CLIENT_NS, ip) == [22]

    reboot(host)

    # the firewall did not load: no opsbook table, so nothing filters any more ...
    assert active_state(host, "nftables.service") == "failed"
    assert host.run("nft list table inet opsbook").rc != 0
    # ... and PostgreSQL was not started: 5432 is closed to the client (and to everyone); sshd is up for repair
    assert active_state(host, UNIT) != "active"
    assert open_ports(CLIENT_NS, ip) == [22]
    assert open_ports(None, ip) == [22]
    # (no check of systemd's "Dependency failed" journal line: at an early boot it can be written before journald
    # reads its socket and is then lost; two CI runs saw "-- No entries --" after waiting 30 s. The unit's state, the
    # scan and the Requires= check in test_postgresql_requires_the_firewall are the proof.)

    # opsbook status says why, and fails
    res = subprocess.run(
        [str(BIN / "opsbook"), "status", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--limit", TARGET, "--json",
         # a list, as JSON: -e passes through as ansible-playbook takes it (KEY=VALUE gives a string)
         "-e", json.dumps({"status_database_units": [UNIT]})],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(res.stdout)["hosts"][TARGET]
    units = {u["unit"]: u for u in report["units"]}
    assert units["nftables.service"]["active_state"] == "failed"
    assert units[UNIT]["active_state"] != "active"
    assert any(p.startswith("firewall nftables.service: failed") for p in report["problems"]), report["problems"]
    assert any(p.startswith(f"database {UNIT}: ") and "not running" in p for p in report["problems"])


def test_a_pg_hba_the_server_refuses_is_put_back(host: Any, tmp_path: Path) -> None:
    """A database name with a space shifts pg_hba's columns: the server refuses the file. The previous file must be
    back at once (before: the bad file stayed until the next restart failed) and the server was not reloaded."""
    path = "/etc/postgresql/15/main/pg_hba.conf"
    before = host.file(path).sha256sum
    started = local_psql(host, "SELECT pg_postmaster_start_time()")
    loaded = local_psql(host, "SELECT pg_conf_load_time()")
    try:
        result = apply_role({"postgresql_app_database": "shop oops"}, tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-3000:]
        assert "The server refused the new pg_hba.conf" in output, output[-3000:]
        assert host.file(path).sha256sum == before
        assert local_psql(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
        assert local_psql(host, "SELECT pg_conf_load_time()") == loaded
        assert local_psql(host, "SELECT pg_postmaster_start_time()") == started
        assert host.run("ls /etc/postgresql/15/main/ | grep -c '~$'").stdout.strip() == "0"  # no backup left
    finally:
        fixed = apply_role({}, tmp_path)
        assert fixed.returncode == 0, fixed.stdout[-3000:]
