#!/usr/bin/env python3
"""Benchmark (not a test): deploy and rollback of the example app on a warm lab web host, under wrk load.

A fresh lab host (bench-app) is provisioned as a web host and gets release 1.0.0 (warm-up). Then, with wrk
(2 threads, 32 keep-alive connections) on https://bench-app.opsbook.test/ from this machine:
steady state for 20 s; deploy 2.0.0; rollback to 1.0.0. Artifacts are built before the clock starts (a build
happens once per version on the controller; its time is printed separately). Also deploy and rollback without
load. Prints wall seconds, requests served, failed requests and p99 latency of each, as a table and JSON.
Targets: deploy <= 30 s, rollback <= 10 s, p99 during deploy <= 2x steady state, 0 failed requests.
Run as root: .venv/bin/python benchmarks/deploy.py [--keep]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from opsbook import lab, paths, runner
from opsbook.lab import load

HOST = "bench-app"
NAME = f"{HOST}.opsbook.test"
ROOT = Path(__file__).resolve().parents[1]


def build(version: str) -> dict[str, Any]:
    t = time.monotonic()
    out = subprocess.run([sys.executable, str(ROOT / "roles/app/files/opsbook-app-build"), str(ROOT / "examples/app"),
                          "--out", str(paths.state_dir() / "build"), "--name", "app", "--version", version, "--force"],
                         capture_output=True, text=True, check=True).stdout
    return {**json.loads(out), "seconds": round(time.monotonic() - t, 2)}


def op(inv: Path, playbook: str, extravars: dict[str, Any], ip: str | None) -> dict[str, Any]:
    """Run a playbook (under load when ip is given); wall seconds, ok, and the load's figures."""
    def run() -> tuple[bool, float]:
        t = time.monotonic()
        res = runner.run_playbook(playbook, inventory=str(inv), extravars=extravars, verb=f"bench-{playbook[:-4]}",
                                  quiet=True)
        return res.ok, round(time.monotonic() - t, 2)

    if ip is None:
        ok, seconds = run()
        return {"ok": ok, "seconds": seconds}
    with load.Load(ip, NAME) as wrk:
        ok, seconds = run()
    f = wrk.figures
    return {"ok": ok, "seconds": seconds, "requests": int(f["requests"]), "failed": wrk.failed,
            "p50_ms": f["p50_ms"], "p99_ms": f["p99_ms"], "rps": f["rps"]}


def main() -> int:
    keep = "--keep" in sys.argv
    lab.down([HOST], progress=False)
    host = lab.up([lab.Host(name=HOST, ip="")], progress=False)[0]
    tmp = Path(tempfile.mkdtemp(prefix="opsbook-bench-"))
    try:
        inv = tmp / "lab"
        inv.mkdir()
        (inv / "hosts.yml").write_text(yaml.safe_dump(
            {"all": {"children": {"web": {"hosts": {HOST: {"ansible_host": host.ip}}}}}}))
        shutil.copytree(ROOT / "inventories/lab/group_vars", inv / "group_vars")
        t = time.monotonic()
        prov = runner.run_playbook("provision.yml", inventory=str(inv), verb="bench-provision", quiet=True)
        if not prov.ok:
            raise SystemExit(f"provisioning {HOST} failed: see {prov.report}")
        figures: dict[str, Any] = {"provision_seconds": round(time.monotonic() - t, 1)}
        builds = {v: build(v) for v in ("1.0.0", "2.0.0", "3.0.0", "4.0.0")}
        figures["build_seconds"] = {v: b["seconds"] for v, b in builds.items()}

        def dep(v: str) -> dict[str, Any]:
            return {"app_version": v, "app_source_dir": "", "app_artifact": builds[v]["artifact"]}

        figures["first_deploy"] = op(inv, "deploy.yml", dep("1.0.0"), None)
        with load.Load(host.ip, NAME, warmup=3) as steady:
            time.sleep(20)
        figures["steady"] = {k: steady.figures[k] for k in ("requests", "rps", "p50_ms", "p99_ms")} | {
            "failed": steady.failed}
        figures["deploy_under_load"] = op(inv, "deploy.yml", dep("2.0.0"), host.ip)
        figures["rollback_under_load"] = op(inv, "rollback.yml", {"app_rollback_to": "1.0.0"}, host.ip)
        figures["deploy_no_load"] = op(inv, "deploy.yml", dep("3.0.0"), None)
        figures["rollback_no_load"] = op(inv, "rollback.yml", {}, None)
        figures["deploy_under_load_2"] = op(inv, "deploy.yml", dep("4.0.0"), host.ip)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not keep:
            lab.down([HOST], progress=False)

    steady_p99 = figures["steady"]["p99_ms"] or 1e-9
    print(f"{'operation':<22}{'seconds':>9}{'requests':>10}{'failed':>8}{'p99 ms':>9}{'p99/steady':>11}")
    for key in ("steady", "deploy_under_load", "rollback_under_load", "deploy_under_load_2", "deploy_no_load",
                "rollback_no_load"):
        f = figures[key]
        ratio = f"{f['p99_ms'] / steady_p99:.2f}" if "p99_ms" in f else "-"
        print(f"{key:<22}{f.get('seconds', 20):>9}{f.get('requests', '-'):>10}{f.get('failed', '-'):>8}"
              f"{f.get('p99_ms', '-'):>9}{ratio:>11}")
    d, r = figures["deploy_under_load"], figures["rollback_under_load"]
    figures["targets"] = {
        "deploy_le_30s": d["seconds"] <= 30, "rollback_le_10s": r["seconds"] <= 10,
        "p99_deploy_le_2x_steady": d["p99_ms"] <= 2 * steady_p99,
        "no_failed_requests": d["failed"] == 0 and r["failed"] == 0 and figures["deploy_under_load_2"]["failed"] == 0,
        "all_ok": all(figures[k]["ok"] for k in ("first_deploy", "deploy_under_load", "rollback_under_load",
                                                 "deploy_no_load", "rollback_no_load", "deploy_under_load_2")),
    }
    print(json.dumps(figures, indent=2))
    return 0 if all(figures["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
