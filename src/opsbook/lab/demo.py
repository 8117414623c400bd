"""opsbook demo: the main job, end to end, on the lab, with one report of every figure.

lab up → provision web1, db1, store1 (twice: the second run changes nothing) → port scan → deploy 1.0.0 →
notes written → backup (restored and checked) → deploy 2.0.0 under load → a broken 3.0.0 refused under load →
rollback under load → a corrupted backup detected → status → DR drill on a fresh host → report → lab down.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from opsbook import lab, options, paths, runner
from opsbook.commands import drill
from opsbook.commands.backup import command_output
from opsbook.lab import load, portscan

PORTS = "1-1024,3000,5432,8000,8080,8443,9090"
NOTES = 1000


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "demo",
        help="run everything on the lab: provision, deploy, backup, rollback, drill; one report",
        formatter_class=formatter,
        parents=[options.common()],
        description=__doc__,
        epilog="examples:\n  opsbook demo\n  opsbook demo --keep      leave the lab running afterwards",
    )
    p.add_argument("--keep", action="store_true", help="leave the lab running")
    p.set_defaults(func=run)


class Demo:
    """Runs steps in order; each one adds a row (what, result, seconds, ok) to the report."""

    def __init__(self, console: Console, inv: Path, quiet: bool = False) -> None:
        self.console = console
        self.inv = inv
        self.quiet = quiet
        self.rows: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}
        self.ok = True

    def step(self, title: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        rule(self.console, title)
        t = time.monotonic()
        try:
            ok, result = fn()
        except (lab.LabError, OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
            ok, result = False, f"{type(exc).__name__}: {exc}"
        seconds = round(time.monotonic() - t, 1)
        self.rows.append({"step": title, "ok": ok, "seconds": seconds, "result": result})
        self.console.print(f"{'[green]ok[/]' if ok else '[red]FAILED[/]'} {title}: {result} ({seconds} s)",
                           highlight=False)
        self.ok &= ok
        return ok

    def play(self, playbook: str, verb: str, extravars: dict[str, Any] | None = None,
             quiet: bool = False) -> runner.RunResult:
        return runner.run_playbook(playbook, inventory=str(self.inv), verb=verb, extravars=extravars,
                                   quiet=quiet or self.quiet)


def rule(console: Console, title: str) -> None:
    """A titled rule across a terminal; 80 columns in a log (its console does not wrap: runner.make_console)."""
    console.print(Rule(title), width=console.width if console.is_terminal else 80)


def _ssh(name: str, cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*lab.ssh_command(name), cmd], capture_output=True, text=True, timeout=timeout)


def _broken_source(tmp: Path) -> Path:
    """The example app with a release-breaking import: what a bad merge looks like."""
    src = tmp / "broken"
    shutil.copytree(paths.project_root() / "examples" / "app", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info"))
    wsgi = src / "src" / "opsbook_example_app" / "wsgi.py"
    wsgi.write_text(wsgi.read_text() + "\nfrom opsbook_example_app import no_such_module  # a bad merge\n")
    return src


def run(args: argparse.Namespace) -> int:
    console = runner.make_console()
    inv = paths.project_root() / "inventories" / "lab"
    demo = Demo(console, inv, quiet=args.quiet)
    f = demo.figures
    t0 = time.monotonic()
    declared = lab.inventory_hosts(inv)
    hosts: dict[str, lab.Host] = {}
    tmp = Path(tempfile.mkdtemp(prefix="opsbook-demo-"))

    def web() -> lab.Host:
        return next(h for h in hosts.values() if "web" in h.groups)

    def db() -> lab.Host:
        return next(h for h in hosts.values() if "db" in h.groups)

    def site() -> str:
        return f"{web().name}.{lab.LAB_DOMAIN}"

    def lab_up() -> tuple[bool, str]:
        hosts.update({h.name: h for h in lab.up(declared, progress=not args.quiet)})
        return True, ", ".join(f"{h.name} {h.ip}" for h in hosts.values())

    def provision(again: bool) -> Callable[[], tuple[bool, str]]:
        def go() -> tuple[bool, str]:
            r = demo.play("provision.yml", "provision")
            changed = {h: t.changed for h, t in sorted(r.hosts.items())}
            f["provision_second" if again else "provision_first"] = {"seconds": round(r.seconds, 1),
                                                                     "changed": changed}
            ok = r.ok and (not again or all(v == 0 for v in changed.values()))
            return ok, f"changed per host {changed}"
        return go

    def scan() -> tuple[bool, str]:
        client = next(h for h in hosts.values() if "lab_clients" in h.groups)
        seen = {}
        for h in hosts.values():
            if "lab_clients" in h.groups:
                continue
            out = subprocess.run(["ip", "netns", "exec", client.netns, sys.executable, portscan.__file__, h.ip, PORTS],
                                 capture_output=True, text=True, check=True, timeout=300).stdout
            seen[h.name] = json.loads(out)
        f["open_ports_seen_from_client"] = seen
        ok = all(v == ([22, 80, 443] if "web" in hosts[n].groups else [22]) for n, v in seen.items())
        return ok, "; ".join(f"{n}: {v}" for n, v in seen.items())

    def deploy(version: str, under_load: bool, source: Path | None = None, expect_ok: bool = True,
               key: str = "") -> Callable[[], tuple[bool, str]]:
        def go() -> tuple[bool, str]:
            before = load.served_version(web().ip, site())
            extra: dict[str, Any] = {"app_version": version}
            if source:
                extra["app_source_dir"] = str(source)
            figures: dict[str, Any] = {}
            if under_load:
                with load.Load(web().ip, site()) as wrk:
                    r = demo.play("deploy.yml", "deploy", extra)
                figures = {"requests": int(wrk.figures["requests"]), "failed": wrk.failed,
                           "p99_ms": wrk.figures["p99_ms"]}
            else:
                r = demo.play("deploy.yml", "deploy", extra)
            served = load.served_version(web().ip, site())
            f[key or f"deploy_{version}"] = {"seconds": round(r.seconds, 1), "ok": r.ok, "served": served,
                                             **figures}
            load_text = (f"; under wrk -c32: {figures['requests']} requests, {figures['failed']} failed, "
                         f"p99 {figures['p99_ms']} ms" if figures else "")
            if expect_ok:
                return (r.ok and served == version and figures.get("failed", 0) == 0,
                        f"{before or 'nothing'} -> {served}{load_text}")
            why = _failure_text(r)
            return (not r.ok and served == before and figures.get("failed", 0) == 0,
                    f"refused, still serving {served}{load_text}; {why}")
        return go

    def seed() -> tuple[bool, str]:
        sql = f"INSERT INTO notes(body) SELECT 'note ' || g FROM generate_series(1, {NOTES:d}) g"  # noqa: S608
        res = _ssh(db().name, f"cd /tmp && runuser -u postgres -- psql -qAt app -c \"{sql}\"")
        status, body = load.https_get(web().ip, site(), "/notes")
        return res.returncode == 0 and status == 200, f"the app reads back {body}"

    def backup() -> tuple[bool, str]:
        r = demo.play("backup.yml", "backup-run", {"opsbook_backup_action": "run"})
        listing = demo.play("backup.yml", "backup-list", {"opsbook_backup_action": "list"}, quiet=True)
        backups = {h: json.loads(o) for h, o in command_output(listing.results).items() if o.strip().startswith("{")}
        f["backups"] = backups
        newest = [b for v in backups.values() for b in v["backups"]][-1:]
        ok = r.ok and bool(newest) and newest[0]["verification"] == "passed" and newest[0]["latest_good"]
        text = (f"{newest[0]['file']}: {newest[0]['rows']} rows, verification {newest[0]['verification']}, "
                f"latest good; copied to the store") if newest else "no backup listed"
        return ok, text

    def rollback() -> tuple[bool, str]:
        before = load.served_version(web().ip, site())
        with load.Load(web().ip, site()) as wrk:
            r = demo.play("rollback.yml", "rollback")
        served = load.served_version(web().ip, site())
        f["rollback"] = {"seconds": round(r.seconds, 1), "ok": r.ok, "served": served,
                         "requests": int(wrk.figures["requests"]), "failed": wrk.failed,
                         "p99_ms": wrk.figures["p99_ms"]}
        return (r.ok and served == "1.0.0" and wrk.failed == 0,
                f"{before} -> {served}; under wrk -c32: {int(wrk.figures['requests'])} requests, {wrk.failed} failed")

    def corrupt() -> tuple[bool, str]:
        # a copy of the newest dump with one byte flipped, under an older dump's name beside the real ones (the tool
        # takes only the plain name of a dump in its directory), verified like any backup: it must fail on the
        # checksum, not on anything else, and the newest good backup must stay the newest good one
        script = (
            "set -e; d=/var/lib/opsbook/backup; f=$(ls -1 $d/*.dump | tail -n 1); b=$(basename $f .dump); "
            "x=${b%-*}-20000101T000000Z; cp $f $d/$x.dump; cp $d/$b.manifest.json $d/$x.manifest.json; "
            "printf '\\377' | dd of=$d/$x.dump bs=1 seek=200 conv=notrunc status=none; "
            "/usr/local/sbin/opsbook-backup verify $x.dump"
        )
        res = _ssh(db().name, script)
        out = (res.stdout + res.stderr).strip().splitlines()
        listing = _ssh(db().name, "/usr/local/sbin/opsbook-backup list --json")
        latest_ok = '"latest_good": true' in listing.stdout
        _ssh(db().name, "rm -f /var/lib/opsbook/backup/*-20000101T000000Z.*")
        detected = res.returncode != 0 and any("sha256" in line and "differs from the manifest" in line for line in out)
        return detected and latest_ok, f"verify exit {res.returncode}: {out[-1] if out else ''}; " \
            f"latest good backup {'unchanged' if latest_ok else 'LOST'}"

    def status() -> tuple[bool, str]:
        r = demo.play("status.yml", "status", quiet=True)
        return r.ok, "no problem on any host" if r.ok else _failure_text(r)

    def run_drill() -> tuple[bool, str]:
        result, data, report = drill.drill_lab(inv, "drill1", args.keep, args.quiet, time.time())
        if not data:
            return False, _failure_text(result)
        f["drill"] = data
        return True, (f"RTO {data['rto_seconds']} s, RPO {data['rpo_seconds']} s; {data['data']['count']} notes "
                      f"served by {data['release']} on {data['host']} (report {report})")

    try:
        if demo.step("lab up", lab_up):
            demo.step("provision web1, db1, store1", provision(False))
            demo.step("provision again: nothing changes", provision(True))
            demo.step("port scan from client1", scan)
            if demo.step("deploy 1.0.0", deploy("1.0.0", False)):
                demo.step(f"write {NOTES} notes through PostgreSQL", seed)
                demo.step("backup: dump, restore into a scratch database, check, copy to the store", backup)
                demo.step("deploy 2.0.0 under load", deploy("2.0.0", True))
                demo.step("deploy a broken 3.0.0 under load: refused", deploy("3.0.0", True, _broken_source(tmp),
                                                                                 expect_ok=False))
                demo.step("rollback under load", rollback)
                demo.step("a corrupted backup is detected", corrupt)
                if (paths.project_root() / "playbooks" / "status.yml").exists():
                    demo.step("status: releases, backups, certificates", status)
                demo.step("DR drill: fresh host, newest verified backup, live release", run_drill)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not args.keep:
            rule(console, "lab down")
            lab.down([h.name for h in declared], progress=not args.quiet)
    f["total_seconds"] = round(time.monotonic() - t0, 1)
    f["result"] = "ok" if demo.ok else "failed"
    f["steps"] = demo.rows
    report = runner.write_report("demo", f)
    md = report.with_suffix(".md")
    md.write_text(markdown(f))
    _print_table(console, f)
    console.print(f"report: {report} and {md}")
    return 0 if demo.ok else 2


def _failure_text(r: runner.RunResult) -> str:
    try:
        failures = json.loads(Path(r.report).read_text()).get("failures", [])
        # a refusal's own message says it all (the failed check it rescued is in the run's report)
        refusals = [x for x in failures if "REFUSED" in str(x.get("message"))]
        return "; ".join(f"{x['host']}: {x['message']}" for x in refusals or failures)[:400] or "failed"
    except (OSError, ValueError):
        return "failed"


def markdown(f: dict[str, Any]) -> str:
    lines = ["# opsbook demo", "", f"Result: **{f['result']}** in {f['total_seconds']} s", "",
             "| step | ok | seconds | result |", "| --- | --- | --- | --- |"]
    for r in f["steps"]:
        text = str(r["result"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['step']} | {'yes' if r['ok'] else '**NO**'} | {r['seconds']} | {text} |")
    return "\n".join(lines) + "\n"


def _print_table(console: Console, f: dict[str, Any]) -> None:
    tbl = Table(title=f"opsbook demo: {f['result']} in {f['total_seconds']} s")
    tbl.add_column("step")
    tbl.add_column("s", justify="right")
    tbl.add_column("result")
    for r in f["steps"]:
        tbl.add_row(r["step"], str(r["seconds"]), ("" if r["ok"] else "[red]FAILED[/] ") + str(r["result"]))
    console.print(tbl)
