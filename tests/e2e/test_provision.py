"""End to end: `opsbook provision` on a fresh lab host, then what a hardened host must show from outside."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import opsbook.lab.portscan
from opsbook import lab
from tests.e2e.conftest import FAST, ROOT, LabEnv, last_report, outcome, run_opsbook

PORTSCAN = Path(opsbook.lab.portscan.__file__)


@pytest.fixture(scope="module")
def provisioned(web_lab: LabEnv) -> LabEnv:
    res = web_lab.opsbook("provision")
    assert res.returncode == 0, f"first provision failed:\n{outcome(res)}"
    report = last_report("provision", "e2e-web")
    assert report["hosts"]["e2e-web"]["changed"] > 0  # type: ignore[index]
    return web_lab


def changed(report: dict[str, object]) -> dict[str, int]:
    return {h: t["changed"] for h, t in report["hosts"].items()}  # type: ignore[attr-defined]


def test_second_run_changes_nothing(provisioned: LabEnv) -> None:
    res = provisioned.opsbook("provision")
    assert res.returncode == 0, res.stderr
    assert changed(last_report("provision", "e2e-web")) == {"e2e-web": 0}


def test_check_mode_on_a_converged_host_changes_nothing(provisioned: LabEnv) -> None:
    res = provisioned.opsbook("provision", "--check")
    assert res.returncode == 0, res.stderr
    report = last_report("provision", "e2e-web")
    assert report["check"] is True
    assert changed(report) == {"e2e-web": 0}


def test_only_ssh_answers_from_a_second_host(provisioned: LabEnv) -> None:
    # something listening on a high port that the firewall must hide
    provisioned.ssh("e2e-web", "systemd-run --unit=e2e-listener --collect python3 -m http.server 8080 "
                    "|| systemctl is-active e2e-listener")
    provisioned.ssh("e2e-web", "for i in $(seq 50); do python3 -c \"import socket;"
                    "socket.create_connection(('127.0.0.1',8080),1)\" 2>/dev/null && exit 0; sleep 0.2; done; exit 1")
    try:
        out = subprocess.run(
            ["ip", "netns", "exec", provisioned.hosts["e2e-client"].netns, sys.executable, str(PORTSCAN),
             provisioned.ip("e2e-web"), "1-1024,3000,5432,8000,8080,8443,9090"],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout
    finally:
        provisioned.ssh("e2e-web", "systemctl stop e2e-listener", check=False)
    # a web host: SSH, and nginx on 80/443 (the rule nginx publishes, nginx__firewall_rules); nothing else
    assert json.loads(out) == [22, 80, 443]


def test_web_host_serves_https_with_a_certificate_from_the_acme_server(provisioned: LabEnv) -> None:
    import socket
    import ssl
    import urllib.request

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    name = "e2e-web.opsbook.test"
    ip = provisioned.ip("e2e-web")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the issuer is checked below; Pebble's root changes at every restart
    with socket.create_connection((ip, 443), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert "Pebble" in str(issuer), f"not issued by the lab's ACME server: {issuer}"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == [name]

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    req = urllib.request.Request(f"http://{ip}/some/path?q=1", headers={"Host": name})
    try:
        urllib.request.build_opener(NoRedirect).open(req, timeout=10)
        raise AssertionError("http did not redirect")
    except urllib.error.HTTPError as e:
        assert e.code == 308
        assert e.headers["Location"] == f"https://{name}/some/path?q=1"


def test_bad_input_stops_before_any_change(provisioned: LabEnv) -> None:
    before = provisioned.ssh("e2e-web", "sha256sum /etc/nftables.conf /etc/ssh/sshd_config").stdout
    # a valid change that would be applied if the run got that far, beside a wrongly shaped variable
    res = provisioned.opsbook("provision", "-e", "firewall_allowed_tcp_ports='8080,9090'")
    assert res.returncode == 2
    output = res.stdout + res.stderr
    assert "firewall_allowed_tcp_ports" in output
    report = last_report("provision", "e2e-web")
    assert changed(report) == {"e2e-web": 0}
    assert all("preflight" in f["task"].lower() or "variables" in f["task"].lower()  # type: ignore[index]
               for f in report["failures"])  # type: ignore[attr-defined]
    res = provisioned.opsbook("provision", "-e", "fail2ban_maxretry=lots")
    assert res.returncode == 2
    assert "fail2ban_maxretry" in res.stdout + res.stderr
    assert changed(last_report("provision", "e2e-web")) == {"e2e-web": 0}
    assert provisioned.ssh("e2e-web", "sha256sum /etc/nftables.conf /etc/ssh/sshd_config").stdout == before


# ---------------------------------------------------------------- the example inventory (issue 11 item 7)
# Last in this module: it re-provisions e2e-web with inventories/example's settings (root login off), so it reuses
# this lab instead of booting one (cost: one provisioning run that adds PostgreSQL and the backup store, about
# 3-5 min here; the host is also in db and backup_store, so the store's receive account exists on it).

LAB_KEY = lab.ssh_key()


def lab_only_vars() -> dict[str, object]:
    """What a production inventory would not say, for a lab host: its SSH key and known_hosts, the lab's ACME server
    and CA, the controller never banned, and the FAST settings."""
    return {
        "ansible_ssh_private_key_file": str(LAB_KEY),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={lab.known_hosts()} -o StrictHostKeyChecking=yes",
        "acme_directory_url": "https://10.213.0.1:14000/dir",
        "acme_ca_bundle": "{{ lookup('ansible.builtin.file', '/var/lib/opsbook/lab/pebble/ca.pem') }}",
        "fail2ban_ignoreip": ["10.213.0.1/32"],
        **FAST,
    }


def example_inventory(tmp_path: Path, env: LabEnv) -> Path:
    """inventories/example with the lab's addresses and ACME server, test keys and test secrets (no vault)."""
    inv = tmp_path / "example"
    shutil.copytree(ROOT / "inventories" / "example", inv)
    # host variables: they beat the example's group_vars (addresses, the lab's ACME server and SSH trust; the lab's
    # key is the admin's key, in the example placeholder's place below)
    host = {"ansible_host": env.ip("e2e-web"), "nginx_server_names": ["e2e-web.opsbook.test"], **lab_only_vars()}
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
        "web": {"hosts": {"e2e-web": host}}, "db": {"hosts": {"e2e-web": None}},
        "backup_store": {"hosts": {"e2e-web": None}}}}}))
    common = inv / "group_vars" / "all" / "common.yml"
    text = common.read_text()
    keys = re.findall(r"ssh-ed25519 \S+ \S+", text)
    assert len(keys) == 2, keys  # admin's, alice's
    text = text.replace(keys[0], LAB_KEY.with_suffix(".pub").read_text().strip())
    alice = tmp_path / "alice_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(alice)], check=True)
    common.write_text(text.replace(keys[1], alice.with_suffix(".pub").read_text().strip()))
    pw_hash = subprocess.run(["openssl", "passwd", "-6", "test-alice"], capture_output=True, text=True,
                             check=True).stdout.strip()
    # a test age key pair in the example key's place (the recipient in group_vars, the identity in the vault)
    age = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True)
    identity = next(line for line in age.stdout.splitlines() if line.startswith("AGE-SECRET-KEY-1"))
    recipient = subprocess.run(["age-keygen", "-y"], input=identity + "\n", capture_output=True, text=True,
                               check=True).stdout.strip()
    backup = inv / "group_vars" / "db" / "backup.yml"
    example_keys = re.findall(r"age1[0-9a-z]+", backup.read_text())
    assert len(example_keys) == 1, example_keys
    backup.write_text(backup.read_text().replace(example_keys[0], recipient))
    secrets = {"vault_alice_password_hash": pw_hash, "vault_postgresql_app_password": "test-db-password",
               "vault_app_secret_key": "test-secret-key", "vault_backup_age_identity": identity}
    named = {m for f in (inv / "group_vars").rglob("*.yml") if f.name != "vault.yml"
             for m in re.findall(r"\bvault_\w+", f.read_text())}
    assert named <= set(secrets), f"the example names vault variables this test does not set: {named - set(secrets)}"
    (inv / "group_vars" / "all" / "vault.yml").write_text(yaml.safe_dump(secrets))
    return inv


