"""Role contracts (issue 12): one fact has one owner, and roles publish the rules, jails and rotations they need.

On this machine with a local connection, no lab host:
- the dependent defaults follow their owner (firewall_ssh_port and fail2ban_sshd_port follow sshd_port, ...);
- preflight refuses a dependent set by hand to another value, naming both variables, before any change;
- provision.yml's play collects what the roles a host runs publish (nginx's 80/443, postgresql's 5432 for the app
  hosts, nginx's jails and log rotation), and only those;
- the inventories carry no firewall rule, jail or rotation a role publishes itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def play(tmp_path: Path, text: str, hosts: dict[str, tuple[tuple[str, ...], dict[str, Any]]]
         ) -> subprocess.CompletedProcess[str]:
    """Run the playbook TEXT against local hosts: name -> (its groups, its variables)."""
    (tmp_path / "play.yml").write_text(text)
    groups: dict[str, Any] = {}
    for name, (member_of, variables) in hosts.items():
        for g in member_of:
            groups.setdefault(g, {"hosts": {}})["hosts"][name] = {
                "ansible_connection": "local", "ansible_python_interpreter": sys.executable, **variables}
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump({"all": {"children": groups}}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_ROLES_PATH=str(ROOT / "roles"), PATH=f"{BIN}:{os.environ['PATH']}")
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def results(res: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The values each host printed as `RESULT <json>` (ok: [host] => {"msg": "RESULT ..."})."""
    out: dict[str, Any] = {}
    host = ""
    for line in res.stdout.splitlines():
        if line.startswith("ok: ["):
            host = line[len("ok: ["):].split("]")[0]
        if '"msg": "RESULT ' in line:
            out[host] = json.loads(json.loads("{" + line.strip() + "}")["msg"][len("RESULT "):])
    return out


# ------------------------------------------------------------------ one owner per fact

# The roles in scope (their defaults), none of their tasks run: what a role would see in provision.yml's play.
DEFAULTS_PLAY = """
- name: Role defaults as provision.yml's play sees them
  hosts: all
  gather_facts: false
  roles:
    - {role: sshd, when: false}
    - {role: firewall, when: false}
    - {role: fail2ban, when: false}
    - {role: nginx, when: false}
    - {role: acme, when: false}
    - {role: postgresql, when: false}
    - {role: backup, when: false}
  tasks:
    - name: Print the dependent values
      ansible.builtin.debug:
        msg: "RESULT {{ {'firewall_ssh_port': firewall_ssh_port, 'fail2ban_sshd_port': fail2ban_sshd_port,
                        'sshd_jail_port': fail2ban_jails.sshd.port,
                        'backup_postgresql_port': backup_postgresql_port,
                        'backup_postgresql_version': backup_postgresql_version,
                        'acme_cert_name': acme_cert_name, 'acme_webroot': acme_webroot,
                        'acme_nginx_tls_dir': acme_nginx_tls_dir} | to_json }}"
"""


def test_dependent_settings_follow_their_owner(tmp_path: Path) -> None:
    res = play(tmp_path, DEFAULTS_PLAY, {
        "owners-set": (("web",), {"sshd_port": 2222, "postgresql_port": 5433, "postgresql_version": 16,
                                  "nginx_tls_name": "site", "nginx_acme_webroot": "/srv/acme",
                                  "nginx_tls_dir": "/etc/nginx/certs"}),
        "nothing-set": (("web",), {}),
    })
    assert res.returncode == 0, res.stdout[-4000:]
    got = results(res)
    assert got["owners-set"] == {
        "firewall_ssh_port": 2222, "fail2ban_sshd_port": "2222", "sshd_jail_port": "2222",
        "backup_postgresql_port": 5433, "backup_postgresql_version": 16, "acme_cert_name": "site",
        "acme_webroot": "/srv/acme", "acme_nginx_tls_dir": "/etc/nginx/certs"}
    assert got["nothing-set"] == {
        "firewall_ssh_port": 22, "fail2ban_sshd_port": "22", "sshd_jail_port": "22",
        "backup_postgresql_port": 5432, "backup_postgresql_version": 15, "acme_cert_name": "nothing-set",
        "acme_webroot": "/var/www/acme", "acme_nginx_tls_dir": "/etc/nginx/tls"}


PREFLIGHT_PLAY = """
- name: Preflight as provision.yml runs it
  hosts: all
  gather_facts: false
  roles:
    - role: preflight
      vars:
        preflight_roles: [firewall, sshd, nginx, acme, postgresql, backup, fail2ban]
"""

