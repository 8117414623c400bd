#!/usr/bin/env python3
"""Benchmark (not a test): provisioning one fresh lab host.

Prints: first provision wall seconds, second (no-op) provision wall seconds, and the Lynis hardening index
before and after provisioning. Target: Lynis >= 80 after. Run as root: .venv/bin/python benchmarks/provision.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from opsbook import lab, runner

HOST = "bench-web"
ROOT = Path(__file__).resolve().parents[1]


def ssh(cmd: str, timeout: float = 900) -> str:
    res = subprocess.run([*lab.ssh_command(HOST), cmd], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"{cmd!r} failed on {HOST}: {res.stderr}")
    return res.stdout


def lynis_index() -> int:
    out = ssh("lynis audit system --quick --no-colors 2>/dev/null; "
              "grep -h '^hardening_index=' /var/log/lynis-report.dat")
    m = re.search(r"^hardening_index=(\d+)", out, re.M)
    if not m:
        raise SystemExit("no hardening index in Lynis output")
    return int(m.group(1))


def main() -> int:
    lab.down([HOST], progress=False)
    host = lab.up([lab.Host(name=HOST, ip="")], progress=False)[0]
    try:
        ssh("DEBIAN_FRONTEND=noninteractive apt-get -qq update && "
            "DEBIAN_FRONTEND=noninteractive apt-get -qq install -y lynis >/dev/null")
        before = lynis_index()
        with tempfile.TemporaryDirectory() as tmp:
            inv = Path(tmp) / "lab"
            inv.mkdir()
            (inv / "hosts.yml").write_text(yaml.safe_dump(
                {"all": {"children": {"web": {"hosts": {HOST: {"ansible_host": host.ip}}}}}}))
            (inv / "group_vars").symlink_to(ROOT / "inventories" / "lab" / "group_vars")
            t = time.monotonic()
            first = runner.run_playbook("provision.yml", inventory=str(inv), verb="bench-provision", quiet=True)
            first_s = time.monotonic() - t
            t = time.monotonic()
            second = runner.run_playbook("provision.yml", inventory=str(inv), verb="bench-provision", quiet=True)
            second_s = time.monotonic() - t
        after = lynis_index()
        figures = {
            "first_provision_seconds": round(first_s, 1),
            "first_provision_ok": first.ok,
            "second_provision_seconds": round(second_s, 1),
            "second_provision_changed": sum(h.changed for h in second.hosts.values()),
            "lynis_index_before": before,
            "lynis_index_after": after,
            "lynis_target_after": 80,
            "lynis_target_met": after >= 80,
        }
        for k, v in figures.items():
            print(f"{k:28} {v}")
        print(json.dumps(figures))
        return 0 if first.ok and second.ok else 1
    finally:
        lab.down([HOST], progress=False)


if __name__ == "__main__":
    sys.exit(main())
