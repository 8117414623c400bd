"""Verify the common role by its effects on the host, seen from the controller and from inside."""

import os
import re
import subprocess
import time

import pytest

LAB_KEY = "/var/lib/opsbook/lab/ssh/id_ed25519"
LAB_KNOWN_HOSTS = "/var/lib/opsbook/lab/ssh/known_hosts"
SUDO_PASSWORD = "molecule-sudo-pw"  # noqa: S105 - converge.yml's throwaway test password for opsdev
NETWORK_SYSCTLS = {
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.default.accept_source_route": "0",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.conf.default.log_martians": "1",
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.default.rp_filter": "1",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.default.accept_redirects": "0",
}
KERNEL_SYSCTLS = {
    "fs.protected_fifos": "2",
    "fs.suid_dumpable": "0",
    "kernel.kptr_restrict": "2",
    "kernel.unprivileged_bpf_disabled": "1",
}


def admin_key() -> str:
    return os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "admin_id_ed25519")


def address(host) -> str:
    return host.ansible.get_variables().get("ansible_host", host.backend.host)


def ssh(host, user: str, command: str, key: str | None = None, stdin: str | None = None, timeout: float = 60):
    """Run a command on the host as USER over a fresh SSH connection from the controller (key auth only)."""
    options = [
        "IdentitiesOnly=yes",
        "BatchMode=yes",
        "PasswordAuthentication=no",
        "ControlMaster=no",
        "ControlPath=none",
        f"UserKnownHostsFile={LAB_KNOWN_HOSTS}",
        "StrictHostKeyChecking=yes",
        "ConnectTimeout=15",
    ]
    argv = [
        "ssh",
        "-i",
        key or admin_key(),
        *[a for o in options for a in ("-o", o)],
        f"{user}@{address(host)}",
        command,
    ]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


def netns_sysctl(host, key: str) -> str:
    netns = f"olab-{host.backend.host}"
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-n", key], capture_output=True, text=True, check=True, timeout=30
    )
    return out.stdout.strip()


# --------------------------------------------------------------------------- admin users and sudo


def test_admin_logs_in_with_its_key_and_sudoes_without_password(host):
    res = ssh(host, "opsadmin", "id -un && sudo -n true && sudo -n id -u")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["opsadmin", "0"]


def test_admin_key_list_is_exclusive(host):
    # the lab's root key works for root but is not one of opsadmin's keys
    res = ssh(host, "opsadmin", "true", key=LAB_KEY)
    assert res.returncode == 255
    assert "Permission denied" in res.stderr


def test_password_sudo_user_needs_its_password(host):
    res = ssh(host, "opsdev", "sudo -n true")
    assert res.returncode != 0
    assert "password is required" in res.stderr
    wrong = ssh(host, "opsdev", "sudo -S -p '' true", stdin="not-the-password\n")
    assert wrong.returncode != 0
    right = ssh(host, "opsdev", "sudo -S -p '' id -u", stdin=SUDO_PASSWORD + "\n")
    assert right.returncode == 0, right.stderr
    assert right.stdout.strip() == "0"


def test_absent_user_does_not_exist(host):
    assert not host.user("opsgone").exists
    assert "opsgone" not in host.file("/etc/sudoers.d/90-opsbook-admins").content_string


def test_sudoers_is_valid_and_grants_what_was_asked(host):
    assert host.run("visudo -c").rc == 0
    assert host.file("/etc/sudoers.d/90-opsbook-admins").mode == 0o440
    assert "(ALL : ALL) NOPASSWD: ALL" in host.check_output("sudo -l -U opsadmin")
    opsdev = host.check_output("sudo -l -U opsdev")
    assert "(ALL : ALL) ALL" in opsdev
    assert "NOPASSWD" not in opsdev


def test_admin_password_never_expires(host):
    # a forced password change at login would lock out a user who only has a key
    assert "Password expires\t\t\t\t\t: never" in host.check_output("chage -l opsadmin")


def test_admin_login_session_limits(host):
    res = ssh(host, "opsadmin", "bash -lc 'ulimit -Hc; echo $TMOUT; readonly -p | grep -c TMOUT; echo $TMPDIR'")
    assert res.returncode == 0, res.stderr
    hard_core, tmout, readonly, tmpdir = res.stdout.split()
    assert hard_core == "0"
    assert tmout == "900"
    assert readonly == "1"
    uid = host.user("opsadmin").uid
    assert tmpdir == f"/tmp/user/{uid}"
    assert host.file(tmpdir).mode == 0o700


def test_new_home_directories_are_not_world_readable(host):
    # login.defs UMASK 027 -> useradd makes homes 0750
    assert host.file("/home/opsadmin").mode == 0o750


# --------------------------------------------------------------------------- sysctl


@pytest.mark.parametrize(("key", "value"), sorted(NETWORK_SYSCTLS.items()))
def test_network_sysctl_in_effect_in_the_hosts_netns(host, key, value):
    assert netns_sysctl(host, key) == value
    # the host sees the same value from inside
    assert host.check_output(f"sysctl -n {key}") == value


def test_sysctl_file_holds_kernel_wide_keys_too(host):
    content = host.file("/etc/sysctl.d/99-zz-opsbook-common.conf").content_string
    for key, value in {**NETWORK_SYSCTLS, **KERNEL_SYSCTLS}.items():
        assert re.search(rf"^{re.escape(key)} = {value}$", content, re.M), key


# --------------------------------------------------------------------------- upgrades


