"""The firewall seen from the network: scans from mol-fw-client and from the controller, restarts, other tables."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    ALL_TCP,
    ALLOWED_TCP,
    ALLOWED_UDP,
    CLIENT,
    CLIENT_NS,
    EXTRA_TCP,
    HIDDEN_TCP,
    HIDDEN_UDP,
    RULE_TCP,
    addresses,
    icmp_replies,
    nft_json,
    open_after_scan,
    tcp_scan,
    tcp_state,
    udp_echo,
    wait_for,
)

testinfra_hosts = ["ansible://mol-fw"]

CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5)"

CONTROLLER = None  # no namespace: packets from 10.213.0.1, the lab bridge
SCAN_RANGE = list(range(1, 1025))

# A stand-in for fail2ban's own table (same shape as its nftables action): bans mol-fw-client from port 22.
F2B_TABLE = """
table inet f2b-table {
    set addr-set-sshd { type ipv4_addr; elements = { %s } }
    chain f2b-chain {
        type filter hook input priority filter - 1; policy accept;
        tcp dport 22 ip saddr @addr-set-sshd reject with icmp type port-unreachable
    }
}
"""


def test_listeners_answer_on_the_host_itself(host: Any, listeners: None) -> None:
    """Every test listener answers locally, so what the scans don't see is hidden by the firewall."""
    for port in ALL_TCP:
        host.run_expect([0], f"python3 -c %s {port}", CONNECT)


def test_scan_from_client_finds_only_ssh(listeners: None) -> None:
    assert open_after_scan(CLIENT_NS, SCAN_RANGE + HIDDEN_TCP, {22}) == {22}
    # dropped, not refused: the host doesn't even say the ports are closed
    assert set(tcp_scan(CLIENT_NS, HIDDEN_TCP, timeout=8.0).values()) == {"filtered"}


def test_scan_from_client_of_all_listeners(listeners: None) -> None:
    """Listener ports: open exactly where a rule opens them for mol-fw-client."""
    expected = {22, ALLOWED_TCP, RULE_TCP, EXTRA_TCP}
    assert open_after_scan(CLIENT_NS, [22, *ALL_TCP], expected) == expected


def test_allowed_tcp_port_answers_everyone(listeners: None) -> None:
    assert tcp_state(CLIENT_NS, ALLOWED_TCP) == "open"
    assert tcp_state(CONTROLLER, ALLOWED_TCP) == "open"


def test_source_restricted_rule_lets_only_its_source_in(listeners: None) -> None:
    assert tcp_state(CLIENT_NS, RULE_TCP) == "open"
    assert tcp_state(CONTROLLER, RULE_TCP) == "filtered"


def test_contributed_rule_is_applied(host: Any, listeners: None) -> None:
    """firewall_rules__extra (as another role would set it) opens 9100 to mol-fw-client only."""
    assert tcp_state(CLIENT_NS, EXTRA_TCP) == "open"
    assert tcp_state(CONTROLLER, EXTRA_TCP) == "filtered"
    assert "contributed through firewall_rules__extra" in host.check_output("nft list table inet opsbook")


def test_udp(host: Any, listeners: None) -> None:
    assert udp_echo(CLIENT_NS, ALLOWED_UDP)
    assert not udp_echo(CLIENT_NS, HIDDEN_UDP)
    # the hidden UDP listener works: it answers on the host itself
    assert (
        host.run(
            "python3 -c %s",
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); "
            f"s.sendto(b'x', ('127.0.0.1', {HIDDEN_UDP})); print(s.recvfrom(16)[0].decode())",
        ).stdout.strip()
        == "x"
    )


def test_ping_is_answered_and_rate_limited() -> None:
    assert icmp_replies(CLIENT_NS, 3, 0.2) == 3
    # 200 requests in ~0.4 s: the burst (20) and 10/s get through, the flood doesn't
    flood = icmp_replies(CLIENT_NS, 200, 0.002)
    assert 10 <= flood <= 60, flood


def test_policies(host: Any) -> None:
    chains = {
        item["chain"]["name"]: item["chain"] for item in nft_json(host, "table", "inet", "opsbook") if "chain" in item
    }
    assert chains["input"]["policy"] == "drop"
    assert chains["forward"]["policy"] == "drop"
    assert chains["output"]["policy"] == "accept"
    rules = [line.strip() for line in host.file("/etc/nftables.conf").content_string.splitlines()]
    assert not [line for line in rules if line.startswith("flush")], "the file must replace only the role's table"
    host.run_expect([0], "nft -c -f /etc/nftables.conf")
    assert host.service("nftables").is_enabled


def test_rules_survive_nftables_restart(host: Any, listeners: None) -> None:
    host.run_expect([0], "systemctl restart nftables")
    assert host.service("nftables").is_running
    expected = {22, ALLOWED_TCP, RULE_TCP, EXTRA_TCP}
    assert open_after_scan(CLIENT_NS, [22, *ALL_TCP], expected) == expected
    assert tcp_state(CLIENT_NS, 8080) == "filtered"


@pytest.fixture()
def f2b_table(host: Any) -> Iterator[str]:
    """fail2ban's table, banning mol-fw-client; deleted afterwards."""
    client = addresses()[CLIENT]
    host.run("nft delete table inet f2b-table")
    host.run_expect([0], "printf '%%s' %s | nft -f -", F2B_TABLE % client)
    yield client
    host.run_expect([0], "nft delete table inet f2b-table")
    wait_for(lambda: tcp_state(CLIENT_NS, 22) == "open", timeout=30, what="port 22 open again for the client")


@pytest.mark.parametrize(
    "reload",
    ["nft -f /etc/nftables.conf", "systemctl reload nftables", "systemctl restart nftables"],
    ids=["handler", "service-reload", "service-restart"],
)
def test_other_tables_survive_a_firewall_reload(host: Any, f2b_table: str, reload: str) -> None:
    # the ban works before the reload ...
    assert tcp_state(CLIENT_NS, 22) == "closed"
    host.run_expect([0], reload)
    # ... and after it: the table, its ban and its effect are all still there
    elements = [
        item["set"].get("elem", [])
        for item in nft_json(host, "set", "inet", "f2b-table", "addr-set-sshd")
        if "set" in item
    ]
    assert elements == [[f2b_table]]
    assert tcp_state(CLIENT_NS, 22) == "closed"
    assert tcp_state(CONTROLLER, 22) == "open"
    assert tcp_state(CLIENT_NS, ALLOWED_TCP) == "open"
