"""opsbook lab: the local lab of systemd-nspawn hosts."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from opsbook import lab, options, paths
from opsbook.runner import make_console


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "lab",
        help="the local lab: up, down, status, ssh",
        formatter_class=formatter,
        description="Local Debian 12 hosts (systemd-nspawn, one network namespace each) on bridge obr0.",
        epilog=(
            "examples:\n"
            "  opsbook lab up                  boot every host of inventories/lab\n"
            "  opsbook lab up web1             boot one of them\n"
            "  opsbook lab up --adhoc t1 t2    boot hosts not in the inventory (addresses .100-.199)\n"
            "  opsbook lab up --acme-cert-seconds 120   short-lived certificates\n"
            "  opsbook lab status --json\n"
            "  opsbook lab ssh web1 -- uptime\n"
            "  opsbook lab down                stop everything, leave nothing behind"
        ),
    )
    lsub = p.add_subparsers(dest="lab_verb", metavar="ACTION", required=True)
    common = [options.common()]
    up = lsub.add_parser("up", help="boot lab hosts (idempotent)", parents=common)
    up.add_argument("hosts", nargs="*", help="inventory hosts to boot (default: all)")
    up.add_argument("--adhoc", nargs="+", default=[], metavar="NAME", help="boot extra hosts not in the inventory")
    up.add_argument("-i", "--inventory", help="lab inventory (default: inventories/lab)")
    up.add_argument("--json", action="store_true", help="print the booted hosts as JSON")
    up.add_argument("--acme-cert-seconds", type=int, metavar="N",
                    help="make the lab's ACME server (Pebble) issue certificates valid N seconds (renewal tests)")
    up.set_defaults(func=cmd_up)
    down = lsub.add_parser("down", help="stop hosts; with none named, the whole lab", parents=common)
    down.add_argument("hosts", nargs="*")
    down.set_defaults(func=cmd_down)
    rs = lsub.add_parser("restart", help="power hosts off and boot them again (same disk, same address)",
                         parents=common)
    rs.add_argument("hosts", nargs="+")
    rs.set_defaults(func=cmd_restart)
    st = lsub.add_parser("status", help="what runs", parents=common)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    ssh = lsub.add_parser("ssh", help="ssh into a lab host as root", parents=common)
    ssh.add_argument("host")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=cmd_ssh)


def _inventory(args: argparse.Namespace) -> Path:
    return Path(args.inventory) if getattr(args, "inventory", None) else paths.project_root() / "inventories" / "lab"


def cmd_up(args: argparse.Namespace) -> int:
    declared = lab.inventory_hosts(_inventory(args))
    if args.hosts:
        unknown = set(args.hosts) - {h.name for h in declared}
        if unknown:
            raise SystemExit(f"opsbook: not in the lab inventory: {', '.join(sorted(unknown))} (use --adhoc)")
        declared = [h for h in declared if h.name in args.hosts]
    elif args.adhoc:
        declared = []
    wanted = declared + [lab.Host(name=n, ip="") for n in args.adhoc]
    try:
        hosts = lab.up(wanted, progress=not (args.json or args.quiet), acme_cert_seconds=args.acme_cert_seconds)
    except lab.LabError as e:
        make_console(stderr=True).print(f"[red]lab up failed:[/] {e}", highlight=False)
        return 1
    if args.json:
        print(json.dumps([{"name": h.name, "ip": h.ip} for h in hosts]))
    else:
        _print_status()
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    try:
        lab.restart(args.hosts, progress=not args.quiet)
    except lab.LabError as e:
        make_console(stderr=True).print(f"[red]lab restart failed:[/] {e}", highlight=False)
        return 1
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    try:
        lab.down(args.hosts or None, progress=not args.quiet)
    except lab.LabError as e:
        make_console(stderr=True).print(f"[red]lab down failed:[/] {e}", highlight=False)
        return 1
    return 0


def _print_status() -> None:
    tbl = Table(title="opsbook lab")
    for col in ("host", "address", "running", "ssh", "groups"):
        tbl.add_column(col)
    for row in lab.status():
        tbl.add_row(str(row["name"]), str(row["ip"]), "yes" if row["running"] else "NO",
                    "yes" if row["ssh"] else "no", ",".join(row["groups"]))  # type: ignore[arg-type]
    console = make_console()
    console.print(tbl)
    infra = lab.infra_status()
    console.print(f"bridge {lab.BRIDGE}: {'up' if infra['bridge'] else 'absent'}; "
                    f"apt proxy: {'running' if infra['apt_proxy'] else 'stopped'}; "
                    f"ACME: {infra['acme'] or 'stopped'}; "
                    f"base image: {infra['base_image'] or 'not built'}", highlight=False)


def cmd_status(args: argparse.Namespace) -> int:
    rows = lab.status()
    if args.json:
        print(json.dumps({"hosts": rows, **lab.infra_status()}))
    else:
        _print_status()
    return 0 if all(r["running"] for r in rows) else 1


def cmd_ssh(args: argparse.Namespace) -> int:
    cmd = lab.ssh_command(args.host, [c for c in args.command if c != "--"])
    if not args.command:
        cmd.insert(1, "-t")
    os.execvp(cmd[0], cmd)  # noqa: S606 - replaces this process with ssh, no shell involved