def ssh_as(env: LabEnv, user: str, key: Path, cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={lab.known_hosts()}",
                           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                           f"{user}@{env.ip('e2e-web')}", cmd], capture_output=True, text=True, timeout=60)


def cloud_admin(env: LabEnv) -> None:
    """A cloud image's first user: 'admin' with the operator's key and sudo through sudoers, not in group sudo."""
    env.ssh("e2e-web", "id admin >/dev/null 2>&1 || useradd -m -s /bin/bash admin; "
            "install -d -o admin -g admin -m 0700 ~admin/.ssh; "
            f"echo '{LAB_KEY.with_suffix('.pub').read_text().strip()}' > ~admin/.ssh/authorized_keys; "
            "chown admin:admin ~admin/.ssh/authorized_keys; "
            "echo 'admin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-init-users; "
            "chmod 0440 /etc/sudoers.d/90-cloud-init-users")


def test_example_inventory_provisions_and_its_accounts_log_in(provisioned: LabEnv, tmp_path: Path) -> None:
    cloud_admin(provisioned)
    inv = example_inventory(tmp_path, provisioned)
    res = run_opsbook("provision", "-i", str(inv))
    assert res.returncode == 0, f"provision with the example inventory failed:\n{outcome(res)}"

    # the admin users log in (the connection user and one that only the example names), root does not
    admin = ssh_as(provisioned, "admin", LAB_KEY, "id -un; sudo -n true && echo sudo-ok")
    assert admin.returncode == 0 and admin.stdout.split() == ["admin", "sudo-ok"], admin.stderr
    alice = ssh_as(provisioned, "alice", tmp_path / "alice_key", "id -un")
    assert alice.returncode == 0 and alice.stdout.strip() == "alice", alice.stderr
    root = ssh_as(provisioned, "root", LAB_KEY, "true")
    assert root.returncode == 255 and "Permission denied" in root.stderr

    # the backup account logs in with the db host's key, from the db host (its key is bound to that address), and
    # gets only its forced receive command
    ip = provisioned.ip("e2e-web")
    backup = ssh_as(provisioned, "admin", LAB_KEY,
                    "sudo -n ssh -i /etc/opsbook/backup/id_ed25519 -o BatchMode=yes -o IdentitiesOnly=yes "
                    f"-o UserKnownHostsFile=/etc/opsbook/backup/known_hosts opsbook-backup@{ip} id")
    assert "Permission denied" not in backup.stderr and backup.returncode != 255, backup.stderr
    assert "uid=" not in backup.stdout and "opsbook-backup-receive" in backup.stderr, backup.stdout + backup.stderr
    journal = ssh_as(provisioned, "admin", LAB_KEY,
                     "sudo -n journalctl -u ssh --no-pager -o cat | grep -c 'Accepted publickey for opsbook-backup'")
    assert int(journal.stdout.strip() or 0) >= 1, journal.stdout + journal.stderr

    # issue 12, acceptance 2: the example names no rule, jail or rotation, yet the roles' logs are under rotation.
    # nginx's files by the config nginx publishes (Debian's is gone: one config per log), checked by logrotate itself
    rotation = ssh_as(provisioned, "admin", LAB_KEY, "sudo -n logrotate -d /etc/logrotate.conf 2>&1; "
                      "ls /etc/logrotate.d")
    # (logrotate -d names a file it includes from /etc/logrotate.d by its bare name)
    assert "reading config file opsbook-nginx" in rotation.stdout, rotation.stdout[-3000:]
    for log in ("/var/log/nginx/access.log", "/var/log/nginx/error.log"):
        assert f"considering log {log}" in rotation.stdout, rotation.stdout[-3000:]
    assert "error:" not in rotation.stdout, rotation.stdout[-3000:]
    assert "nginx" not in rotation.stdout.split(), "Debian's /etc/logrotate.d/nginx is still there"
    # the backups (and the app's units, when deployed) write no log file: they log to the journal, which journald
    # rotates within common's caps
    backup = ssh_as(provisioned, "admin", LAB_KEY,
                    "systemctl show -p StandardOutput --value opsbook-backup@app.service; "
                    "systemd-analyze cat-config systemd/journald.conf | grep -E '^(SystemMaxUse|SystemMaxFileSize)='")
    lines = backup.stdout.split()
    assert lines[0] == "journal" and any(x.startswith("SystemMaxUse=") for x in lines), backup.stdout + backup.stderr
    # and the firewall opened what nginx and postgresql publish, with nothing in the inventory
    rules = ssh_as(provisioned, "admin", LAB_KEY, "sudo -n nft list table inet opsbook")
    assert "HTTP (ACME challenges, redirect) and HTTPS" in rules.stdout, rules.stdout
    assert "postgresql from the app hosts only" in rules.stdout, rules.stdout
    jails = ssh_as(provisioned, "admin", LAB_KEY, "sudo -n fail2ban-client status")
    assert "nginx-limit-req" in jails.stdout and "opsbook-nginx-scan" in jails.stdout, jails.stdout + jails.stderr


