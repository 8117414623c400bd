"""opsbook drill: a DR drill with measured RTO and RPO (playbooks/drill.yml).

On the lab (an inventory without a `drill` group) a fresh lab host is booted, added to the groups drill, web and
db of a copy of the inventory, drilled and torn down (unless --keep). With an inventory that has a `drill` group,
its hosts are drilled as they are and left alone.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from opsbook import options, paths, runner

if TYPE_CHECKING:
    from opsbook import lab  # the lab itself is imported only when a lab host is booted (tests/unit/test_boundary.py)

HOST_VARS = {
    # the drill host's app uses the drill host's own (restored) database, and sends no backups anywhere
    "app_secret_env": {"DATABASE_URL": "postgresql://app:{{ postgresql_app_password }}@127.0.0.1:5432/app"},
    "backup_store_host": "",
}


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "drill",
        help="DR drill: fresh host, provision, restore the newest verified backup, deploy, smoke, RTO/RPO",
        formatter_class=formatter,
        parents=[options.playbook()],
        description=(
            "Run playbooks/drill.yml: a fresh host built only from the inventory, the newest verified backup from\n"
            "the backup store and the release live now, serving again. RTO (start to healthy) and RPO (healthy\n"
            "minus the backup's snapshot time) are measured and written to .opsbook/drills/ as JSON and Markdown."
        ),
        epilog="examples:\n  opsbook drill\n  opsbook drill --keep            leave the drill host running\n"
               "  opsbook drill -i inventories/prod   drill the hosts of its `drill` group",
    )
    p.add_argument("--host", default="drill1", help="lab: name of the drill host to boot (default drill1)")
    p.add_argument("--keep", action="store_true", help="lab: leave the drill host running")
    p.set_defaults(func=run)


def drill_inventory(source: Path, dest: Path, host: lab.Host) -> Path:
    """A copy of a lab-shaped inventory with `host` in the groups drill, web and db, and its drill host vars."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    data = yaml.safe_load((source / "hosts.yml").read_text()) if (source / "hosts.yml").is_file() else {}
    children = data.setdefault("all", {}).setdefault("children", {})
    for group in ("drill", "web", "db"):
        node = children.setdefault(group, {}) or {}
        children[group] = node
        node.setdefault("hosts", {})
        node["hosts"] = node["hosts"] or {}
        node["hosts"][host.name] = {"ansible_host": host.ip}
    (dest / "hosts.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    for sub in ("group_vars", "host_vars"):
        if (source / sub).is_dir():
            shutil.copytree(source / sub, dest / sub)
    (dest / "host_vars").mkdir(exist_ok=True)
    (dest / "host_vars" / f"{host.name}.yml").write_text("---\n" + yaml.safe_dump(HOST_VARS, sort_keys=False))
    return dest


def has_drill_group(inventory: Path) -> bool:
    hosts = inventory / "hosts.yml"
    if not hosts.is_file():
        return False
    data = yaml.safe_load(hosts.read_text()) or {}
    drill = ((data.get("all") or {}).get("children") or {}).get("drill") or {}
    return bool(drill.get("hosts"))


def latest_report(reports: Path, host: str) -> Path | None:
    found = sorted(reports.glob(f"drill-{host}-*.json"))
    return found[-1] if found else None


def markdown(report: Path) -> str:
    md = report.with_suffix(".md")
    return md.read_text() if md.is_file() else ""


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    # checked before its groups are read (and before a lab host boots): missing, unparsable or empty is exit 1
    inv, _ = runner.check_inventory(args.inventory or str(paths.project_root() / "inventories" / "lab"))
    ansible = options.ansible(args)
    reports = paths.state_dir() / "drills"
    if has_drill_group(inv):
        result = runner.run_playbook("drill.yml", inventory=str(inv), verb="drill", check=args.check,
                                     limit=f"drill:&{args.limit}" if args.limit else "drill",
                                     extravars={"drill_started_at": t0}, quiet=args.quiet, ansible=ansible)
        for path in sorted(reports.glob("drill-*.json")):
            if path.stat().st_mtime >= t0:
                print(markdown(path))
        if not result.ok:
            print(f"drill failed: see {result.report}")
        return runner.exit_code(result)
    if args.limit:
        raise SystemExit(f"opsbook drill: --limit selects among the hosts of a `drill` group; {inv} has none")
    from opsbook import lab  # only here: a lab host is booted

    try:
        result, data, report = drill_lab(inv, args.host, args.keep, args.quiet, t0, ansible=ansible,
                                         check=args.check)
    except lab.LabError as exc:
        raise SystemExit(f"opsbook drill: {inv} has no `drill` group, and the lab could not boot one: {exc}") from exc
    if data and report:
        print(markdown(report))
        print(f"RTO {data['rto_seconds']} s, RPO {data['rpo_seconds']} s — report {report}")
    return runner.exit_code(result)


def measures(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each drilled host's measures (RTO, RPO, backup, release...) from the run's results: the statistic opsbook_drill
    (docs/results.md), never a task's name."""
    return {str(h): dict(m) for h, m in (results.get("opsbook_drill") or {}).items() if isinstance(m, dict)}


def drill_lab(inv: Path, name: str, keep: bool, quiet: bool, t0: float, extravars: dict[str, Any] | None = None,
              ansible: runner.AnsibleOptions | None = None,
              check: bool = False) -> tuple[runner.RunResult, dict[str, Any] | None, Path | None]:
    """Boot lab host NAME, drill it against a copy of the lab-shaped inventory INV, tear it down unless keep.

    Returns the run, the drill report's data (None if the drill failed) and the report's path."""
    from opsbook import lab  # only here: a lab host is booted

    reports = paths.state_dir() / "drills"
    host = lab.up([lab.Host(name=name, ip="")], progress=not quiet)[0]
    try:
        drill_inv = drill_inventory(inv, reports / f"inventory-{host.name}", host)
        result = runner.run_playbook("drill.yml", inventory=str(drill_inv), limit=host.name, verb="drill",
                                     check=check, extravars={"drill_started_at": t0, **(extravars or {})},
                                     quiet=quiet, ansible=ansible)
        report = latest_report(reports, host.name)
        data = measures(result.results).get(host.name)
        if result.ok and data and report and report.stat().st_mtime >= t0:
            return result, data, report
        return result, None, None
    finally:
        if not keep:
            lab.down([host.name], progress=not quiet)
