"""Shared helpers of the firewall verify tests.

Network probes run on this machine (the controller) in a lab host's network namespace, so the packets really
come from that host's address: `ip netns exec olab-mol-fw-client ...` is "from mol-fw-client", no namespace is
"from the controller" (10.213.0.1 on the lab bridge).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml

TARGET = "mol-fw"
CLIENT = "mol-fw-client"
CLIENT_NS = f"olab-{CLIENT}"

# Listeners started on mol-fw for the tests (the values of molecule/firewall/converge.yml):
HIDDEN_TCP = [80, 3000, 8080]  # no rule opens them
ALLOWED_TCP = 8081  # firewall_allowed_tcp_ports: open to everyone
RULE_TCP = 5432  # firewall_rules: only from mol-fw-client
EXTRA_TCP = 9100  # firewall_rules__extra: only from mol-fw-client
ALLOWED_UDP = 9999  # firewall_allowed_udp_ports
HIDDEN_UDP = 9998  # no rule opens it
ALL_TCP = [*HIDDEN_TCP, ALLOWED_TCP, RULE_TCP, EXTRA_TCP]
ALL_UDP = [ALLOWED_UDP, HIDDEN_UDP]

# TCP connect scan: "open" (handshake done), "closed" (refused: RST), "filtered" (no answer: dropped).
SCAN = """
import asyncio, json, sys
target, ports, timeout = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])

async def probe(port, sem):
    async with sem:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            return port, "filtered"
        except ConnectionRefusedError:
            return port, "closed"
        except OSError as exc:
            return port, "error: %s" % exc
        writer.close()
        return port, "open"

async def main():
    sem = asyncio.Semaphore(500)
    print(json.dumps(dict(await asyncio.gather(*(probe(p, sem) for p in ports)))))

asyncio.run(main())
"""

# UDP: True if the datagram is echoed back by the listener.
UDP_ECHO = """
import socket, sys
target, port, tries, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(timeout)
for _ in range(tries):
    s.sendto(b"opsbook", (target, port))
    try:
        data, _ = s.recvfrom(512)
    except (socket.timeout, ConnectionRefusedError):
        continue
    if data == b"opsbook":
        print("echo")
        break
else:
    print("silent")
"""

# ICMP echo over a raw socket (no ping binary here): sends COUNT requests INTERVAL apart, prints the replies seen.
ICMP_ECHO = """
import os, socket, struct, sys, time
target, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

ident = os.getpid() & 0xFFFF
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
for seq in range(count):
    payload = b"opsbook!"
    csum = checksum(struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload)
    sock.sendto(struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload, (target, 0))
    time.sleep(interval)
seen = set()
sock.settimeout(2.0)
while True:
    try:
        packet, _ = sock.recvfrom(1024)
    except socket.timeout:
        break
    ihl = (packet[0] & 0x0F) * 4
    icmp_type, _, _, rid, rseq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
    if icmp_type == 0 and rid == ident:
        seen.add(rseq)
print(len(seen))
"""

# Echo server for the UDP listeners.
UDP_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(512)
    s.sendto(data, peer)
"""


def addresses() -> dict[str, str]:
    """Lab addresses of the scenario's hosts, from molecule's instance config."""
    data = yaml.safe_load(Path(os.environ["MOLECULE_INSTANCE_CONFIG"]).read_text())
    return {item["instance"]: item["address"] for item in data}


def in_netns(netns: str | None, script: str, *args: str, timeout: float = 120) -> str:
    """Run a Python script on this machine, inside a lab host's network namespace (None: the controller)."""
    cmd = [sys.executable, "-c", script, *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout.strip()


def tcp_scan(netns: str | None, ports: list[int], timeout: float = 3.0) -> dict[int, str]:
    """Scan TCP ports of mol-fw; ports found neither open nor closed are re-probed with a longer timeout."""
    target = addresses()[TARGET]
    result = {int(k): v for k, v in json.loads(in_netns(netns, SCAN, target, json.dumps(ports), str(timeout))).items()}
    unsure = [p for p, state in result.items() if state not in ("open", "filtered", "closed")]
    if unsure:
        result.update(tcp_scan(netns, unsure, timeout * 3))
    return result


def tcp_state(netns: str | None, port: int) -> str:
    """State of one port, with a wait long enough that a slow machine can't pass for a dropping firewall."""
    return tcp_scan(netns, [port], timeout=8.0)[port]


def open_after_scan(netns: str | None, ports: list[int], expected: set[int]) -> set[int]:
    """Open ports among PORTS; those whose quick verdict differs from EXPECTED are probed again, slowly."""
    scan = tcp_scan(netns, ports)
    for port in [p for p, state in scan.items() if (state == "open") != (p in expected)]:
        scan[port] = tcp_state(netns, port)
    return {port for port, state in scan.items() if state == "open"}


def udp_echo(netns: str | None, port: int, target: str | None = None) -> bool:
    target = target or addresses()[TARGET]
    return in_netns(netns, UDP_ECHO, target, str(port), "5", "1.0") == "echo"


def icmp_replies(netns: str | None, count: int, interval: float) -> int:
    return int(in_netns(netns, ICMP_ECHO, addresses()[TARGET], str(count), str(interval)))


def wait_for(predicate: Any, timeout: float = 60, step: float = 0.5, what: str = "condition") -> Any:
    """Poll PREDICATE until it returns something truthy; fail after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def nft_json(host: Any, *what: str) -> list[dict[str, Any]]:
    out = host.check_output("nft -j list %s", " ".join(what)) if what else host.check_output("nft -j list ruleset")
    return json.loads(out)["nftables"]


@pytest.fixture(scope="session")
def fw() -> Any:
    """mol-fw, whatever host the test module is parametrized with."""
    return testinfra.get_host(f"ansible://{TARGET}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(scope="session")
def listeners(fw: Any) -> Iterator[None]:
    """Listeners on mol-fw (transient systemd units), so the firewall has something to hide."""
    units = [f"fwtest-tcp-{p}" for p in ALL_TCP] + [f"fwtest-udp-{p}" for p in ALL_UDP]
    fw.run("systemctl stop " + " ".join(units))
    for port in ALL_TCP:
        fw.run_expect([0], f"systemd-run --quiet --collect --unit=fwtest-tcp-{port} python3 -m http.server {port}")
    for port in ALL_UDP:
        fw.run_expect([0], f"systemd-run --quiet --collect --unit=fwtest-udp-{port} python3 -c %s {port}", UDP_SERVER)

    def listening() -> bool:
        tcp = {int(line.split()[3].rsplit(":", 1)[1]) for line in fw.check_output("ss -Hltn").splitlines()}
        udp = {int(line.split()[3].rsplit(":", 1)[1]) for line in fw.check_output("ss -Hlun").splitlines()}
        return set(ALL_TCP) <= tcp and set(ALL_UDP) <= udp

    wait_for(listening, timeout=60, what="the test listeners on mol-fw")
    yield
    fw.run("systemctl stop " + " ".join(units))
