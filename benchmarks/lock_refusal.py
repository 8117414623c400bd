#!/usr/bin/env python3
"""Benchmark (not a test): how long a second `opsbook deploy` takes to be refused while one is running.

A lab web host (default bench-lock) is provisioned and gets release 7.0.0. Then, ROUNDS times each idle and under
wrk load (2 threads, 32 connections on https://HOST/ from this machine): deploy A (a new release) is started,
and as soon as the host's operation lock names A, deploy B (another release) is started; B must be refused
naming A's run. B runs on the same controller as A (this controller's lock refuses it before Ansible starts) and,
with a state directory of its own, as from another controller (the host's lock refuses it). Printed per round:
B's wall seconds from the command to its exit (the figure of acceptance 4: at most 5 s), and where they went,
read from B's ansible-runner events when it ran Ansible: the CLI before Ansible (imports, the inventory check,
runner setup), ansible-playbook's start-up to its first event, the tasks before the lock task, the lock task (and
the lock command's own time on the host), the rest (recap, report). Both deploys use artifacts built beforehand,
as `opsbook deploy path/app-V.tar.gz` does.

Run as root: .venv/bin/python benchmarks/lock_refusal.py [--host NAME] [--rounds N] [--keep] [--no-load]
  [--controllers same,other]
--keep leaves the host up (and its inventory in .opsbook/bench-lock/NAME) for another run, which reuses it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from opsbook import lab, paths, runner
from opsbook.lab import load

ROOT = Path(__file__).resolve().parents[1]
FAST = {"common_apt_upgrade": False, "common_aide_enabled": False}
VERSIONS = ("7.0.1", "7.0.2")  # versions no test builds (the build directory is shared)


def opsbook(*args: str, state: Path | None = None) -> subprocess.Popen[str]:
    """opsbook ARGS; STATE: another state directory, as the same command on another controller would have."""
    env = dict(os.environ, OPSBOOK_ROOT=str(ROOT), NO_COLOR="1", COLUMNS="200")
    if state:
        env["OPSBOOK_STATE"] = str(state)
    exe = str(Path(sys.executable).parent / "opsbook")
    return subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=ROOT)


def build(version: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "roles/app/files/opsbook-app-build"), str(ROOT / "examples/app"),
                          "--out", str(paths.state_dir() / "build"), "--name", "app", "--version", version, "--force"],
                         capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)["artifact"])


def ssh(host: str, cmd: str) -> str:
    return subprocess.run([*lab.ssh_command(host), cmd], capture_output=True, text=True, timeout=60).stdout


def setup(host: str) -> tuple[Path, str]:
    """The host up and provisioned with 1.0.0 live (reused when a --keep run left it); its inventory and address."""
    inv = paths.state_dir() / "bench-lock" / host
    running = {h.name: h for h in lab.load_hosts()}
    if host in running and (inv / "hosts.yml").is_file():
        return inv, running[host].ip
    lab.down([host], progress=False)
    h = lab.up([lab.Host(name=host, ip="")], progress=False)[0]
    shutil.rmtree(inv, ignore_errors=True)
    inv.mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump(
        {"all": {"children": {"web": {"hosts": {host: {"ansible_host": h.ip}}}}, "vars": FAST}}))
    shutil.copytree(ROOT / "inventories/lab/group_vars", inv / "group_vars")
    for args in (("provision",), ("deploy", build("7.0.0"))):
        p = opsbook(*args, "-i", str(inv), "--quiet")
        out = p.communicate()[0]
        if p.returncode != 0:
            (inv / "hosts.yml").unlink()
            raise SystemExit(f"{' '.join(args)} of {host} failed:\n{out[-3000:]}")
    return inv, h.ip


def newest_report(after: float, state: Path | None = None) -> dict[str, Any]:
    runs = [p for p in ((state or paths.state_dir()) / "runs").glob("*-deploy*.json") if p.stat().st_mtime >= after]
    for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True):
        data = json.loads(p.read_text())
        if any("is busy" in f["message"] for f in data.get("failures", [])):
            return dict(data)
    raise SystemExit("no refused deploy report")


def phases(report: dict[str, Any], launched: float, ended: float) -> dict[str, float]:
    """Where the refused run's seconds went (wall clock, from its events' timestamps). A refusal by this
    controller's own lock ran no Ansible: all of it is the CLI's."""
    if report.get("refused_by") == "controller lock":
        total = round(ended - launched, 2)
        return {"total": total, "cli_outside_ansible": total, "cli_before_ansible": total, "ansible_startup": 0,
                "before_lock_task": 0, "lock_task": 0, "lock_on_host": -1, "after_lock_task": 0,
                "refused_by": "controller lock"}
    at: dict[str, float] = {}
    for path in Path(report["artifacts"]).glob("**/job_events/*.json"):
        ev = json.loads(path.read_text())
        data = ev.get("event_data") or {}
        task = str(data.get("task") or "")
        t = dt.datetime.fromisoformat(ev["created"]).replace(tzinfo=dt.UTC).timestamp()
        at["first_event"] = min(at.get("first_event", t), t)
        if ev["event"] == "playbook_on_task_start" and task.startswith("Take the operation lock"):
            at["lock"] = t
        elif ev["event"] in ("runner_on_failed", "runner_on_ok") and task.startswith("Take the operation lock"):
            at["locked"] = t
            if "delta" in data["res"]:  # the command module times the command on the host; raw does not
                h, m, s = str(data["res"]["delta"]).split(":")
                at["on_host"] = int(h) * 3600 + int(m) * 60 + float(s)
    cli = ended - launched - float(report["seconds"])  # before ansible-runner started and after it ended
    return {
        "total": round(ended - launched, 2),
        "cli_outside_ansible": round(cli, 2),
        "cli_before_ansible": round(cli_before(report, launched), 2),
        "ansible_startup": round(at["first_event"] - launched - cli_before(report, launched), 2),
        "before_lock_task": round(at["lock"] - at["first_event"], 2),
        "lock_task": round(at["locked"] - at["lock"], 2),
        "lock_on_host": round(at["on_host"], 2) if "on_host" in at else -1,
        "after_lock_task": round(ended - at["locked"], 2),
        "refused_by": "host lock",
    }


def cli_before(report: dict[str, Any], launched: float) -> float:
    """Seconds from the command's start to ansible-runner's start (its artifact directory is named by that time)."""
    name = Path(report["artifacts"]).name  # 20261130T083000.123456Z
    started = dt.datetime.strptime(name, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.UTC).timestamp()
    return started - launched


def round_once(host: str, inv: Path, artifacts: dict[str, str], a: str, b: str,
               state: Path | None = None) -> dict[str, Any]:
    launched_a = time.time()
    pa = opsbook("deploy", artifacts[a], "-i", str(inv), "--quiet")
    while f"deploy {a}" not in ssh(host, "/usr/local/sbin/opsbook-lock status"):
        if pa.poll() is not None:
            raise SystemExit(f"deploy {a} ended before taking the lock:\n{pa.communicate()[0][-3000:]}")
        time.sleep(0.2)
    launched = time.time()
    pb = opsbook("deploy", artifacts[b], "-i", str(inv), state=state)  # not --quiet: it hides the refusal
    out_b = pb.communicate()[0]
    ended = time.time()
    out_a = pa.communicate()[0]
    flat = " ".join(out_b.split())
    named = f"is busy: deploy {a} by" in flat
    res = {"a_ok": pa.returncode == 0, "a_seconds": round(time.time() - launched_a, 1),
           "b_exit": pb.returncode, "b_named_holder": named}
    if pb.returncode != 2 or not named or pa.returncode != 0:
        res["output"] = {"a": out_a[-2000:], "b": out_b[-2000:]}
    if pb.returncode != 2 or not named:
        return res
    return res | phases(newest_report(launched - 1, state), launched, ended)


def measure(host: str, inv: Path, ip: str, rounds: int, under_load: bool, start: int,
            nice: int = 0, state: Path | None = None) -> list[dict[str, Any]]:
    artifacts = {v: build(v) for v in VERSIONS}
    out = []
    for n in range(rounds):
        a, b = VERSIONS[(start + n) % 2], VERSIONS[(start + n + 1) % 2]
        if under_load:
            with load.Load(ip, f"{host}.opsbook.test", nice=nice) as wrk:
                r = round_once(host, inv, artifacts, a, b, state)
            r |= {"requests": int(wrk.figures["requests"]), "failed": wrk.failed}
        else:
            r = round_once(host, inv, artifacts, a, b, state)
        print(json.dumps({"load": under_load, "wrk_nice": nice, "other_controller": bool(state), **r}), flush=True)
        out.append(r)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="bench-lock")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--no-load", action="store_true", help="idle rounds only")
    p.add_argument("--no-idle", action="store_true", help="rounds under load only")
    p.add_argument("--wrk-nice", type=int, default=0, metavar="N",
                   help="also run the rounds under load with wrk at nice N (a load generator that does not take "
                        "this machine's cores from the controller and the web host, as on its own machine)")
    p.add_argument("--controllers", default="same,other", metavar="same,other",
                   help="where deploy B runs: `same` as A (this controller's lock refuses it before Ansible starts), "
                        "`other`: with a state directory of its own, as from another controller (the host's lock "
                        "refuses it); default both")
    a = p.parse_args()
    inv, ip = setup(a.host)
    results: dict[str, list[dict[str, Any]]] = {}
    other = inv.parent / f"{a.host}-other-controller-state"  # never inside the inventory: Ansible would read it
    other.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):  # a controller that has run before has checked this inventory already
        shutil.copy(paths.state_dir() / runner.CHECKED_INVENTORIES, other / runner.CHECKED_INVENTORIES)
    try:
        for where in a.controllers.split(","):
            state = other if where == "other" else None
            tag = f"B from {'another' if state else 'the same'} controller"
            if not a.no_idle:
                results[f"{tag}, idle"] = measure(a.host, inv, ip, a.rounds, False, 0, state=state)
            if not a.no_load:
                results[f"{tag}, wrk -c32"] = measure(a.host, inv, ip, a.rounds, True, a.rounds, state=state)
                if a.wrk_nice:
                    results[f"{tag}, wrk -c32 nice {a.wrk_nice}"] = measure(a.host, inv, ip, a.rounds, True,
                                                                            a.rounds, a.wrk_nice, state)
    finally:
        if not a.keep:
            lab.down([a.host], progress=False)
            shutil.rmtree(inv, ignore_errors=True)
    keys = ("total", "cli_outside_ansible", "cli_before_ansible", "ansible_startup", "before_lock_task", "lock_task",
            "lock_on_host", "after_lock_task")
    print(f"{'refused deploy (median s)':<44}" + "".join(f"{k:>20}" for k in keys) + f"{'failed req':>11}")
    ok = True
    for name, rs in results.items():
        good = [r for r in rs if "total" in r]
        ok = ok and len(good) == len(rs) and all(r.get("failed", 0) == 0 and r["a_ok"] for r in rs)
        if good:
            print(f"{name:<44}" + "".join(f"{statistics.median(r[k] for r in good):>20}" for k in keys)
                  + f"{sum(r.get('failed', 0) for r in rs):>11}")
        worst = max((r["total"] for r in good), default=None)
        print(f"  {name}: {len(good)}/{len(rs)} rounds refused naming the holder; worst total {worst} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
