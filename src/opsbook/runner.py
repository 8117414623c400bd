"""Run a playbook through ansible-runner, show live per-host progress, write a JSON report.

The wrapper adds display, reports and exit codes; every decision lives in the playbooks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
from rich.console import Console
from rich.live import Live
from rich.table import Table

from opsbook import paths

FAILED_EVENTS = {"runner_on_failed"}
UNREACHABLE_EVENTS = {"runner_on_unreachable"}


@dataclass
class HostTally:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: int = 0
    task: str = ""
    messages: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    playbook: str
    rc: int
    status: str
    hosts: dict[str, HostTally]
    report: Path
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not any(t.failed or t.unreachable for t in self.hosts.values())


def _event_message(data: dict[str, Any]) -> str:
    res = data.get("res") or {}
    if not isinstance(res, dict):
        return str(res)
    if res.get("_ansible_no_log"):
        return "(output hidden: no_log)"
    items = res.get("results")
    if isinstance(items, list):  # a loop: the failed items say what went wrong
        msgs = [_event_message({"res": i}) for i in items if isinstance(i, dict) and i.get("failed")]
        if msgs:
            return "; ".join(msgs)
    msg = str(res.get("msg") or "").strip()
    detail = str(res.get("stderr") or res.get("module_stderr") or "").strip()
    if msg == "non-zero return code":  # a failed command: what it said is the message
        out = detail or str(res.get("stdout") or "").strip()
        lines = out.splitlines()[-8:]
        return f"exit {res.get('rc')}: " + " | ".join(lines) if lines else f"exit {res.get('rc')}"
    if msg or detail:
        return msg or detail
    return json.dumps({k: v for k, v in res.items() if not k.startswith("_")})[:500]


class Progress:
    """Collects runner events into per-host tallies and renders them as a live table."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostTally] = defaultdict(HostTally)
        self.play = ""
        self.task = ""
        self.failures: list[dict[str, str]] = []
        self.diffs: list[dict[str, Any]] = []

    def handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host") or data.get("remote_addr")
        if kind == "playbook_on_play_start":
            self.play = data.get("play", "")
        elif kind == "playbook_on_task_start":
            role = data.get("role")
            self.task = f"{role} : {data.get('task', '')}" if role else data.get("task", "")
        elif kind.startswith("runner_on_") and host and kind != "runner_on_start":
            t = self.hosts[host]
            role = data.get("role")
            t.task = f"{role} : {data.get('task', '')}" if role else data.get("task", "")
            res = data.get("res") or {}
            if kind == "runner_on_ok":
                if isinstance(res, dict) and res.get("changed"):
                    t.changed += 1
                else:
                    t.ok += 1
                if isinstance(res, dict) and res.get("diff") and res.get("changed"):
                    self.diffs.append({"host": host, "task": t.task, "diff": res["diff"]})
            elif kind == "runner_on_skipped":
                t.skipped += 1
            elif kind in FAILED_EVENTS and not data.get("ignore_errors"):
                t.failed += 1
                msg = _event_message(data)
                t.messages.append(f"{t.task}: {msg}")
                self.failures.append({"host": host, "task": t.task, "message": msg})
            elif kind in UNREACHABLE_EVENTS:
                t.unreachable += 1
                msg = _event_message(data)
                t.messages.append(f"{t.task}: unreachable: {msg}")
                self.failures.append({"host": host, "task": t.task, "message": f"unreachable: {msg}"})
        return True

    def table(self) -> Table:
        tbl = Table(title=f"{self.play} — {self.task}" if self.play else "starting", expand=False)
        for col in ("host", "ok", "changed", "failed", "unreachable", "skipped", "last task"):
            tbl.add_column(col)
        for name in sorted(self.hosts):
            t = self.hosts[name]
            style = "red" if t.failed or t.unreachable else ("yellow" if t.changed else "green")
            tbl.add_row(name, str(t.ok), str(t.changed), str(t.failed), str(t.unreachable), str(t.skipped),
                        t.task[:60], style=style)
        return tbl


def _render_diff(console: Console, diffs: list[dict[str, Any]]) -> None:
    for item in diffs:
        entries = item["diff"] if isinstance(item["diff"], list) else [item["diff"]]
        for d in entries:
            if not isinstance(d, dict):
                continue
            header = d.get("after_header") or d.get("before_header") or ""
            console.print(f"[bold]{item['host']}[/] {item['task']} {header}")
            if "prepared" in d:
                console.print(d["prepared"], markup=False, highlight=False)
            elif "before" in d or "after" in d:
                import difflib

                before = str(d.get("before", "")).splitlines(keepends=True)
                after = str(d.get("after", "")).splitlines(keepends=True)
                text = "".join(difflib.unified_diff(before, after, "before", "after"))
                console.print(text or "(state change)", markup=False, highlight=False)


