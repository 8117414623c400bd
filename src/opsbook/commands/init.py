"""opsbook init DIR: scaffold an inventory for your own hosts (docs/getting-started.md).

It writes inventories/example's shape with your values: the groups web, db and backup_store (one VM may be in all
three), the admin account with your public key, the ACME e-mail and names, and an ansible-vault file with generated
secrets (the database password, the app's secret key, the backup age identity, whose public half goes to
group_vars/db/backup.yml). The vault password is a new 0600 file outside DIR (DIR may go into git; the password
must not). Every value is checked here and written as YAML data: nothing you type is ever a template.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from opsbook import options

HOST_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})$")
DNS_NAME = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")
EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
SSH_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com) "
                     r"[A-Za-z0-9+/]+={0,3}(?: [A-Za-z0-9@._+-]{0,100})?$")

HEADER = "# Written by `opsbook init`; edit freely. Variables: docs/variables.md.\n"

# Files whose values are Ansible expressions, written as they are (they name no user input)
APP_HEAD = """# The site and the app behind it. nginx proxies to the live colour through live.sock
# (the app role checks this).
"""
APP_YML = """acme_domains: "{{ nginx_server_names }}"
nginx_upstream_servers: ["unix:/srv/app/live.sock"]

# the example app, to see a deploy work first; your own: app_source_dir (a Python project) and app_wsgi
# (module:object), or app_kind: node with app_node_entry (docs/getting-started.md)
app_source_dir: "{{ playbook_dir }}/../examples/app"
app_wsgi: opsbook_example_app.wsgi:application
app_migrate_command: opsbook-example-app-migrate
app_env:
  APP_ENV: production
# secrets from the vault (vault.yml): never in clear text. The database over TLS only, its certificate checked
# against the db host's CA (provision copies it to /etc/opsbook/postgresql-ca.crt).
app_secret_env:
  DATABASE_URL: >-
    postgresql://app:{{ vault_postgresql_app_password }}@{{ hostvars[groups['db'][0]]['ansible_host'] }}:5432/app{{
    '?sslmode=verify-full&sslrootcert=/etc/opsbook/postgresql-ca.crt' }}
  SECRET_KEY: "{{ vault_app_secret_key }}"
"""

POSTGRESQL_YML = """postgresql_app_database: app
postgresql_app_user: app
# from the vault: never in clear text
postgresql_app_password: "{{ vault_postgresql_app_password }}"
postgresql_listen_addresses: [localhost, "{{ ansible_host }}"]
postgresql_app_hosts: >-
  {{ groups['web'] | map('extract', hostvars, 'ansible_host') | map('regex_replace', '$', '/32') | list }}
backup_databases:
  - name: app
    smoke_sql: SELECT count(*) >= 0 FROM pg_tables
