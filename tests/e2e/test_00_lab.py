"""The lab itself: up is idempotent, down leaves nothing behind, up; down; up; down works."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from opsbook import lab
from tests.e2e.conftest import run_opsbook


def inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "lab"
    inv.mkdir()
    (inv / "hosts.yml").write_text("all:\n  children:\n    web:\n      hosts:\n        lc1:\n"
                                   "          ansible_host: 10.213.0.90\n")
    return inv


def leftovers(name: str, veth: str) -> list[str]:
    found = []
    if name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout:
        found.append(f"netns olab-{name}")
    if subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode == 0:
        found.append(f"link {veth}")
    if str(lab.STATE_DIR / "hosts" / name) in Path("/proc/self/mounts").read_text():
        found.append("mount")
    if (lab.STATE_DIR / "hosts" / name).exists():
        found.append("root directory")
    procs = subprocess.run(["pgrep", "-f", f"nspawn.*hosts/{name}/"], capture_output=True, text=True).stdout
    if procs.strip():
        found.append(f"nspawn process {procs.split()}")
    return found


def test_up_down_up_down(tmp_path: Path) -> None:
    inv = inventory(tmp_path)
    for _ in range(2):
        assert run_opsbook("lab", "up", "-i", str(inv)).returncode == 0
        first = json.loads(run_opsbook("lab", "status", "--json").stdout)
        # up again: nothing restarted
        assert run_opsbook("lab", "up", "-i", str(inv)).returncode == 0
        second = json.loads(run_opsbook("lab", "status", "--json").stdout)
        pid = {h["name"]: h["pid"] for h in first["hosts"]}["lc1"]
        assert {h["name"]: h["pid"] for h in second["hosts"]}["lc1"] == pid
        assert lab.port_open("10.213.0.90", 22)
        others = [h["name"] for h in second["hosts"] if h["name"] != "lc1"]
        assert run_opsbook("lab", "down", "lc1").returncode == 0
        assert leftovers("lc1", "olv90") == []
        if not others:  # the whole lab was ours: its bridge and proxy are gone too
            assert not lab.bridge_exists()
            assert subprocess.run(["pgrep", "-f", "apt-cacher-ng -c"], capture_output=True).stdout == b""


def gateway_answers(netns: str) -> bool:
    """A TCP connection from inside a lab host to the apt proxy on the gateway, within 3 s."""
    probe = f"exec 3<>/dev/tcp/{lab.GATEWAY}/{lab.APT_PROXY_PORT}"
    return subprocess.run(["ip", "netns", "exec", netns, "timeout", "3", "bash", "-c", probe],
                          capture_output=True).returncode == 0


def test_gateway_stays_reachable_when_a_host_goes() -> None:
    """Taking a host down must not move the gateway's MAC under the other hosts (their ARP entries would go stale
    for about 45 s: SSH stalls, apt 'connection timed out')."""
    hosts = {h.name: h for h in lab.up([lab.Host(name="lc2", ip=""), lab.Host(name="lc3", ip="")], progress=False)}
    try:
        # lc3's port gets the lowest MAC on the bridge: a bridge without an address of its own would take it
        subprocess.run(["ip", "link", "set", hosts["lc3"].veth, "address", "00:00:00:00:00:01"], check=True)
        subprocess.run(["ip", "netns", "exec", hosts["lc2"].netns, "ip", "neigh", "flush", "all"], check=True)
        assert gateway_answers(hosts["lc2"].netns)  # lc2 learns the gateway's MAC now
        lab.down(["lc3"], progress=False)
        assert [gateway_answers(hosts["lc2"].netns) for _ in range(3)] == [True] * 3
        assert Path(f"/sys/class/net/{lab.BRIDGE}/address").read_text().strip() == lab.BRIDGE_MAC
    finally:
        lab.down(["lc2", "lc3"], progress=False)
