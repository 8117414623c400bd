"""End to end: `opsbook provision` on a fresh lab host, then what a hardened host must show from outside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import opsbook.portscan
from tests.e2e.conftest import LabEnv, last_report

PORTSCAN = Path(opsbook.portscan.__file__)


@pytest.fixture(scope="module")
def provisioned(web_lab: LabEnv) -> LabEnv:
    res = web_lab.opsbook("provision")
    assert res.returncode == 0, f"first provision failed:\n{res.stdout}\n{res.stderr}"
    report = last_report("provision")
    assert report["hosts"]["e2e-web"]["changed"] > 0  # type: ignore[index]
    return web_lab


def changed(report: dict[str, object]) -> dict[str, int]:
    return {h: t["changed"] for h, t in report["hosts"].items()}  # type: ignore[attr-defined]


def test_second_run_changes_nothing(provisioned: LabEnv) -> None:
    res = provisioned.opsbook("provision")
    assert res.returncode == 0, res.stderr
    assert changed(last_report("provision")) == {"e2e-web": 0}


def test_check_mode_on_a_converged_host_changes_nothing(provisioned: LabEnv) -> None:
    res = provisioned.opsbook("provision", "--check")
    assert res.returncode == 0, res.stderr
    report = last_report("provision")
    assert report["check"] is True
    assert changed(report) == {"e2e-web": 0}


def test_only_ssh_answers_from_a_second_host(provisioned: LabEnv) -> None:
    # something listening on a high port that the firewall must hide
    provisioned.ssh("e2e-web", "systemd-run --unit=e2e-listener --collect python3 -m http.server 8080 "
                    "|| systemctl is-active e2e-listener")
    provisioned.ssh("e2e-web", "for i in $(seq 50); do python3 -c \"import socket;"
                    "socket.create_connection(('127.0.0.1',8080),1)\" 2>/dev/null && exit 0; sleep 0.2; done; exit 1")
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", provisioned.hosts["e2e-client"].netns, sys.executable, str(PORTSCAN),
             provisioned.ip("e2e-web"), "1-1024,3000,5432,8000,8080,8443,9090"],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout
    finally:
        provisioned.ssh("e2e-web", "systemctl stop e2e-listener", check=False)
    assert json.loads(out) == [22]


def test_bad_input_stops_before_any_change(provisioned: LabEnv) -> None:
    before = provisioned.ssh("e2e-web", "sha256sum /etc/nftables.conf /etc/ssh/sshd_config").stdout
    # a valid change that would be applied if the run got that far, beside a wrongly shaped variable
    res = provisioned.opsbook("provision", "-e", "firewall_allowed_tcp_ports='8080,9090'")
    assert res.returncode == 2
    output = res.stdout + res.stderr
    assert "firewall_allowed_tcp_ports" in output
    report = last_report("provision")
    assert changed(report) == {"e2e-web": 0}
    assert all("preflight" in f["task"].lower() or "variables" in f["task"].lower()  # type: ignore[index]
               for f in report["failures"])  # type: ignore[attr-defined]
    res = provisioned.opsbook("provision", "-e", "fail2ban_maxretry=lots")
    assert res.returncode == 2
    assert "fail2ban_maxretry" in res.stdout + res.stderr
    assert changed(last_report("provision")) == {"e2e-web": 0}
    assert provisioned.ssh("e2e-web", "sha256sum /etc/nftables.conf /etc/ssh/sshd_config").stdout == before
