"""Runs of the role from the tests: bad input and lockout stop before any change; a reload keeps other tables and
established connections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ALLOWED_TCP, CLIENT_NS, addresses, nft_json, tcp_state

testinfra_hosts = ["ansible://mol-fw"]

# Holds one TCP connection from mol-fw-client: connects, says so, waits for a line on stdin, then sends an HTTP request
# on the same connection and prints the status line of the answer.
HOLDER = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 10)
print("connected", flush=True)
sys.stdin.readline()
s.settimeout(15)
s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
print(s.makefile("rb").readline().decode().strip(), flush=True)
"""


BAD_RULES = "firewall_rules__bad"
LOCKOUT = "TCP port 22, which these rules would not open to everyone: set firewall_ssh_port to 22"


def apply_role(extra_vars: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run molecule/firewall/converge.yml against mol-fw with EXTRA_VARS overriding the scenario's variables."""
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra_vars))
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "-e",
            f"@{vars_file}",
            str(Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def firewall_state(host: Any) -> tuple[str, list[dict[str, Any]]]:
    return host.file("/etc/nftables.conf").sha256sum, nft_json(host, "table", "inet", "opsbook")


@pytest.mark.parametrize(
    ("extra_vars", "named"),
    [
        ({"firewall_allowed_tcp_ports": "8081,8080"}, "firewall_allowed_tcp_ports"),
        ({"firewall_rules": [{"comment": "x", "ports": [70000]}]}, "firewall_rules"),
        ({"firewall_rules__bad": "5432"}, "firewall_rules__bad"),
        ({"firewall_rules__bad": [{"comment": "x", "ports": "5432"}]}, "firewall_rules__bad"),
        ({"firewall_rules__bad": [{"comment": "x", "ports": [5432], "sources": ["10.0.0.300/8"]}]}, BAD_RULES),
        ({"firewall_ssh_port": 2222}, LOCKOUT),
    ],
    ids=[
        "string-for-list",
        "port-out-of-range",
        "contributed-string",
        "contributed-ports-string",
        "contributed-bad-cidr",
        "lockout",
    ],
)
def test_bad_input_stops_before_any_change(host: Any, tmp_path: Path, extra_vars: dict[str, Any], named: str) -> None:
    before = firewall_state(host)
    run = apply_role(extra_vars, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert named in output, output
    assert "Install nftables" not in output, "the run went past validation"
    assert firewall_state(host) == before


def test_rules_nft_rejects_are_refused_and_the_old_ones_stay(host: Any, tmp_path: Path) -> None:
    """An address that passes the role's own checks but not nft's: refused by `nft -c`, nothing changes."""
    before = firewall_state(host)
    run = apply_role(
        {"firewall_rules__bad": [{"comment": "x", "ports": [5432], "sources": ["fd00:::1::/64"]}]}, tmp_path
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "failed to validate" in output, output
    assert firewall_state(host) == before


@pytest.fixture()
def restore_converge(tmp_path: Path) -> Iterator[None]:
    yield
    run = apply_role({}, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_reload_by_the_role_keeps_other_tables_and_established_connections(
    host: Any, tmp_path: Path, listeners: None, restore_converge: None
) -> None:
    target = addresses()["mol-fw"]
    host.run("nft delete table inet f2b-table")
    host.run_expect([0], "nft add table inet f2b-table")
    host.run_expect([0], "nft add set inet f2b-table addr-set-sshd '{ type ipv4_addr; }'")
    host.run_expect([0], "nft add element inet f2b-table addr-set-sshd '{ 192.0.2.10 }'")
    try:
        # open 8080 too: the role reloads (handler) and 8080 answers
        run = apply_role({"firewall_allowed_tcp_ports": [ALLOWED_TCP, 8080]}, tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "RUNNING HANDLER [firewall : Load the nftables rules]" in run.stdout
        assert tcp_state(CLIENT_NS, 8080) == "open"

        # a connection made while 8080 is open stays usable after the role closes 8080 again
        holder = subprocess.Popen(
            ["ip", "netns", "exec", CLIENT_NS, sys.executable, "-c", HOLDER, target, "8080"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdin is not None
            assert holder.stdout.readline().strip() == "connected"
            run = apply_role({}, tmp_path)
            assert run.returncode == 0, run.stdout + run.stderr
            assert tcp_state(CLIENT_NS, 8080) == "filtered"  # closed to new connections ...
            holder.stdin.write("go\n")
            holder.stdin.flush()
            # ... but not to this one
            assert holder.stdout.readline().startswith("HTTP/1.0 200"), "the established connection was cut"
        finally:
            holder.kill()
            holder.wait()

        sets = nft_json(host, "set", "inet", "f2b-table", "addr-set-sshd")
        elements = [item["set"].get("elem") for item in sets if "set" in item]
        assert elements == [["192.0.2.10"]], "fail2ban's table lost its ban in the firewall reload"
    finally:
        host.run("nft delete table inet f2b-table")
