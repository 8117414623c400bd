"""Verify the mongodb role (applied in the postgresql scenario, on mol-pg) where no MongoDB server can run: the
lab has no route to MongoDB's repository. Checks the rendered configuration, apt left untouched, the printed
reason for skipping the live part and bad input refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

testinfra_hosts = ["ansible://mol-pg"]

REPO = "https://repo.mongodb.org/apt/debian/dists/bookworm/mongodb-org/7.0/Release"


def apply_role(extra_vars: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Apply the mongodb role alone to mol-pg, with converge.yml's variables and EXTRA_VARS over them (the whole
    converge, PostgreSQL and the firewall too, took 30-40 s more per call for nothing these tests look at)."""
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra_vars))
    converge = yaml.safe_load((Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml").read_text())
    playbook = tmp_path / "mongodb.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Apply the mongodb role", "hosts": "mol-pg", "vars": converge[0]["vars"],
        "tasks": [{"name": "Apply the mongodb role", "ansible.builtin.include_role": {"name": "mongodb"}}]}]))
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         "-e", f"@{vars_file}", str(playbook)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
             "ANSIBLE_ROLES_PATH": str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "roles")},
    )


def test_config_is_rendered_with_authorization(host: Any) -> None:
    conf = host.file("/etc/mongod.conf")
    assert conf.user == "root" and conf.mode == 0o644
    assert conf.content_string.startswith("#")
    data = yaml.safe_load(conf.content_string)
    address = host.ansible.get_variables()["ansible_host"]
    assert data["net"] == {"port": 27017, "bindIp": f"127.0.0.1,{address}"}
    assert data["security"] == {"authorization": "enabled"}
    assert data["storage"]["dbPath"] == "/var/lib/mongodb"


def test_no_repository_or_server_is_added_when_the_repository_is_unreachable(host: Any) -> None:
    sources = host.run("grep -rl mongodb /etc/apt/sources.list /etc/apt/sources.list.d/")
    assert sources.stdout.strip() == ""
    assert not host.package("mongodb-org").is_installed
    assert not host.file("/etc/apt/keyrings/mongodb-server-7.0.asc").exists


def test_skipping_the_live_part_says_why(tmp_path: Path) -> None:
    result = apply_role({}, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"MongoDB live part skipped: MongoDB apt repository {REPO} does not answer" in result.stdout
    assert "molecule-mongo" not in result.stdout + result.stderr


def test_missing_password_stops_the_run_naming_the_variable(tmp_path: Path) -> None:
    result = apply_role({"mongodb_admin_password": ""}, tmp_path)
    assert result.returncode != 0
    assert "mongodb_admin_password is missing or shorter than 12 characters" in result.stdout + result.stderr
    assert "molecule-mongo" not in result.stdout + result.stderr
