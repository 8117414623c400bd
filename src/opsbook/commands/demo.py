"""opsbook demo: the main job, end to end, on the lab. Grows with every operation opsbook learns."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from opsbook import lab, paths, portscan, runner
from opsbook.commands.backup import command_output

PORTS = "1-1024,3000,5432,8000,8080,8443,9090"


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "demo",
        help="run everything on the lab: lab up, provision, prove it, lab down",
        formatter_class=formatter,
        description="Boot the lab, provision its hosts (web, database, backup store), run again to show nothing\n"
                    "changes, scan them from a second host, take a backup that is restored and checked, print\n"
                    "one report, and take the lab down.",
        epilog="examples:\n  opsbook demo\n  opsbook demo --keep      leave the lab running afterwards",
    )
    p.add_argument("--keep", action="store_true", help="leave the lab running")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    console = Console()
    inv = paths.project_root() / "inventories" / "lab"
    figures: dict[str, Any] = {}
    ok = True
    t0 = time.monotonic()
    declared = lab.inventory_hosts(inv)
    try:
        console.rule("lab up")
        hosts = lab.up(declared)
        figures["lab_up_seconds"] = round(time.monotonic() - t0, 1)
        targets = [h for h in hosts if "lab_clients" not in h.groups]
        client = next(h for h in hosts if "lab_clients" in h.groups)

        console.rule("provision (first run)")
        first = runner.run_playbook("provision.yml", inventory=str(inv), verb="provision")
        figures["provision_first"] = _run_figures(first)
        ok &= first.ok
        if first.ok:
            console.rule("provision (second run: must change nothing)")
            second = runner.run_playbook("provision.yml", inventory=str(inv), verb="provision")
            figures["provision_second"] = _run_figures(second)
            ok &= second.ok and all(t.changed == 0 for t in second.hosts.values())

            console.rule(f"port scan from {client.name}")
            scans = {}
            for h in targets:
                out = subprocess.run(
                    ["ip", "netns", "exec", client.netns, sys.executable, portscan.__file__, h.ip, PORTS],
                    capture_output=True, text=True, check=True, timeout=300).stdout
                scans[h.name] = json.loads(out)
            figures["open_ports_seen_from_client"] = scans
            # web hosts answer on 80/443; the database host on 5432 to the web hosts only: from the client, 22
            ok &= all(v == ([22, 80, 443] if any("web" in h.groups for h in targets if h.name == n) else [22])
                      for n, v in scans.items())

            if any("db" in h.groups for h in hosts):
                console.rule("backup: dump, restore into a scratch database and check, copy off the host")
                b = runner.run_playbook("backup.yml", inventory=str(inv), verb="backup-run",
                                        extravars={"opsbook_backup_action": "run"})
                figures["backup_run"] = {"ok": b.ok, "seconds": round(b.seconds, 1)}
                ok &= b.ok
                listing = runner.run_playbook("backup.yml", inventory=str(inv), verb="backup-list", quiet=True,
                                              extravars={"opsbook_backup_action": "list"})
                figures["backups"] = {h: json.loads(out) for h, out in command_output(listing.report).items()
                                      if out.strip().startswith("{")}
                ok &= any(r["verification"] == "passed" and r["latest_good"]
                          for v in figures["backups"].values() for r in v["backups"])
    except lab.LabError as e:
        console.print(f"[red]lab error:[/] {e}", highlight=False)
        ok = False
    finally:
        if not args.keep:
            console.rule("lab down")
            # the demo's own hosts; the lab's bridge and services go too when no other host is left
            lab.down([h.name for h in declared])
    figures["total_seconds"] = round(time.monotonic() - t0, 1)
    figures["result"] = "ok" if ok else "failed"
    report = runner.write_report("demo", figures)
    _print_report(console, figures)
    console.print(f"report: {report}")
    return 0 if ok else 2


def _run_figures(r: runner.RunResult) -> dict[str, Any]:
    return {"ok": r.ok, "seconds": round(r.seconds, 1),
            "changed": {h: t.changed for h, t in sorted(r.hosts.items())},
            "failed": {h: t.failed + t.unreachable for h, t in sorted(r.hosts.items())}}


def _print_report(console: Console, f: dict[str, Any]) -> None:
    tbl = Table(title="opsbook demo")
    tbl.add_column("step")
    tbl.add_column("result")
    tbl.add_row("lab up", f"{f.get('lab_up_seconds', '-')} s")
    for key, label in (("provision_first", "provision"), ("provision_second", "provision again")):
        if key in f:
            r = f[key]
            tbl.add_row(label, f"{'ok' if r['ok'] else 'FAILED'} in {r['seconds']} s, changed {r['changed']}")
    for host, ports in (f.get("open_ports_seen_from_client") or {}).items():
        tbl.add_row(f"open TCP ports on {host}", ", ".join(map(str, ports)) or "none")
    if "backup_run" in f:
        tbl.add_row("backup run", f"{'ok' if f['backup_run']['ok'] else 'FAILED'} in {f['backup_run']['seconds']} s")
    for host, listing in (f.get("backups") or {}).items():
        for r in listing["backups"]:
            tbl.add_row(f"backup on {host}", f"{r['file']}: {r['rows']} rows, {r['size']} bytes, verification "
                        f"{r['verification']}{', latest good' if r['latest_good'] else ''}")
    tbl.add_row("total", f"{f['total_seconds']} s — {f['result']}")
    console.print(tbl)
