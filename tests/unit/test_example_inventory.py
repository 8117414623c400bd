"""The example inventory is valid: it parses, its vault opens with the documented example password, and every
role variable it sets passes that role's argument spec."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from tests.unit.helpers import trusted

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventories" / "example"


def test_inventory_parses_and_vault_opens(inventory: dict[str, Any]) -> None:
    data = inventory
    assert "web1.example.com" in data["web"]["hosts"]
    hostvars = data["_meta"]["hostvars"]["web1.example.com"]
    assert hostvars["vault_alice_password_hash"].startswith("$6$")


def test_vault_is_encrypted_in_git() -> None:
    assert (EXAMPLE / "group_vars" / "all" / "vault.yml").read_text().startswith("$ANSIBLE_VAULT;")


def _specs() -> dict[str, dict[str, object]]:
    specs: dict[str, dict[str, object]] = {}
    for f in (ROOT / "roles").glob("*/meta/argument_specs.yml"):
        specs[f.parent.parent.name] = yaml.safe_load(f.read_text())["argument_specs"]["main"]["options"] or {}
    return specs


@pytest.mark.parametrize("vars_file", sorted(str(p.relative_to(EXAMPLE / "group_vars"))
                                             for p in (EXAMPLE / "group_vars").glob("*/*.yml")
                                             if p.name != "vault.yml"))
def test_role_variables_pass_their_specs(vars_file: str) -> None:
    data = yaml.safe_load((EXAMPLE / "group_vars" / vars_file).read_text()) or {}
    specs = _specs()
    for name, value in data.items():
        role = next((r for r in specs if name.startswith(f"{r}_")), None)
        if role is None:
            assert name.startswith(("ansible_", "vault_")), f"{name} belongs to no role"
            continue
        # contributions (firewall_rules__x, logrotate_configs__x) have the shape of the variable they extend
        base = name.split("__", 1)[0]
        assert base in specs[role], f"{name} is not a variable of role {role}"
        if isinstance(value, str) and "{{" in value:
            continue
        result = ArgumentSpecValidator({name: specs[role][base]}).validate({name: value})
        assert not result.error_messages, result.error_messages


# ------------------------------------------------------------------ who can log in (issue 11 item 7)

@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ansible-inventory --list of the example (vault opened), once for the tests below."""
    pw = tmp_path_factory.mktemp("vault") / "pw"
    pw.write_text("opsbook-example\n")
    pw.chmod(0o600)
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(EXAMPLE), "--list",
         "--vault-password-file", str(pw)],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")),
        check=True)
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def _role_vars(*roles: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for role in roles:
        for f in (ROOT / "roles" / role / "defaults" / "main.yml", ROOT / "roles" / role / "vars" / "main.yml"):
            if f.is_file():
                out.update(yaml.safe_load(f.read_text()) or {})
    return out




def _sshd_config(host: str, inventory: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The sshd_config the sshd role writes on host, and the host's variables (role defaults under the inventory's)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    groups = {g: v.get("hosts", []) for g, v in inventory.items() if g != "_meta"}
    group_names = sorted(g for g, hosts in groups.items() if host in hosts and g not in ("all", "ungrouped"))
    variables = (trusted(_role_vars("common", "backup", "sshd")) | trusted(inventory["_meta"]["hostvars"][host])
                 | {"inventory_hostname": host, "group_names": group_names, "groups": groups,
                    "ansible_managed": "Ansible managed"})
    templar = Templar(loader=DataLoader(), variables=variables)
    text = str(templar.template(trust_as_template((ROOT / "roles/sshd/templates/sshd_config.j2").read_text())))
    resolved = {k: templar.template(variables[k]) for k in ("common_admin_users", "common_admin_groups",
                                                             "backup_store_user", "ansible_user")}
    return text, resolved | {"group_names": group_names}


def _allowed(config: str, user: str, groups: list[str]) -> bool:
    """sshd's AllowUsers/AllowGroups decision (both must admit the user when both are set)."""
    directives: dict[str, list[str]] = {}
    for line in config.splitlines():
        words = line.split()
        if words and words[0].lower() in ("allowusers", "allowgroups", "denyusers", "denygroups"):
            directives.setdefault(words[0].lower(), []).extend(words[1:])
    users = [p.split("@", 1)[0] for p in directives.get("allowusers", [])]
    if any(fnmatch.fnmatchcase(user, p) for p in directives.get("denyusers", [])):
        return False
    if users and not any(fnmatch.fnmatchcase(user, p) for p in users):
        return False
    if any(fnmatch.fnmatchcase(g, p) for g in groups for p in directives.get("denygroups", [])):
        return False
    allow_groups = directives.get("allowgroups", [])
    return not allow_groups or any(fnmatch.fnmatchcase(g, p) for g in groups for p in allow_groups)


def test_every_account_that_must_log_in_is_allowed_by_sshd(inventory: dict[str, Any]) -> None:
    """Admin users (with the groups common gives them: their own and common_admin_groups) on every host, the backup
    receive account (its own group) on the store, and the connection user Ansible logs in as."""
    hosts = sorted(inventory["_meta"]["hostvars"])
    assert "backup1.example.com" in hosts
    locked_out = []
    for host in hosts:
        config, v = _sshd_config(host, inventory)
        admins = [u for u in v["common_admin_users"] if u.get("state", "present") == "present"]
        accounts = {u["name"]: [u["name"], *v["common_admin_groups"]] for u in admins}
        if "backup_store" in v["group_names"]:
            accounts[v["backup_store_user"]] = [v["backup_store_user"]]
        assert v["ansible_user"] in accounts, f"{host}: Ansible logs in as {v['ansible_user']}, not an admin user"
        locked_out += [f"{host}: {user} (groups {','.join(groups)})" for user, groups in accounts.items()
                       if not _allowed(config, user, groups)]
    assert not locked_out, "sshd would refuse:\n" + "\n".join(locked_out)


def test_sshd_restriction_still_restricts(inventory: dict[str, Any]) -> None:
    """Accounts the roles do not create stay out (the allow-group is not dropped, only extended)."""
    config, _ = _sshd_config("web1.example.com", inventory)
    assert not _allowed(config, "mallory", ["mallory", "users"])
    assert _allowed(config, "someone", ["someone", "sudo"])
