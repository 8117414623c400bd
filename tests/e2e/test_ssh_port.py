"""End to end (issue 12, acceptance 1): `sshd_port: 2222` set alone moves SSH, and the firewall and fail2ban follow.

Before, the port lived in three variables: sshd moved to 2222 while nftables still opened only 22 (2222 filtered) and
fail2ban's sshd jail still banned on 22; the host was reachable only through the run's persisted connection.

One bare lab host in backup_store (it gets the base roles only: common, firewall, sshd, logrotate, fail2ban).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsbook import lab
from tests.e2e.conftest import FAST, LabEnv, boot, last_report, make_inventory, outcome

HOST = "s-sshport"


def tcp_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=5):
            return True
    except OSError:  # refused, or filtered (timeout)
        return False


def ssh(ip: str, port: int, cmd: str) -> subprocess.CompletedProcess[str]:
    """SSH as the lab's root on PORT (the known_hosts entry is the address's, as for port 22)."""
    return subprocess.run(
        ["ssh", "-i", str(lab.ssh_key()), "-o", f"UserKnownHostsFile={lab.known_hosts()}",
         "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlias={ip}", "-o", "BatchMode=yes",
         "-o", "ConnectTimeout=10", "-p", str(port), f"root@{ip}", cmd],
        capture_output=True, text=True, timeout=60)


def set_host_vars(inventory: Path, **variables: Any) -> None:
    hosts: dict[str, Any] = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["backup_store"]["hosts"][HOST].update(variables)
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabEnv, subprocess.CompletedProcess[str]]]:
    hosts = boot([HOST])
    try:
        fast: dict[str, object] = {**FAST}
        inv = make_inventory(tmp_path_factory.mktemp("inv") / "lab", {"backup_store": [hosts[HOST]]}, fast)
        # the one setting: the firewall's and fail2ban's ports are not named anywhere
        set_host_vars(inv, sshd_port=2222)
        env = LabEnv(hosts, inv)
        yield env, env.opsbook("provision")
    finally:
        lab.down([HOST], progress=False)


def test_provisioning_with_sshd_port_alone_converges(moved: tuple[LabEnv, subprocess.CompletedProcess[str]]) -> None:
    _, res = moved
    assert res.returncode == 0, f"provision with sshd_port: 2222 failed:\n{outcome(res)}"


def test_the_host_answers_on_the_new_port_only(moved: tuple[LabEnv, subprocess.CompletedProcess[str]]) -> None:
    env, _ = moved
    ip = env.ip(HOST)
    # the firewall followed: 2222 is open to a new connection, and sshd answers there
    assert tcp_open(ip, 2222), "2222 is filtered: the firewall did not follow sshd_port"
    login = ssh(ip, 2222, "id -un")
    assert login.returncode == 0 and login.stdout.strip() == "root", login.stderr
    assert not tcp_open(ip, 22), "22 still answers"
    # fail2ban followed (the sshd jail bans on 2222); the firewall kept no rule for 22
    conf = ssh(ip, 2222, "sed -n '/^\\[sshd\\]/,/^\\[/p' /etc/fail2ban/jail.d/opsbook.local; "
                         "nft list table inet opsbook | grep -c 'dport 22 ' || true")
    assert "port = 2222" in conf.stdout, conf.stdout
    assert conf.stdout.strip().splitlines()[-1] == "0", conf.stdout  # no rule for 22 left


def test_the_next_run_on_the_new_port_changes_nothing(moved: tuple[LabEnv, subprocess.CompletedProcess[str]]) -> None:
    env, _ = moved
    set_host_vars(env.inventory, ansible_port=2222)
    res = env.opsbook("provision")
    assert res.returncode == 0, f"second provision on 2222 failed:\n{outcome(res)}"
    assert last_report("provision", HOST)["hosts"][HOST]["changed"] == 0  # type: ignore[index]
