"""Read-only variable checks of the firewall and postgresql roles (their validate tasks, as preflight runs them), on
this machine with a local connection: no lab host.

- postgresql_app_hosts: addresses are checked with ansible.utils.ip, not a loose regex (issue 11 item 11: 999.1.1.1/99
  passed and would have been written into pg_hba.conf);
- firewall rules' `units` (fail closed at boot, issue 11 item 6): service names only, never sshd or nftables itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLAY = """
- name: Checks as preflight runs them
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The firewall's checks
      ansible.builtin.include_role:
        name: firewall
        tasks_from: validate
    - name: The postgresql role's checks
      ansible.builtin.include_role:
        name: postgresql
        tasks_from: validate
"""

GOOD_RULE = {"comment": "postgresql from the app hosts only", "ports": [5432], "sources": ["10.213.0.11/32"],
             "units": ["postgresql@15-main.service"]}


def check(tmp_path: Path, extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    variables = {"postgresql_app_password": "a-long-enough-password", "postgresql_app_hosts": ["10.213.0.11/32"],
                 "firewall_rules__postgresql": [GOOD_RULE], **extra}
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"@{tmp_path / 'vars.json'}", str(play)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_good_values_pass(tmp_path: Path) -> None:
    res = check(tmp_path, {"postgresql_app_hosts": ["10.213.0.11/32", "10.0.1.0/24", "10.0.0.7", "fd00:213::/64"]})
    assert res.returncode == 0, res.stdout[-3000:]


@pytest.mark.parametrize("bad", ["999.1.1.1/99", "10.1.2.3/24", "fe80::1%eth0"])
def test_bad_app_host_is_refused_naming_the_variable(tmp_path: Path, bad: str) -> None:
    res = check(tmp_path, {"postgresql_app_hosts": ["10.213.0.11/32", bad]})
    assert res.returncode != 0
    assert "postgresql_app_hosts must be a list of IPv4/IPv6 addresses or CIDR networks" in res.stdout
    assert f'refused: [\\"{bad}\\"]' in res.stdout or f'refused: ["{bad}"]' in res.stdout, res.stdout[-2000:]


def test_app_hosts_as_a_string_is_refused(tmp_path: Path) -> None:
    res = check(tmp_path, {"postgresql_app_hosts": "10.213.0.11/32"})
    assert res.returncode != 0
    assert "postgresql_app_hosts must be a list" in res.stdout


@pytest.mark.parametrize("units", [["ssh.service"], ["../x y.service"], "postgresql@15-main.service"])
def test_bad_guarded_units_are_refused_naming_the_variable(tmp_path: Path, units: Any) -> None:
    res = check(tmp_path, {"firewall_rules__postgresql": [{**GOOD_RULE, "units": units}]})
    assert res.returncode != 0
    assert "firewall_rules__postgresql: units (if given) must be a list of systemd service names" in res.stdout, \
        res.stdout[-2000:]


def test_guard_template_requires_and_orders_after_nftables() -> None:
    text = (ROOT / "roles/firewall/templates/firewall-guard.conf.j2").read_text()
    lines = [line for line in text.splitlines() if not line.startswith(("#", "{{"))]
    assert lines == ["[Unit]", "Requires=nftables.service", "After=nftables.service"]