def run_playbook(
    playbook: str,
    inventory: str | None = None,
    limit: str | None = None,
    check: bool = False,
    diff: bool = False,
    extravars: dict[str, Any] | None = None,
    verb: str | None = None,
    quiet: bool = False,
) -> RunResult:
    root = paths.project_root()
    inv = inventory or str(root / "inventories" / "lab")
    cmdline = []
    if check:
        cmdline.append("--check")
    if diff or check:
        cmdline.append("--diff")
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    artifacts = paths.state_dir() / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    _prune(artifacts, keep=20)
    (artifacts / run_id).mkdir()
    console = Console(stderr=True, quiet=quiet)
    progress = Progress()
    envvars = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        # the ansible-* commands of the environment opsbook runs in, even when it is called by its full path
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    start = time.monotonic()
    with Live(progress.table(), console=console, refresh_per_second=4, transient=False,
              auto_refresh=console.is_terminal) as live:

        def on_event(event: dict[str, Any]) -> bool:
            progress.handle(event)
            if console.is_terminal:
                live.update(progress.table())
            elif event.get("event") == "playbook_on_task_start" and not quiet:
                console.print(f"  [{progress.play}] {progress.task}", highlight=False, soft_wrap=True, markup=False)
            return True

        r = ansible_runner.run(
            private_data_dir=str(artifacts / run_id),
            project_dir=str(root),
            playbook=str(root / "playbooks" / playbook),
            inventory=inv,
            limit=limit,
            cmdline=" ".join(cmdline) or None,
            extravars=extravars or {},
            envvars=envvars,
            event_handler=on_event,
            quiet=True,
            ident=run_id,
        )
        live.update(progress.table())
    seconds = time.monotonic() - start
    stats = r.stats or {}
    # the recap is the authority; events give the messages
    for key, attr in (("ok", "ok"), ("changed", "changed"), ("failures", "failed"), ("dark", "unreachable"),
                      ("skipped", "skipped")):
        for host, n in (stats.get(key) or {}).items():
            tally = progress.hosts[host]
            if key == "ok":
                tally.ok = n - (stats.get("changed") or {}).get(host, 0)
            else:
                setattr(tally, attr, n)
    if check or diff:
        _render_diff(console, progress.diffs)
    report = write_report(verb or playbook.removesuffix(".yml"), {
        "playbook": playbook,
        "inventory": inv,
        "limit": limit,
        "check": check,
        "status": r.status,
        "rc": r.rc,
        "seconds": round(seconds, 2),
        "hosts": {h: {k: v for k, v in vars(t).items()} for h, t in sorted(progress.hosts.items())},
        "failures": progress.failures,
        "artifacts": str(artifacts / run_id),
    })
    result = RunResult(playbook, int(r.rc or 0), str(r.status), dict(progress.hosts), report, seconds)
    if not quiet:
        summarize(console, result, progress)
    return result


def _prune(directory: Path, keep: int) -> None:
    """Keep the newest runner artifact directories (one per run); the JSON reports are kept forever."""
    import shutil

    old = sorted((d for d in directory.iterdir() if d.is_dir()), key=lambda d: d.name)[:-keep or None]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)


def summarize(console: Console, result: RunResult, progress: Progress) -> None:
    for f in progress.failures:
        console.print(f"[red]FAILED[/] {f['host']} · {f['task']}: {f['message']}", highlight=False)
    if any(t.unreachable for t in result.hosts.values()):
        console.print("[yellow]hint:[/] an unreachable host stopped where it was; configs are replaced atomically and "
                      "validated, so none is half-written. Restore SSH access and run again.", highlight=False)
    word = "[green]ok[/]" if result.ok else "[red]failed[/]"
    console.print(f"{result.playbook}: {word} in {result.seconds:.1f} s — report {result.report}")


def write_report(verb: str, data: dict[str, Any]) -> Path:
    runs = paths.state_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = runs / f"{stamp}-{verb}.json"
    n = 1
    while path.exists():
        path = runs / f"{stamp}-{verb}-{n}.json"
        n += 1
    data = {"verb": verb, "finished": dt.datetime.now(dt.UTC).isoformat(), **data}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def task_results(report: Path, task: str) -> dict[str, dict[str, Any]]:
    """The result of one named task per host (the last one wins), read from the run's ansible-runner events."""
    try:
        artifacts = Path(json.loads(report.read_text())["artifacts"])
    except (OSError, ValueError, KeyError):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(artifacts.glob("**/job_events/*.json"), key=lambda p: int(p.name.split("-", 1)[0])):
        try:
            event = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data = event.get("event_data") or {}
        if event.get("event") in ("runner_on_ok", "runner_on_failed") and data.get("task") == task:
            out[str(data.get("host", "?"))] = dict(data.get("res") or {})
    return out


def exit_code(result: RunResult) -> int:
    if result.ok:
        return 0
    if any(t.unreachable for t in result.hosts.values()):
        return 3
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the opsbook command")
