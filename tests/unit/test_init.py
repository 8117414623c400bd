"""opsbook init: the scaffolded inventory parses with Ansible's own tools, holds its secrets in the vault only, and a
bad value is refused with its option named before anything is written. tests/e2e/test_provision.py provisions a lab
host with a scaffold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opsbook.cli import main

BIN = Path(sys.executable).parent


@pytest.fixture
def key(tmp_path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@laptop", "-f", str(tmp_path / "k")],
                   check=True)
    return tmp_path / "k.pub"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def init(target: Path, key: Path, *extra: str) -> int:
    return main(["init", str(target), "--web", "web1=192.0.2.10", "--domain", "shop.example.com",
                 "--email", "ops@example.com", "--admin-key", str(key), *extra])


def host_vars(inv: Path, password_file: Path, host: str) -> dict[str, Any]:
    out = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inv), "--host", host], capture_output=True,
                         text=True, check=True, env=dict(os.environ, ANSIBLE_VAULT_PASSWORD_FILE=str(password_file)))
    return dict(json.loads(out.stdout))


def test_one_vm_in_every_group_with_a_vault_of_generated_secrets(tmp_path: Path, key: Path, home: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "prod"
    assert init(inv, key) == 0
    password_file = home / ".config" / "opsbook" / "vault-prod"
    assert password_file.stat().st_mode & 0o777 == 0o600
    groups = json.loads(subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inv), "--list"], capture_output=True,
                                       text=True, check=True,
                                       env=dict(os.environ, ANSIBLE_VAULT_PASSWORD_FILE=str(password_file))).stdout)
    assert all(groups[g]["hosts"] == ["web1"] for g in ("web", "db", "backup_store")), groups
    v = host_vars(inv, password_file, "web1")
    assert v["ansible_host"] == "192.0.2.10" and v["ansible_user"] == "admin"
    assert v["nginx_server_names"] == ["shop.example.com"] and v["acme_email"] == "ops@example.com"
    assert v["common_admin_users"][0]["ssh_keys"] == [key.read_text().strip()]
    secrets = {k: v[k] for k in ("vault_postgresql_app_password", "vault_app_secret_key", "vault_backup_age_identity")}
    assert len(secrets["vault_postgresql_app_password"]) >= 32 and len(secrets["vault_app_secret_key"]) >= 64
    # the identity in the vault is the private half of the recipient the db hosts encrypt to
    recipient = subprocess.run(["age-keygen", "-y"], input=secrets["vault_backup_age_identity"] + "\n",
                               capture_output=True, text=True, check=True).stdout.strip()
    assert v["backup_age_recipients"] == [recipient]
    # the secrets are nowhere but in the encrypted vault, and not on the screen
    out = capsys.readouterr()
    for path in inv.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not any(s in text for s in secrets.values()), path
    assert not any(s in out.out + out.err for s in secrets.values())
    assert (inv / "group_vars/all/vault.yml").read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    assert "not off-host" in out.out  # one VM: the operator is told the store is the same machine
    # a second scaffold reuses the existing password file, and gets secrets of its own
    assert init(tmp_path / "staging", key, "--vault-password-file", str(password_file)) == 0
    other = host_vars(tmp_path / "staging", password_file, "web1")
    assert other["vault_app_secret_key"] != secrets["vault_app_secret_key"]


def test_separate_hosts_get_their_groups_and_the_app_connects_to_the_db_host(tmp_path: Path, key: Path,
                                                                             home: Path) -> None:
    inv = tmp_path / "prod"
    assert init(inv, key, "--db", "db1=192.0.2.20", "--store", "backup1=backup1.example.net",
                "--admin-user", "ops", "--domain", "www.shop.example.com") == 0
    password_file = home / ".config" / "opsbook" / "vault-prod"
    hosts = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inv), "--list"], capture_output=True, text=True,
                           check=True, env=dict(os.environ, ANSIBLE_VAULT_PASSWORD_FILE=str(password_file))).stdout
    groups = json.loads(hosts)
    assert groups["web"]["hosts"] == ["web1"] and groups["db"]["hosts"] == ["db1"]
    assert groups["backup_store"]["hosts"] == ["backup1"]
    db = host_vars(inv, password_file, "db1")
    assert db["ansible_host"] == "192.0.2.20" and db["ansible_user"] == "ops"
    assert host_vars(inv, password_file, "web1")["nginx_server_names"] == ["shop.example.com", "www.shop.example.com"]


def bad_key(tmp_path: Path) -> Path:
    private = tmp_path / "private"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(private)], check=True)
    return private


@pytest.mark.parametrize(("args", "named"), [
    (["--web", "{{ lookup('pipe', 'id') }}"], "--web"),
    (["--db", "db1=not an address"], "--db"),
    (["--store", "web1=192.0.2.99"], "two addresses"),
    (["--domain", "{{ evil }}.example.com"], "--domain"),
    (["--domain", "localhost"], "--domain"),
    (["--email", "ops at example"], "--email"),
    (["--admin-user", "root"], "--admin-user"),
    (["--admin-user", "a b"], "--admin-user"),
    (["--admin-key", "PRIVATE"], "--admin-key"),
    (["--admin-key", "/nonexistent.pub"], "--admin-key"),
    (["--vault-password-file", "INSIDE"], "--vault-password-file"),
])
def test_a_bad_value_is_refused_by_its_option_before_anything_is_written(
        tmp_path: Path, key: Path, home: Path, capsys: pytest.CaptureFixture[str], args: list[str], named: str) -> None:
    inv = tmp_path / "prod"
    args = [str(bad_key(tmp_path)) if a == "PRIVATE" else str(inv / "vault-pass") if a == "INSIDE" else a
            for a in args]
    # the later option wins in argparse: the bad value replaces the good one given by init()
    assert init(inv, key, *args) == 1
    assert named in capsys.readouterr().err
    assert not inv.exists() and not home.exists()
    assert not list(tmp_path.glob(".prod.opsbook-init-*"))


def test_an_existing_inventory_is_never_overwritten(tmp_path: Path, key: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    inv = tmp_path / "prod"
    inv.mkdir()
    (inv / "hosts.yml").write_text("mine\n")
    assert init(inv, key) == 1
    assert "nothing is overwritten" in capsys.readouterr().err
    assert [p.name for p in inv.iterdir()] == ["hosts.yml"] and (inv / "hosts.yml").read_text() == "mine\n"


def test_an_existing_password_file_readable_by_others_is_refused(tmp_path: Path, key: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    loose = tmp_path / "vault-pass"
    loose.write_text("secret\n")
    loose.chmod(0o644)
    assert init(tmp_path / "prod", key, "--vault-password-file", str(loose)) == 1
    assert "readable by others" in capsys.readouterr().err
    assert not (tmp_path / "prod").exists()
