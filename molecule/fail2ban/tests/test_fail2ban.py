"""Verify the fail2ban role: brute force from a second lab host is banned in nftables and the ban expires; the
controller is never banned. Attacks run on this machine (the controller) inside the client's network namespace."""

import re
import subprocess
import time
import uuid

import pytest

testinfra_hosts = ["ansible://mol-f2b"]

CLIENT_NETNS = "olab-mol-f2b-client"
CONTROLLER_IP = "10.213.0.1"
LAB_KEY = "/var/lib/opsbook/lab/ssh/id_ed25519"
SSH_OPTS = ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "ControlMaster=no"]
MARGIN = 30  # seconds allowed beyond bantime for fail2ban's unban check on a slow shared machine


def wait_for(predicate, timeout, interval=1.0):
    """Poll predicate until it is true or timeout seconds have passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def run(argv, timeout=60):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def in_client(argv, timeout=60):
    return run(["ip", "netns", "exec", CLIENT_NETNS, *argv], timeout=timeout)


@pytest.fixture(scope="module")
def target_ip(host):
    return host.ansible.get_variables()["ansible_host"]


@pytest.fixture(scope="module")
def client_ip():
    out = in_client(["ip", "-4", "-o", "addr", "show", "dev", "host0"]).stdout
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    assert match, out
    return match.group(1)


@pytest.fixture(scope="module")
def wrong_key(tmp_path_factory):
    key = tmp_path_factory.mktemp("f2b") / "wrong_ed25519"
    result = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "not-authorized", "-f", str(key)])
    assert result.returncode == 0, result.stderr
    return str(key)


@pytest.fixture(scope="module")
def jail(host):
    def get(option):
        return host.check_output(f"fail2ban-client get sshd {option}").strip()
    return {"bantime": int(get("bantime")), "maxretry": int(get("maxretry"))}


def banned(host):
    status = host.check_output("fail2ban-client status sshd")
    match = re.search(r"Banned IP list:\s*(.*)$", status, re.MULTILINE)
    return match.group(1).split() if match else []


def nft_ban_set(host):
    """Addresses in the elements of fail2ban's sshd set in nftables."""
    ruleset = host.check_output("nft list set inet f2b-table addr-set-sshd 2>/dev/null || true")
    match = re.search(r"elements = \{([^}]*)\}", ruleset)
    return [e.strip().split()[0] for e in match.group(1).split(",")] if match else []


def tcp_connects(ip, from_client):
    code = f"import socket; socket.create_connection(('{ip}', 22), timeout=3).close()"
    argv = ["python3", "-c", code]
    return (in_client(argv) if from_client else run(argv)).returncode == 0


def failed_login(ip, kind, key, from_client):
    """One failed SSH login: the lab's (root) user with a key it does not accept, or a user that does not exist."""
    user = "root" if kind == "wrong-key" else f"nosuch-{uuid.uuid4().hex[:8]}"
    argv = ["ssh", *SSH_OPTS, "-i", key, f"{user}@{ip}", "true"]
    result = in_client(argv) if from_client else run(argv)
    assert result.returncode != 0, "a login that should fail succeeded"


def wait_unbanned(host, ip, jail):
    assert wait_for(lambda: ip not in banned(host), jail["bantime"] + MARGIN), banned(host)


@pytest.mark.parametrize("kind", ["wrong-key", "invalid-user"])
def test_brute_force_from_client_is_banned_then_expires(host, target_ip, client_ip, wrong_key, jail, kind):
    wait_unbanned(host, client_ip, jail)  # a ban left by the previous case
    assert wait_for(lambda: tcp_connects(target_ip, from_client=True), 15), "client cannot reach port 22 at the start"

    attempts = 0
    deadline = time.monotonic() + 120
    while client_ip not in banned(host):
        assert attempts < 3 * jail["maxretry"], f"not banned after {attempts} failed {kind} logins"
        assert time.monotonic() < deadline, f"not banned after {attempts} failed {kind} logins and 120 s"
        if tcp_connects(target_ip, from_client=True):
            failed_login(target_ip, kind, wrong_key, from_client=True)
            attempts += 1
        wait_for(lambda: client_ip in banned(host), 3 if attempts < jail["maxretry"] else 20)
    banned_at = time.monotonic()

    # the ban is real: in fail2ban's nftables set, and new TCP connections from the client fail
    assert wait_for(lambda: client_ip in nft_ban_set(host), 15), host.check_output("nft list ruleset")
    assert not tcp_connects(target_ip, from_client=True)
    assert "f2b-table" in host.check_output("nft list tables")

    # the ban is counted for monitoring (the timer's unit, run now instead of within the minute)
    host.check_output("systemctl start opsbook-fail2ban-metrics.service")
    metrics = host.file("/var/lib/prometheus/node-exporter/opsbook_fail2ban.prom").content_string
    assert "opsbook_fail2ban_up 1" in metrics
    assert re.search(r'^opsbook_fail2ban_banned\{jail="sshd"\} [1-9]', metrics, re.MULTILINE), metrics
    assert re.search(r'^opsbook_fail2ban_bans_total\{jail="sshd"\} [1-9]', metrics, re.MULTILINE), metrics

    # it expires after bantime (not long before, not long after)
    assert wait_for(lambda: tcp_connects(target_ip, from_client=True), jail["bantime"] + MARGIN, interval=2), \
        "ban did not expire"
    elapsed = time.monotonic() - banned_at
    assert elapsed >= jail["bantime"] - 5, f"ban lifted after {elapsed:.0f} s, bantime is {jail['bantime']} s"
    assert client_ip not in banned(host)
    assert client_ip not in nft_ban_set(host)


def test_controller_is_never_banned(host, target_ip, wrong_key, jail):
    assert CONTROLLER_IP in host.check_output("fail2ban-client get sshd ignoreip")
    ignored_before = host.check_output(f"grep -c 'Ignore {CONTROLLER_IP} by ip' /var/log/fail2ban.log || true")

    for i in range(2 * jail["maxretry"] + 2):
        failed_login(target_ip, "wrong-key" if i % 2 else "invalid-user", wrong_key, from_client=False)

    # fail2ban saw the failures (it logs every ignored one), and still did not ban the controller
    assert wait_for(
        lambda: int(host.check_output(f"grep -c 'Ignore {CONTROLLER_IP} by ip' /var/log/fail2ban.log || true"))
        >= int(ignored_before) + 2 * jail["maxretry"],
        60,
    ), "fail2ban did not see the controller's failed logins"
    assert CONTROLLER_IP not in banned(host)
    assert CONTROLLER_IP not in nft_ban_set(host)
    assert tcp_connects(target_ip, from_client=False)
    result = run(["ssh", *SSH_OPTS, "-i", LAB_KEY, f"root@{target_ip}", "echo still-in"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "still-in"


def test_jail_configuration(host):
    assert host.service("fail2ban").is_running
    assert host.service("fail2ban").is_enabled
    assert host.service("opsbook-fail2ban-metrics.timer").is_enabled
    # the journal backend (a file backend has no journal match) and the nftables ban action
    assert "_COMM=sshd" in host.check_output("fail2ban-client get sshd journalmatch")
    assert "nftables-multiport" in host.check_output("fail2ban-client get sshd actions")
    config = host.run("fail2ban-client --test")
    assert config.rc == 0, config.stderr
    assert host.file("/etc/fail2ban/jail.d/opsbook.local").mode == 0o644
