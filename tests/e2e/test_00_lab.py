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
