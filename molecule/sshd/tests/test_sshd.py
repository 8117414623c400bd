"""Verify the sshd role from the controller: ssh-audit policy, refused passwords, working keys, reload not restart."""

import re
import subprocess
import time

import pytest

LAB_KEY = "/var/lib/opsbook/lab/ssh/id_ed25519"
LAB_KNOWN_HOSTS = "/var/lib/opsbook/lab/ssh/known_hosts"
TEST_USER = "moltest"
TEST_PASSWORD = "molecule-Passw0rd"  # noqa: S105 - lab-only password set by converge.yml
NO_HOST_KEY_CHECK = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]


def run(argv, timeout=120):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def address(host):
    return host.ansible.get_variables()["ansible_host"]


def hardened_debian12_policy():
    """The highest version of ssh-audit's built-in "Hardened Debian 12" server policy."""
    listing = run(["ssh-audit", "-L"]).stdout
    versions = [int(v) for v in re.findall(r'"Hardened Debian 12 \(version (\d+)\)"', listing)]
    assert versions, listing
    assert max(versions) >= 3
    return f"Hardened Debian 12 (version {max(versions)})"


def test_ssh_audit_hardened_debian12_policy_passes(address):
    policy = hardened_debian12_policy()
    result = run(["ssh-audit", "-P", policy, address], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Passed" in result.stdout, result.stdout


@pytest.mark.parametrize("user", [TEST_USER, "root"])
@pytest.mark.parametrize("method", ["password", "keyboard-interactive"])
def test_password_logins_are_refused(address, user, method):
    # the user's real password: the server must not even offer a password method
    result = run(
        ["sshpass", "-p", TEST_PASSWORD, "ssh", *NO_HOST_KEY_CHECK, "-o", "ConnectTimeout=10",
         "-o", f"PreferredAuthentications={method}", "-o", "PubkeyAuthentication=no",
         "-o", "NumberOfPasswordPrompts=1", f"{user}@{address}", "true"],
        timeout=60,
    )
    assert result.returncode != 0
    assert "Permission denied (publickey)." in result.stderr, result.stderr


def test_key_login_works_with_pinned_host_key(address):
    result = run(
        ["ssh", "-i", LAB_KEY, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
         "-o", f"UserKnownHostsFile={LAB_KNOWN_HOSTS}", "-o", "StrictHostKeyChecking=yes",
         f"root@{address}", "echo key-login-ok"],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "key-login-ok"


def test_effective_settings(host):
    settings = {}
    for line in host.check_output("/usr/sbin/sshd -T").splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, value)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["authenticationmethods"] == "publickey"
    assert settings["permitrootlogin"] == "without-password"  # sshd -T spelling of prohibit-password
    assert settings["maxauthtries"] == "3"
    assert settings["logingracetime"] == "30"
    assert settings["clientaliveinterval"] == "300"
    assert settings["clientalivecountmax"] == "2"
    assert settings["x11forwarding"] == "no"
    assert settings["loglevel"] == "VERBOSE"


def test_no_small_moduli(host):
    sizes = [int(line.split()[4]) for line in host.file("/etc/ssh/moduli").content_string.splitlines()
             if line and not line.startswith("#")]
    assert sizes
    assert min(sizes) >= 3071  # the file stores the bit length minus one


def test_host_keys(host):
    for kind in ("ecdsa", "dsa"):
        assert not host.file(f"/etc/ssh/ssh_host_{kind}_key").exists
        assert not host.file(f"/etc/ssh/ssh_host_{kind}_key.pub").exists
    assert host.check_output("ssh-keygen -l -f /etc/ssh/ssh_host_rsa_key.pub").split()[0] == "4096"
    private = host.file("/etc/ssh/ssh_host_rsa_key")
    assert private.mode == 0o600
    assert private.user == "root"


def test_config_applied_by_reload_not_restart(host):
    """sshd's main process is older than the config it serves: the change was applied by SIGHUP, not a restart."""
    main_pid = host.check_output("systemctl show -p MainPID --value ssh")
    assert main_pid != "0"
    age = int(host.check_output(f"ps -o etimes= -p {main_pid}"))
    now = int(host.check_output("date +%s"))
    config_mtime = host.file("/etc/ssh/sshd_config").mtime.timestamp()
    assert now - age < config_mtime


def test_service_running(host):
    service = host.service("ssh")
    assert service.is_running
    assert service.is_enabled
    deadline = time.monotonic() + 30
    while not host.socket("tcp://0.0.0.0:22").is_listening:
        assert time.monotonic() < deadline
        time.sleep(1)