# host -> (its settings, the variables preflight must name; none: it must pass)
PREFLIGHT_CASES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "ssh-moved-firewall-not": ({"sshd_port": 2222, "firewall_ssh_port": 22}, ("firewall_ssh_port", "sshd_port")),
    "ssh-moved-jail-not": ({"sshd_port": 2222, "fail2ban_sshd_port": "22"}, ("fail2ban_sshd_port", "sshd_port")),
    "firewall-alone": ({"firewall_ssh_port": 2222}, ("firewall_ssh_port", "sshd_port")),
    "backup-port": ({"backup_postgresql_port": 5433}, ("backup_postgresql_port", "postgresql_port")),
    "backup-version": ({"postgresql_version": 16, "backup_postgresql_version": 15},
                       ("backup_postgresql_version", "postgresql_version")),
    "acme-webroot": ({"acme_webroot": "/srv/other"}, ("acme_webroot", "nginx_acme_webroot")),
    "owner-alone": ({"sshd_port": 2222}, ()),
    "jail-names-it": ({"sshd_port": 2222, "fail2ban_sshd_port": "ssh,2222"}, ()),
    "both-agree": ({"sshd_port": 2222, "firewall_ssh_port": 2222}, ()),
}


def test_preflight_refuses_a_dependent_that_disagrees_with_its_owner(tmp_path: Path) -> None:
    res = play(tmp_path, PREFLIGHT_PLAY, {
        host: (("web", "db"), {"postgresql_app_password": "a-long-enough-password", **settings})
        for host, (settings, _) in PREFLIGHT_CASES.items()})
    failed = {line[len("fatal: ["):].split("]")[0]: line for line in res.stdout.splitlines()
              if line.startswith("fatal: [")}
    for host, (_, names) in PREFLIGHT_CASES.items():
        if names:
            assert host in failed, f"{host}: not refused\n{res.stdout[-3000:]}"
            assert "disagrees with" in failed[host] and all(n in failed[host] for n in names), failed[host]
        else:
            assert host not in failed, failed[host]


# ------------------------------------------------------------------ roles publish, the playbook collects

def collect_play() -> str:
    """provision.yml's own play variables (the collection), with the roles in scope and none of their tasks run."""
    provision = yaml.safe_load((ROOT / "playbooks" / "provision.yml").read_text())
    main = next(p for p in provision if "firewall_dependent_rules" in (p.get("vars") or {}))
    roles = [{"role": r["role"], "when": False} for r in main["roles"]]
    return yaml.safe_dump([{
        "name": "What provision.yml collects", "hosts": "all", "gather_facts": False, "vars": main["vars"],
        "roles": roles,
        "tasks": [{"name": "Print it", "ansible.builtin.debug": {"msg": "RESULT {{ {"
                   "'rules': firewall_dependent_rules, 'jails': fail2ban_dependent_jails, "
                   "'filters': fail2ban_dependent_filters, 'rotations': logrotate_dependent_configs} | to_json }}"}}],
    }])


OFFICE = [{"comment": "HTTPS from the office", "proto": "tcp", "ports": [443], "sources": ["198.51.100.0/24"]}]


def test_each_host_gets_what_its_own_roles_publish(tmp_path: Path) -> None:
    res = play(tmp_path, collect_play(), {
        "web-and-db": (("web", "db"), {"postgresql_app_hosts": ["10.0.0.11/32"]}),
        "db-only": (("db",), {"postgresql_app_hosts": ["10.0.0.11/32"]}),
        "store": (("backup_store",), {}),
        "web-overridden": (("web",), {"nginx__firewall_rules": OFFICE}),
    })
    assert res.returncode == 0, res.stdout[-4000:]
    got = results(res)
    # nginx: 80/443, its jails and its log rotation; postgresql: 5432 from the app hosts, its unit failing closed
    rules = {r["comment"]: r for r in got["web-and-db"]["rules"]}
    assert rules["HTTP (ACME challenges, redirect) and HTTPS"]["ports"] == [80, 443]
    pg = rules["postgresql from the app hosts only"]
    assert (pg["ports"], pg["sources"], pg["units"]) == ([5432], ["10.0.0.11/32"], ["postgresql@15-main.service"])
    assert set(got["web-and-db"]["jails"]) == {"nginx-limit-req", "opsbook-nginx-scan"}
    # the scanner jail's filter comes with it, as data the fail2ban role writes (the patterns escaped for fail2ban)
    scan = got["web-and-db"]["filters"]["opsbook-nginx-scan"]
    assert set(got["web-and-db"]["filters"]) == {"opsbook-nginx-scan"}
    assert scan["scan_paths"].startswith("(?:\\.env|") and len(scan["failregex"]) == 2
    assert [(c["name"], c["paths"]) for c in got["web-and-db"]["rotations"]] == [
        ("opsbook-nginx", ["/var/log/nginx/*.log"])]
    # nothing of a role the host doesn't run
    assert [r["comment"] for r in got["db-only"]["rules"]] == ["postgresql from the app hosts only"]
    assert (got["db-only"]["jails"], got["db-only"]["filters"], got["db-only"]["rotations"]) == ({}, {}, [])
    assert got["store"] == {"rules": [], "jails": {}, "filters": {}, "rotations": []}
    # the inventory overrides the publishing role's variable
    assert got["web-overridden"]["rules"] == OFFICE


