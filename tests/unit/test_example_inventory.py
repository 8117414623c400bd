"""The example inventory is valid: it parses, its vault opens with the documented example password, and every
role variable it sets passes that role's argument spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventories" / "example"


def test_inventory_parses_and_vault_opens(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("opsbook-example\n")
    pw.chmod(0o600)
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(EXAMPLE), "--list",
         "--vault-password-file", str(pw)],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")),
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
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
