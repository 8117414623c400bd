"""Verify the mongodb role (applied in the postgresql scenario, on mol-pg) where no MongoDB server can run: the
lab has no route to MongoDB's repository. Checks the rendered configuration, apt left untouched, the printed
reason for skipping the live part and bad input refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from test_postgresql import apply_role

testinfra_hosts = ["ansible://mol-pg"]

REPO = "https://repo.mongodb.org/apt/debian/dists/bookworm/mongodb-org/7.0/Release"


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
    result = apply_role({}, tmp_path, role="mongodb")
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"MongoDB live part skipped: MongoDB apt repository {REPO} does not answer" in result.stdout
    assert "molecule-mongo" not in result.stdout + result.stderr


def test_missing_password_stops_the_run_naming_the_variable(tmp_path: Path) -> None:
    result = apply_role({"mongodb_admin_password": ""}, tmp_path, role="mongodb")
    assert result.returncode != 0
    assert "mongodb_admin_password is missing or shorter than 12 characters" in result.stdout + result.stderr
    assert "molecule-mongo" not in result.stdout + result.stderr