def test_with_a_monitoring_host_every_host_opens_its_exporter_to_it_alone(tmp_path: Path) -> None:
    res = play(tmp_path, collect_play(), {
        "web1": (("web",), {"ansible_host": "10.0.0.11"}),
        "db1": (("db",), {"ansible_host": "10.0.0.21", "postgresql_app_hosts": ["10.0.0.11/32"]}),
        "store1": (("backup_store",), {"ansible_host": "10.0.0.31"}),
        "mon1": (("monitoring",), {"ansible_host": "10.0.0.51"}),
    })
    assert res.returncode == 0, res.stdout[-4000:]
    got = results(res)
    for host in ("web1", "db1", "store1", "mon1"):
        exporter = [r for r in got[host]["rules"] if r["comment"] == "node exporter from the monitoring hosts only"]
        assert [(r["ports"], r["sources"], r.get("units", [])) for r in exporter] == [
            ([9100], ["10.0.0.51/32"], [])], (host, got[host]["rules"])


def test_no_role_writes_into_fail2bans_configuration() -> None:
    """A role that needs a jail or a filter publishes it (<role>__fail2ban_jails, _filters); only the fail2ban role
    writes /etc/fail2ban and reloads fail2ban (nginx wrote its filter and reloaded fail2ban itself before)."""
    found = [f"{f.relative_to(ROOT)}:{n}" for f in sorted(ROOT.glob("roles/*/*/*.yml"))
             if f.parts[-3] != "fail2ban" and f.parts[-2] in ("tasks", "handlers", "vars")
             for n, line in enumerate(f.read_text().splitlines(), 1)
             if not line.lstrip().startswith("#") and ("/etc/fail2ban" in line or "fail2ban-client" in line
                                                       or "name: fail2ban" in line)]
    assert found == []


# ------------------------------------------------------------------ the inventory only overrides

# variables through which an inventory would copy what a role publishes
COPIES = ("firewall_rules", "firewall_allowed_tcp_ports", "fail2ban_jails", "fail2ban_extra_jails", "logrotate_configs")
# a role's published variables: an inventory may override them, but these two inventories need not
PUBLISHED = ("__firewall_rules", "__fail2ban_jails", "__fail2ban_filters", "__logrotate_configs")


@pytest.mark.parametrize("inventory", ["example", "lab"])
def test_inventories_copy_no_rule_jail_or_rotation(inventory: str) -> None:
    found = []
    for f in sorted((ROOT / "inventories" / inventory / "group_vars").rglob("*.yml")):
        if f.name == "vault.yml":
            continue
        for name in yaml.safe_load(f.read_text()) or {}:
            if name.startswith(COPIES) or name.endswith(PUBLISHED):
                found.append(f"{f.relative_to(ROOT)}: {name}")
    assert found == []


# ------------------------------------------------------------------ collections

FQCN = re.compile(r"\b((?:ansible\.(?:posix|utils|netcommon)|community\.[a-z_]+|containers\.[a-z_]+))\.[a-z_]+")


def used_collections(*paths: Path) -> set[str]:
    return {m.group(1) for p in paths for f in p.rglob("*") if f.is_file() and f.suffix in (".yml", ".yaml", ".j2")
            for m in FQCN.finditer(f.read_text())}


def test_requirements_pin_every_collection_used_at_the_installed_version() -> None:
    import ansible_collections  # type: ignore[import-untyped]  # namespace package of the ansible distribution

    pinned = {c["name"]: c["version"] for c in
              yaml.safe_load((ROOT / "collections" / "requirements.yml").read_text())["collections"]}
    used = used_collections(ROOT / "roles", ROOT / "playbooks") | set(FQCN.findall((ROOT / "ansible.cfg").read_text()))
    assert set(pinned) == used
    base = Path(ansible_collections.__path__[0])
    for name, pin in pinned.items():
        manifest = json.loads((base / name.replace(".", "/") / "MANIFEST.json").read_text())
        assert manifest["collection_info"]["version"] == pin, f"{name}: pinned {pin}, installed different"


@pytest.mark.parametrize("role", sorted(p.parent.parent.name for p in (ROOT / "roles").glob("*/meta/main.yml")))
def test_each_role_names_the_collections_it_uses(role: str) -> None:
    meta = yaml.safe_load((ROOT / "roles" / role / "meta" / "main.yml").read_text())
    assert sorted(meta.get("collections", ["missing"])) == sorted(used_collections(ROOT / "roles" / role))
