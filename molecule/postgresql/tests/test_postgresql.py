"""Verify the postgresql role by its effects: logins over the network, pg_hba refusals, checked config changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

testinfra_hosts = ["ansible://mol-pg"]

# the values of molecule/postgresql/converge.yml
DATABASE = "shop"
USER = "shop"
PASSWORD = "molecule-app-password"  # noqa: S105 - throwaway test password of converge.yml


def address(host: Any) -> str:
    return host.ansible.get_variables()["ansible_host"]


def controller_psql(host: Any, password: str, sql: str = "SELECT current_user") -> subprocess.CompletedProcess[str]:
    """psql from the controller (10.213.0.1, the scenario's app host) to the app database over TCP."""
    psql = shutil.which("psql")
    assert psql, "psql is needed on the controller: apt-get install postgresql-client (scripts/bootstrap.sh)"
    return subprocess.run(
        [psql, "--no-psqlrc", "-Atc", sql,
         f"host={address(host)} port=5432 dbname={DATABASE} user={USER} connect_timeout=10"],
        env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True, timeout=60,
    )


def local_psql(host: Any, sql: str, database: str = "postgres") -> str:
    cmd = host.run("runuser -u postgres -- psql --no-psqlrc -Atc %s %s", sql, database)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def apply_role(extra_vars: dict[str, Any], tmp_path: Path,
               role: str = "postgresql") -> subprocess.CompletedProcess[str]:
    """Run converge.yml against mol-pg with EXTRA_VARS overriding the scenario's variables, with ROLE only of the roles
    its first play applies (postgresql, mongodb, firewall: each left out costs 5-15 s a call, and no test here
    changes what the others manage)."""
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra_vars))
    plays = yaml.safe_load((Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml").read_text())
    plays[0]["tasks"] = [t for t in plays[0]["tasks"]
                         if t.get("ansible.builtin.include_role", {}).get("name") == role]
    assert len(plays[0]["tasks"]) == 1, plays[0]["tasks"]
    playbook = tmp_path / f"converge-{role}.yml"
    playbook.write_text(yaml.safe_dump(plays))
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-v", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         "-e", f"@{vars_file}", str(playbook)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_ROLES_PATH": str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "roles")},
    )


def test_server_is_debian_postgresql_15(host: Any) -> None:
    assert host.package("postgresql-15").is_installed
    assert host.service("postgresql@15-main").is_running
    assert host.service("postgresql@15-main").is_enabled
    assert local_psql(host, "SHOW server_version").startswith("15.")


def test_listens_on_the_configured_addresses(host: Any) -> None:
    assert host.socket(f"tcp://{address(host)}:5432").is_listening
    assert host.socket("tcp://127.0.0.1:5432").is_listening


def test_app_role_has_a_scram_password_and_owns_its_database(host: Any) -> None:
    scram = "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'shop'"
    assert local_psql(host, scram) == "t"
    assert local_psql(host, "SELECT rolsuper FROM pg_roles WHERE rolname = 'shop'") == "f"
    owner = local_psql(host, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'")
    assert owner == USER


def test_app_host_logs_in_with_the_password(host: Any) -> None:
    result = controller_psql(host, PASSWORD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == USER


def test_wrong_password_is_refused(host: Any) -> None:
    result = controller_psql(host, "not-the-password")
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr


def test_other_hosts_and_databases_are_refused_by_pg_hba(host: Any) -> None:
    # mol-pg's own network address is not an app host: pg_hba has no line for it
    cmd = host.run(
        "PGPASSWORD=%s psql --no-psqlrc -Atc 'SELECT 1' 'host=%s dbname=%s user=%s connect_timeout=10'",
        PASSWORD, address(host), DATABASE, USER,
    )
    assert cmd.rc != 0
    assert "no pg_hba.conf entry" in cmd.stderr
    # the app host reaches only the app database
    result = subprocess.run(
        ["psql", "--no-psqlrc", "-Atc", "SELECT 1",
         f"host={address(host)} dbname=postgres user={USER} connect_timeout=10"],
        env={**os.environ, "PGPASSWORD": PASSWORD}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "no pg_hba.conf entry" in result.stderr


def test_firewall_opens_5432_to_the_app_hosts_only(host: Any) -> None:
    rules = host.run("nft list table inet opsbook")
    assert rules.rc == 0, rules.stderr
    lines = [line for line in rules.stdout.splitlines() if "5432" in line]
    assert lines and all("10.213.0.1" in line for line in lines), lines


def test_missing_password_stops_the_run_naming_the_variable(host: Any, tmp_path: Path) -> None:
    before = local_psql(host, "SELECT pg_postmaster_start_time()")
    result = apply_role({"postgresql_app_password": ""}, tmp_path)
    assert result.returncode != 0
    assert "postgresql_app_password is missing or shorter than 12 characters" in result.stdout + result.stderr
    assert local_psql(host, "SELECT pg_postmaster_start_time()") == before


def test_invalid_setting_is_caught_before_the_reload(host: Any, tmp_path: Path) -> None:
    """A bad value fails the run before the file is written; the server keeps running its configuration; the password
    never shows in the output."""
    before = local_psql(host, "SELECT pg_postmaster_start_time()")
    try:
        result = apply_role({"postgresql_settings": {"work_mem": "lots"}}, tmp_path)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert 'invalid value for parameter \\"work_mem' in output
        # checked before the write: the file on disk still has the good settings
        assert "lots" not in host.file("/etc/postgresql/15/main/conf.d/opsbook.conf").content_string
        assert PASSWORD not in result.stdout + result.stderr
        assert local_psql(host, "SHOW work_mem") == "4MB"
        assert local_psql(host, "SELECT pg_postmaster_start_time()") == before
    finally:
        fixed = apply_role({}, tmp_path)
        assert fixed.returncode == 0, fixed.stdout[-3000:]
    assert PASSWORD not in fixed.stdout + fixed.stderr
    assert local_psql(host, "SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"


@pytest.mark.parametrize("setting", ["log_min_duration_statement"])
def test_extra_settings_are_applied(host: Any, setting: str) -> None:
    assert local_psql(host, f"SHOW {setting}") == "1s"