backup_on_calendar: "*-*-* 02:30:00"
backup_retention: {days: 7, weeks: 4, months: 6}
"""

BACKUP_YML = """# Off-host copies leave the database hosts encrypted with age to this public key; the private key is
# in the vault (vault_backup_age_identity) and only the DR drill uses it. Keep an offline copy of the private key, away
# from the backup store: without it the copies cannot be read (docs/getting-started.md says how).
"""


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "init",
        help="scaffold an inventory for your own hosts: groups, admin key, ACME names, a vault of generated secrets",
        formatter_class=formatter,
        parents=[options.common()],
        description=(
            "Write a new inventory DIR in inventories/example's shape with your values and a vault of generated\n"
            "secrets. HOST is NAME or NAME=ADDRESS; --db and --store default to the --web host (one VM in every\n"
            "group; then the backups are not off-host). The vault password goes to a new 0600 file outside DIR.\n"
            "Nothing is overwritten. Then: docs/getting-started.md."
        ),
        epilog=(
            "examples:\n"
            "  opsbook init inventories/prod --web vm1=203.0.113.10 --domain shop.example.com \\\n"
            "      --email ops@example.com --admin-key ~/.ssh/id_ed25519.pub\n"
            "  opsbook init inventories/prod --web web1=203.0.113.10 --db db1=203.0.113.20 \\\n"
            "      --store backup1=203.0.113.30 --domain shop.example.com --email ops@example.com \\\n"
            "      --admin-key ~/.ssh/id_ed25519.pub --vault-password-file ~/.opsbook-vault-prod\n"
            "\nexit codes: 0 written, 1 a bad value or DIR exists (nothing written)"
        ),
    )
    p.add_argument("directory", metavar="DIR", help="the new inventory directory (must not exist, or be empty)")
    p.add_argument("--web", required=True, metavar="HOST", help="the web host: NAME or NAME=ADDRESS")
    p.add_argument("--db", metavar="HOST", help="the database host (default: the web host)")
    p.add_argument("--store", metavar="HOST", help="the backup store (default: the web host)")
    p.add_argument("--domain", required=True, action="append", metavar="NAME",
                   help="a name the site answers to and gets a certificate for (repeatable; DNS must point at it)")
    p.add_argument("--email", required=True, help="the ACME account's and unattended-upgrades' e-mail address")
    p.add_argument("--admin-key", required=True, type=Path, metavar="FILE",
                   help="the admin's SSH public key file (e.g. ~/.ssh/id_ed25519.pub)")
    p.add_argument("--admin-user", default="admin", metavar="NAME",
                   help="the admin account opsbook creates and then connects as (default: admin)")
    p.add_argument("--vault-password-file", type=Path, metavar="FILE",
                   help="where the new vault password goes (default: ~/.config/opsbook/vault-<DIR's name>); "
                        "an existing file is used as it is")
    p.set_defaults(func=run)


def _host(option: str, value: str) -> tuple[str, str]:
    name, _, address = value.partition("=")
    if not HOST_NAME.match(name) or name.endswith((".", "-")):
        raise SystemExit(f"opsbook init: {option} {value!r}: NAME must be a host name (letters, digits, '.', '-')")
    if address:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if not DNS_NAME.match(address.lower()):
                raise SystemExit(f"opsbook init: {option} {value!r}: ADDRESS must be an IP address or a DNS name") \
                    from None
    return name, address or name


def _check(args: argparse.Namespace) -> dict[str, Any]:
    """Every value, checked before anything is written: a bad one is named, with its option."""
    web = _host("--web", args.web)
    db = _host("--db", args.db) if args.db else web
    store = _host("--store", args.store) if args.store else web
    addresses: dict[str, str] = {}
    for name, address in (web, db, store):
        if addresses.setdefault(name, address) != address:
            raise SystemExit(f"opsbook init: host {name} is given two addresses: {addresses[name]} and {address}")
    for name in args.domain:
        if not DNS_NAME.match(name):
            raise SystemExit(f"opsbook init: --domain {name!r} is not a DNS name (lowercase, with a dot)")
    if not EMAIL.match(args.email):
        raise SystemExit(f"opsbook init: --email {args.email!r} is not an e-mail address")
    if not USER.match(args.admin_user) or args.admin_user == "root":
        raise SystemExit(f"opsbook init: --admin-user {args.admin_user!r} is not a user name (not root)")
    try:
        key = args.admin_key.expanduser().read_text().strip()
    except OSError as exc:
        raise SystemExit(f"opsbook init: --admin-key {args.admin_key}: {exc.strerror}") from None
    if len(key.splitlines()) != 1 or not SSH_KEY.match(key):
        raise SystemExit(f"opsbook init: --admin-key {args.admin_key}: not one SSH public key line "
                         "(type, base64 key, optional plain comment); a private key is never what goes here")
    target = Path(args.directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SystemExit(f"opsbook init: {target} exists and is not an empty directory: nothing is overwritten")
    password_file = (args.vault_password_file or Path("~/.config/opsbook") / f"vault-{target.resolve().name}")
    password_file = password_file.expanduser()
    if password_file.resolve().is_relative_to(target.resolve()):
        raise SystemExit(f"opsbook init: --vault-password-file {password_file} is inside {target}: keep the vault "
                         "password out of the inventory (it may go into git)")
    for tool in ("age-keygen", "ansible-vault"):
        if not _which(tool):
            raise SystemExit(f"opsbook init: {tool} not found (apt install age; ansible-vault comes with opsbook)")
    return {"target": target, "web": web, "db": db, "store": store, "key": key, "password_file": password_file}


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)


def _age_key_pair() -> tuple[str, str]:
    """A new age key pair from age-keygen: (identity, recipient). The identity never touches the disk."""
    out = subprocess.run([str(_which("age-keygen"))], capture_output=True, text=True, check=True).stdout
    identity = next(line for line in out.splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    recipient = subprocess.run([str(_which("age-keygen")), "-y"], input=identity + "\n", capture_output=True,
                               text=True, check=True).stdout.strip()
    return identity, recipient


def _password_file(path: Path) -> tuple[Path, bool]:
    """The vault password file: an existing one as it is (it must be the operator's alone), else a new 0600 one."""
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise SystemExit(f"opsbook init: {path} is readable by others (chmod 0600 it first)")
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path, True


def _inventory(checked: dict[str, Any], args: argparse.Namespace, recipient: str) -> dict[str, str]:
    """The inventory's files (relative path: text), all but the vault."""
    seen: set[str] = set()

    def group(name_address: tuple[str, str]) -> dict[str, Any]:
        name, address = name_address
        first = name not in seen
        seen.add(name)
        return {"hosts": {name: {"ansible_host": address} if first else None}}

    hosts = {"all": {"children": {"web": group(checked["web"]), "db": group(checked["db"]),
                                  "backup_store": group(checked["store"])}}}
    user = args.admin_user
    common = {"common_timezone": "Etc/UTC", "common_unattended_upgrades_mail": args.email,
              "common_admin_users": [{"name": user, "ssh_keys": [checked["key"]], "sudo": "nopasswd"}]}
    site = {"nginx_server_names": list(args.domain), "acme_email": args.email}
    return {
        "hosts.yml": HEADER + _dump(hosts),
        "group_vars/all/common.yml": HEADER + _dump(common),
        # opsbook connects as the admin account it creates; the first run, as root: -e ansible_user=root
        "group_vars/all/connection.yml": HEADER + _dump({"ansible_user": user, "ansible_become": True}),
        "group_vars/all/security.yml": HEADER + _dump({"sshd_permit_root_login": "no", "sshd_allow_groups": ["sudo"]}),
        "group_vars/web/app.yml": HEADER + APP_HEAD + _dump(site) + APP_YML,
        "group_vars/db/postgresql.yml": HEADER + POSTGRESQL_YML,
        "group_vars/db/backup.yml": HEADER + BACKUP_YML + _dump({
            "backup_age_recipients": [recipient],
            "backup_age_identity": "{{ vault_backup_age_identity }}"}),
    }


def run(args: argparse.Namespace) -> int:
    checked = _check(args)
    target: Path = checked["target"]
    identity, recipient = _age_key_pair()
    files = _inventory(checked, args, recipient)
    password_file, new_password = _password_file(checked["password_file"])
    vault = _dump({"vault_postgresql_app_password": secrets.token_urlsafe(24),
                   "vault_app_secret_key": secrets.token_urlsafe(48),
                   "vault_backup_age_identity": identity})
    # everything goes to a sibling directory first, then one rename: DIR is complete or absent
    staging = target.parent / f".{target.name}.opsbook-init-{os.getpid()}"
    try:
        for rel, text in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        # the plaintext goes to ansible-vault on its stdin, never to a file
        subprocess.run([str(_which("ansible-vault")), "encrypt", "--vault-password-file", str(password_file),
                        "--output", str(staging / "group_vars/all/vault.yml")],
                       input="---\n# Secrets: ansible-vault edit this file\n" + vault, text=True,
                       capture_output=True, check=True)
        if target.exists():
            target.rmdir()  # empty (checked)
        staging.rename(target)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise SystemExit(f"opsbook init: ansible-vault encrypt failed: {exc.stderr.strip()}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not args.quiet:
        same = {checked["web"][0], checked["db"][0]} & {checked["store"][0]}
        print(f"wrote {target}: {', '.join(sorted(files))}, group_vars/all/vault.yml (encrypted)")
        print(f"vault password: {password_file} ({'new, 0600' if new_password else 'existing'}); keep a copy "
              "offline, and one of the backup key: ansible-vault view it, vault_backup_age_identity")
        if same:
            print(f"note: the backup store {checked['store'][0]} is also a web or db host: its copies are not "
                  "off-host; add --store for a separate machine before real data goes in")
        print("next (docs/getting-started.md):\n"
              f"  export ANSIBLE_VAULT_PASSWORD_FILE={password_file}\n"
              f"  opsbook provision -i {target} -e ansible_user=root     the first run, as root\n"
              f"  opsbook deploy 1.0.0 -i {target}")
    return 0