@pytest.mark.parametrize("timer", ["apt-daily.timer", "apt-daily-upgrade.timer"])
def test_apt_timers_enabled_and_running(host, timer):
    svc = host.service(timer)
    assert svc.is_enabled
    assert svc.is_running


def test_unattended_upgrades_runs_with_security_origins_only(host):
    periodic = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    assert 'APT::Periodic::Update-Package-Lists "1";' in periodic
    res = host.run("unattended-upgrade --dry-run --debug")
    assert res.rc == 0, res.stderr
    origins = re.search(r"Allowed origins are: (.*)", res.stdout + res.stderr)
    assert origins, res.stdout
    allowed = [o.strip() for o in origins.group(1).split(", ")]
    assert len(allowed) == 2
    assert all(o.startswith("origin=Debian,") and o.endswith(",label=Debian-Security") for o in allowed), allowed


def test_needrestart_lists_instead_of_restarting(host):
    res = host.run("needrestart -b")
    assert res.rc == 0
    assert "$nrconf{restart} = 'l';" in host.file("/etc/needrestart/conf.d/50-opsbook.conf").content_string


@pytest.mark.parametrize("pkg", ["openssl", "curl", "ca-certificates", "python3-apt", "unattended-upgrades", "sudo"])
def test_base_packages(host, pkg):
    assert host.package(pkg).is_installed


def test_no_pending_security_upgrades(host):
    res = host.run("apt-get -s -o Debug::NoLocking=1 upgrade")
    assert res.rc == 0
    assert not re.search(r"^Inst .*Debian-Security", res.stdout, re.M), res.stdout


# --------------------------------------------------------------------------- time


def test_timezone_in_effect(host):
    assert host.check_output("date +%Z") in ("CET", "CEST")


def test_timesyncd_enabled_with_the_servers(host):
    assert host.service("systemd-timesyncd").is_enabled
    config = host.check_output("systemd-analyze cat-config systemd/timesyncd.conf")
    assert "NTP=0.debian.pool.ntp.org 1.debian.pool.ntp.org" in config


# --------------------------------------------------------------------------- journald, core dumps


def test_journald_dropin_in_effect(host):
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline:
        out = host.check_output("journalctl -b -u systemd-journald -o cat --no-pager")
        lines = [x for x in out.splitlines() if x.startswith("System Journal")]
        line = lines[-1] if lines else ""
        if line:
            break
        time.sleep(1)
    # journald reports its limits when it starts; converge.yml sets SystemMaxUse=300M
    assert "max 300.0M" in line, line
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert host.file(f"/var/log/journal/{machine_id}").is_directory


def test_services_start_without_core_dumps(host):
    assert host.check_output("systemctl show -p DefaultLimitCORE") == "DefaultLimitCORE=0"
    out = host.check_output("systemd-run --quiet --wait --pipe --collect sh -c 'ulimit -Hc'")
    assert out.strip() == "0"


def test_coredump_storage_off(host):
    config = host.check_output("systemd-analyze cat-config systemd/coredump.conf")
    assert "Storage=none" in config
    assert "ProcessSizeMax=0" in config


# --------------------------------------------------------------------------- login policy, banner, modules


def test_login_defs(host):
    content = host.file("/etc/login.defs").content_string
    expected = {
        "UMASK": "027",
        "PASS_MAX_DAYS": "365",
        "PASS_MIN_DAYS": "1",
        "PASS_WARN_AGE": "14",
        "SHA_CRYPT_MIN_ROUNDS": "65536",
        "SHA_CRYPT_MAX_ROUNDS": "65536",
    }
    for key, value in expected.items():
        found = re.findall(rf"^{key}\s+(\S+)\s*$", content, re.M)
        assert found == [value], key


@pytest.mark.parametrize("path", ["/etc/issue", "/etc/issue.net"])
def test_legal_banner(host, path):
    content = host.file(path).content_string
    assert "Authorized access only" in content
    assert "\\" not in content  # no getty escapes leaking the OS version


def test_unused_kernel_modules_disabled(host):
    content = host.file("/etc/modprobe.d/opsbook-disabled-modules.conf").content_string
    for module in ("usb-storage", "firewire-core", "dccp", "sctp"):
        assert f"install {module} /bin/true" in content


def test_dev_shm_noexec_in_fstab(host):
    # a container's /dev/shm belongs to systemd-nspawn; the fstab line is what a VM boots with
    entries = [line.split() for line in host.file("/etc/fstab").content_string.splitlines() if "/dev/shm" in line]
    assert len(entries) == 1
    assert set(entries[0][3].split(",")) == {"nodev", "nosuid", "noexec"}


def test_aide_uses_sha512(host):
    assert re.search(r"^Checksums = sha512$", host.file("/etc/aide/aide.conf").content_string, re.M)


def test_password_quality_enforced_by_pam(host):
    common_password = host.file("/etc/pam.d/common-password").content_string
    assert re.search(r"^password\s+requisite\s+pam_pwquality\.so", common_password, re.M)


# --------------------------------------------------------------------------- integrity


def test_aide_database_built_and_check_scheduled(host):
    db = host.file("/var/lib/aide/aide.db")
    assert db.exists
    assert db.size > 0
    assert host.service("dailyaidecheck.timer").is_enabled


def test_rootkit_scan_scheduled(host):
    assert host.package("chkrootkit").is_installed
    assert host.service("chkrootkit.timer").is_enabled


def test_no_failed_units(host):
    assert host.check_output("systemctl --failed --no-legend --plain") == ""
