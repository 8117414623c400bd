#!/usr/bin/env python3
"""Benchmark (not a test): verified backups of a ~1 GB PostgreSQL database (pgbench scale 70).

Prints dump, verification and restore seconds and bytes of each of --runs backup runs (after a checkpoint of the
seed), and the run with the median verification/dump ratio. Target: verification <= 2x dump time.
Run as root: .venv/bin/python benchmarks/backup.py [--scale 70]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from opsbook import lab, runner

DB, STORE = "bench-db", "bench-store"
ROOT = Path(__file__).resolve().parents[1]
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


def ssh(cmd: str, timeout: float = 3600) -> str:
    res = subprocess.run([*lab.ssh_command(DB), cmd], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"{cmd!r} failed on {DB}: {res.stderr}{res.stdout}")
    return res.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=int, default=70, help="pgbench scale (70 ≈ 1 GB)")
    ap.add_argument("--runs", type=int, default=3, help="backup runs to measure (the median is reported)")
    ap.add_argument("--keep", action="store_true", help="leave bench-db and bench-store running afterwards")
    args = ap.parse_args()
    lab.down([DB, STORE], progress=False)
    hosts = {h.name: h for h in lab.up([lab.Host(DB, ""), lab.Host(STORE, "")], progress=False)}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            inv = Path(tmp) / "lab"
            inv.mkdir()
            (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": {
                "db": {"hosts": {DB: {"ansible_host": hosts[DB].ip}}},
                "backup_store": {"hosts": {STORE: {"ansible_host": hosts[STORE].ip}}},
            }}}))
            (inv / "group_vars").symlink_to(ROOT / "inventories" / "lab" / "group_vars")
            t = time.monotonic()
            prov = runner.run_playbook("provision.yml", inventory=str(inv), verb="bench-backup-provision", quiet=True)
            if not prov.ok:
                raise SystemExit(f"provisioning failed, see {prov.report}")
            provision_s = time.monotonic() - t
        t = time.monotonic()
        ssh(f"cd /tmp && sudo -u postgres {PGBENCH} -i -q -s {args.scale} app >/dev/null 2>&1")
        seed_s = time.monotonic() - t
        # the seed's writes are flushed first, as on a database at backup time, not in the first run's way
        ssh("sudo -u postgres psql -qc checkpoint app")
        db_bytes = int(ssh("sudo -u postgres psql -Atc \"select pg_database_size('app')\" app").strip())
        runs = []
        for _ in range(args.runs):
            t = time.monotonic()
            ssh("/usr/local/sbin/opsbook-backup run")
            run_s = time.monotonic() - t
            listing = json.loads(ssh("/usr/local/sbin/opsbook-backup list --json"))
            newest = listing["backups"][-1]
            manifest = json.loads(ssh(f"cat {listing['dir']}/{newest['file'][:-len('.dump')]}.manifest.json"))
            ver = manifest.get("verification", {})
            runs.append({
                "dump_seconds": manifest["dump_seconds"],
                "verification_seconds": ver.get("seconds"),
                "verification_restore_seconds": ver.get("restore_seconds"),
                **{f"restore_{k}_seconds": v for k, v in (ver.get("restore_phases") or {}).items()},
                "verification_status": ver.get("status"),
                "ratio": round(ver.get("seconds", 0) / manifest["dump_seconds"], 2),
                "whole_run_seconds": round(run_s, 1),
            })
            print(f"run {len(runs)}: {json.dumps(runs[-1])}", flush=True)
        t = time.monotonic()
        ssh(f"/usr/local/sbin/opsbook-backup restore {newest['file']} --yes-overwrite-live")
        restore_s = time.monotonic() - t
        median = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
        figures = {
            "pgbench_scale": args.scale,
            "database_bytes": db_bytes,
            "rows": newest["rows"],
            "dump_bytes": manifest["size"],
            "runs": len(runs),
            "median run: dump_seconds": median["dump_seconds"],
            "median run: verification_seconds": median["verification_seconds"],
            "median run: verification_restore_seconds": median["verification_restore_seconds"],
            **{f"median run:   {k}": v for k, v in median.items() if k.startswith("restore_")},
            "median run: whole_run_seconds (dump+verify+copy+prune)": median["whole_run_seconds"],
            "verification_to_dump_ratio (median)": median["ratio"],
            "verification_to_dump_ratio (each run)": " ".join(str(r["ratio"]) for r in runs),
            "all_verified": all(r["verification_status"] == "passed" for r in runs),
            "target_ratio": 2.0,
            "restore_live_seconds": round(restore_s, 1),
            "provision_seconds": round(provision_s, 1),
            "seed_seconds": round(seed_s, 1),
        }
        for k, v in figures.items():
            print(f"{k:56} {v}")
        print(json.dumps(figures))
        return 0
    finally:
        if not args.keep:
            lab.down([DB, STORE], progress=False)


if __name__ == "__main__":
    sys.exit(main())