WHO_AND_TLS = "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def test_an_inventory_from_opsbook_init_provisions_the_host(provisioned: LabEnv, tmp_path: Path) -> None:
    """issue 12: `opsbook init` scaffolds what a newcomer provisions with (docs/getting-started.md). Here the lab host
    stands in for their VM: the scaffold as written, plus a host_vars file with what only the lab needs (its ACME
    server and CA, its SSH key and known_hosts)."""
    # the connection user the scaffold names (as after the first run as root, or a cloud image's first user): after
    # the example inventory's run above it exists and root can no longer log in
    if ssh_as(provisioned, "admin", LAB_KEY, "sudo -n true").returncode != 0:
        cloud_admin(provisioned)
    inv, password_file = tmp_path / "mine", tmp_path / "vault-pass"
    res = run_opsbook("init", str(inv), "--web", f"e2e-web={provisioned.ip('e2e-web')}",
                      "--domain", "e2e-web.opsbook.test", "--email", "ops@opsbook.test",
                      "--admin-key", str(LAB_KEY.with_suffix(".pub")), "--vault-password-file", str(password_file))
    assert res.returncode == 0, outcome(res)
    (inv / "host_vars").mkdir()
    (inv / "host_vars" / "e2e-web.yml").write_text(yaml.safe_dump(lab_only_vars()))
    res = run_opsbook("provision", "-i", str(inv), env={"ANSIBLE_VAULT_PASSWORD_FILE": str(password_file)})
    assert res.returncode == 0, f"provision with the scaffold failed:\n{outcome(res)}"
    # the scaffold's own values reached the host: the backup key it generated (the recipient), the database
    # password it generated (the app account logs in with it, over TLS, as the app would), the admin account
    recipient = yaml.safe_load((inv / "group_vars" / "db" / "backup.yml").read_text())["backup_age_recipients"]
    config = ssh_as(provisioned, "admin", LAB_KEY, "sudo -n cat /etc/opsbook/backup/app.json")
    assert config.returncode == 0 and json.loads(config.stdout)["store"]["age_recipients"] == recipient, config.stderr
    vault = subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "view", "--vault-password-file",
                            str(password_file), str(inv / "group_vars" / "all" / "vault.yml")],
                           capture_output=True, text=True, check=True).stdout
    password = yaml.safe_load(vault)["vault_postgresql_app_password"]
    ip = provisioned.ip("e2e-web")
    conninfo = f"host={ip} dbname=app user=app sslmode=verify-full sslrootcert=/etc/opsbook/postgresql-ca.crt"
    login = ssh_as(provisioned, "admin", LAB_KEY, f"PGPASSWORD='{password}' psql '{conninfo}' -Atc '{WHO_AND_TLS}'")
    assert login.returncode == 0 and login.stdout.strip() == "app|t", login.stdout + login.stderr
    root = ssh_as(provisioned, "root", LAB_KEY, "true")
    assert root.returncode == 255 and "Permission denied" in root.stderr
