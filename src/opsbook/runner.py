"""Run a playbook through ansible-runner, show live per-host progress, write a JSON report.

The wrapper adds display, reports and exit codes; every decision lives in the playbooks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
import yaml
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from opsbook import oplock, paths
from opsbook.values import VAR_NAME

FAILED_EVENTS = {"runner_on_failed"}
UNREACHABLE_EVENTS = {"runner_on_unreachable"}
# an inventory source that does not parse fails the run (Ansible's default is a warning and no hosts)
STRICT_INVENTORY_ENV = {
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
    "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
}
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class UsageError(SystemExit):
    """A request that can't be run (inventory, limit, value): the message, exit 1, and nothing ran."""


@dataclass(frozen=True)
class AnsibleOptions:
    """Ansible's own options, passed to ansible-playbook as given: the operator's own Ansible input (options.py)."""

    extra_vars: tuple[str, ...] = ()  # each one `-e VALUE`, after the CLI's own (so they win, as in Ansible)
    tags: tuple[str, ...] = ()
    skip_tags: tuple[str, ...] = ()
    verbosity: int = 0
    diff: bool = False

    def args(self) -> list[str]:
        out: list[str] = []
        for value in self.extra_vars:
            out += ["-e", value]
        if self.tags:
            out += ["--tags", ",".join(self.tags)]
        if self.skip_tags:
            out += ["--skip-tags", ",".join(self.skip_tags)]
        if self.verbosity:
            out.append("-" + "v" * min(self.verbosity, 6))
        return out


def make_console(stderr: bool = False, quiet: bool = False) -> Console:
    """A Rich console that wraps for a terminal only: without one (a CI log, `| tee`) lines stay whole.

    Rich assumes 80 columns when the output is not a terminal and wraps text and tables there, mid-word; a log
    should read as well as the screen. COLUMNS, if set, still decides."""
    con = Console(stderr=stderr, quiet=quiet)
    if con.is_terminal or os.environ.get("COLUMNS"):
        return con
    return Console(stderr=stderr, quiet=quiet, width=LOG_WIDTH, soft_wrap=True)


LOG_WIDTH = 10_000  # "no wrapping": wider than any table or message opsbook prints


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
    error: str = ""  # why the run as a whole failed (Ansible's own words), when no host's task says it
    results: dict[str, Any] = field(default_factory=dict)  # what the plays published with set_stats (docs/results.md)

    @property
    def no_hosts(self) -> bool:
        """Nothing ran: no play matched a host (an empty recap). Never a success."""
        return not self.hosts

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.no_hosts and not any(t.failed or t.unreachable for t in self.hosts.values())


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
        self.results: dict[str, Any] = {}

    def handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host") or data.get("remote_addr")
        if kind == "runner_on_file_diff" and host and str(event.get("stdout") or "").strip():
            # Ansible's own rendering of a diff (its default callback prints it only for a change)
            self.diffs.append({"host": host, "task": self.task, "text": str(event["stdout"])})
        elif kind == "playbook_on_stats":  # the run's set_stats (per_host: false), as ansible-runner and AWX keep them
            self.results = dict(data.get("artifact_data") or {})
        elif kind == "playbook_on_play_start":
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
        tbl = Table(title=Text(f"{self.play} — {self.task}" if self.play else "starting"), expand=False)
        for col in ("host", "ok", "changed", "failed", "unreachable", "skipped", "last task"):
            tbl.add_column(col)
        for name in sorted(self.hosts):
            t = self.hosts[name]
            style = "red" if t.failed or t.unreachable else ("yellow" if t.changed else "green")
            tbl.add_row(Text(name), str(t.ok), str(t.changed), str(t.failed), str(t.unreachable), str(t.skipped),
                        Text(t.task[:60]), style=style)
        return tbl


def _render_diff(console: Console, diffs: list[dict[str, Any]]) -> None:
    """The diffs as Ansible rendered them (--diff), each under the host and task it belongs to."""
    for item in diffs:
        console.print(Text.assemble((str(item["host"]), "bold"), f" {item['task']}"))
        console.print(Text.from_ansi(item["text"].replace("\r\n", "\n")))


def _ansible_env(root: Path) -> dict[str, str]:
    """The environment of every Ansible command opsbook runs (added to the caller's own)."""
    return {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        # the ansible-* commands of the environment opsbook runs in, even when it is called by its full path
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        **STRICT_INVENTORY_ENV,
    }


def _ansible_said(text: str, limit: int = 30) -> str:
    """Ansible's error output without colours and blank lines, at most the last LIMIT lines."""
    lines = [line.rstrip() for line in ANSI.sub("", text).splitlines() if line.strip()]
    return "\n".join(lines[-limit:])


def _list_hosts(inventory: Path, limit: str | None, root: Path, pattern: str = "all") -> tuple[int, list[str], str]:
    cmd = ["ansible", pattern, "-i", str(inventory), "--list-hosts"] + (["--limit", limit] if limit else [])
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env={**os.environ, **_ansible_env(root)},
                         check=False)
    hosts = [line.strip() for line in res.stdout.splitlines()[1:] if line.strip()] if res.returncode == 0 else []
    return res.returncode, hosts, res.stderr


CHECKED_INVENTORIES = "inventory-checks.json"
CHECKED_INVENTORIES_KEEP = 32


def _inventory_key(path: Path, limit: str | None, root: Path, pattern: str = "all") -> str:
    """What a check's answer depends on: every file of the inventory (name, size, mtime), the limit, the host
    pattern, ansible.cfg.

    A changed, added or removed file gives a new key, so the inventory is checked again."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    parts = [str(path), limit or "", pattern]
    for f in [*files, root / "ansible.cfg"]:
        with contextlib.suppress(OSError):
            st = f.stat()
            parts.append(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _checked_inventories() -> dict[str, list[str]]:
    try:
        data = json.loads((paths.state_dir() / CHECKED_INVENTORIES).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list)} if isinstance(data, dict) else {}


def _remember_inventory(key: str, hosts: list[str]) -> None:
    """Remember an inventory that parsed and selected hosts, so an unchanged one is not parsed twice per command.

    Only a skip of this pre-check: the run itself parses the inventory strictly (STRICT_INVENTORY_ENV) and a run
    that matched no host still fails (exit 2). It saves a whole `ansible --list-hosts` (2-8 s on a busy 2-core
    machine) before a deploy that a held lock should refuse at once."""
    target = paths.state_dir() / CHECKED_INVENTORIES
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    with contextlib.suppress(OSError), _flocked(target.with_name(f".{target.name}.lock")):
        # read, add, replace under one lock: two runs remembering at once would otherwise drop one's answer
        data = _checked_inventories()
        data.pop(key, None)
        data[key] = hosts
        data = dict(list(data.items())[-CHECKED_INVENTORIES_KEEP:])
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, target)


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_inventory(inventory: str, limit: str | None = None, root: Path | None = None,
                    pattern: str = "all") -> tuple[Path, list[str]]:
    """The inventory's absolute path and the hosts of PATTERN it (and the limit) selects, as Ansible parses them.

    Raises UsageError naming the path (or the limit) when it is missing, unreadable, does not parse or selects no
    host: ansible-runner would take a path it can't find for inventory text, and Ansible runs an inventory that
    does not parse as an empty one; either way nothing would run and the run would say ok. A PATTERN (a playbook's
    hosts, such as web) that selects none of an inventory that passes gives no hosts: the run then says that no
    host matched."""
    root = root or paths.project_root()
    path = Path(inventory).expanduser()
    if not path.exists():
        raise UsageError(f"opsbook: inventory {inventory}: no such file or directory (-i takes an inventory path)")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise UsageError(f"opsbook: inventory {inventory}: not readable")
    path = path.resolve()
    key = _inventory_key(path, limit, root, pattern)
    cached = _checked_inventories().get(key)
    if cached:
        return path, cached
    rc, hosts, err = _list_hosts(path, limit, root, pattern)
    if rc == 0 and hosts:
        _remember_inventory(key, hosts)
        return path, hosts
    if pattern != "all":
        check_inventory(str(path), limit, root)
        return path, []
    if limit:  # the same without the limit says whether the inventory or the limit selects nothing
        rc_all, all_hosts, err_all = _list_hosts(path, None, root)
        if rc_all == 0 and all_hosts:
            raise UsageError(f"opsbook: --limit {limit} matches no host of inventory {path} "
                             f"(it has {len(all_hosts)}: {', '.join(all_hosts[:10])})")
        rc, err = rc_all, err_all
    if "no hosts to target" in err or rc == 0:
        raise UsageError(f"opsbook: inventory {path} has no hosts")
    raise UsageError(f"opsbook: inventory {path} does not parse; Ansible said:\n{_ansible_said(err)}")


class _UnsafeDumper(yaml.SafeDumper):
    pass


def write_extravars(path: Path, extravars: dict[str, Any]) -> None:
    """Write extra vars for `-e @PATH` as data that Ansible never templates: the document is tagged !unsafe.

    The tag on the top mapping makes every string in it untrusted while keeping each value's type (ansible-core
    re-resolves a tagged scalar itself, so `!unsafe '1.10'` on a value would become the float 1.1). 0600: -e
    values may be secrets."""
    for key in extravars:
        if not isinstance(key, str) or not VAR_NAME.fullmatch(key):
            raise UsageError(f"opsbook: --extra-vars: {key!r} is not a variable name")
    text = "--- !unsafe\n" + yaml.dump(extravars, Dumper=_UnsafeDumper, sort_keys=True, allow_unicode=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def run_playbook(
    playbook: str,
    inventory: str | None = None,
    limit: str | None = None,
    check: bool = False,
    diff: bool = False,
    extravars: dict[str, Any] | None = None,
    verb: str | None = None,
    quiet: bool = False,
    ansible: AnsibleOptions | None = None,
    lock: tuple[str, str] | None = None,
) -> RunResult:
    """Run playbooks/PLAYBOOK (or an absolute playbook path) after checking the inventory and the limit.

    extravars are data: passed in a file tagged !unsafe, never templated. ANSIBLE are Ansible's own options, passed
    as given after it (-e, --tags, --skip-tags, -v, --diff). LOCK, (host pattern, operation): the playbook takes the
    operation lock of those hosts; this controller's own lock on them is taken first (oplock.ControllerLocks), so
    that a second run from here is refused before Ansible starts. Check mode takes no lock."""
    root = paths.project_root()
    ansible = ansible or AnsibleOptions()
    extravars = dict(extravars or {})
    pattern = lock[0] if lock and not check else "all"
    inv, targets = check_inventory(inventory or str(root / "inventories" / "lab"), limit, root, pattern=pattern)
    if not lock or check:
        return _run(playbook, inv, limit, check, diff, extravars, verb, quiet, ansible, root)
    want = {"holder": extravars.get("common_lock_holder"), "run_id": extravars.get("common_lock_run_id"),
            "operation": lock[1]}
    wait = int(extravars.get("common_lock_wait") or 0)
    held = oplock.ControllerLocks(paths.state_dir(), targets, want)
    start = time.monotonic()
    try:
        waited = held.acquire(wait)
    except oplock.Busy as busy:
        return _refused(playbook, inv, limit, verb, quiet, busy, time.monotonic() - start)
    try:
        if wait:  # what is left of --wait is for the hosts' own locks
            extravars["common_lock_wait"] = max(1, round(wait - waited))
        return _run(playbook, inv, limit, check, diff, extravars, verb, quiet, ansible, root,
                    {"controller_locks": held.hosts, "controller_lock_waited": round(waited, 2)})
    finally:
        held.release()


def _refused(playbook: str, inv: Path, limit: str | None, verb: str | None, quiet: bool, busy: oplock.Busy,
             seconds: float) -> RunResult:
    """A run this controller's lock refused: nothing ran; reported as the host's refusal is (exit 2)."""
    msg = busy.message()
    task = "Refuse - the host is busy (this controller's lock)"
    tally = HostTally(failed=1, task=task, messages=[f"{task}: {msg}"])
    failures = [{"host": busy.host, "task": task, "message": msg}]
    report = write_report(verb or Path(playbook).name.removesuffix(".yml"), {
        "playbook": playbook, "inventory": str(inv), "limit": limit, "check": False, "status": "refused", "rc": 2,
        "seconds": round(seconds, 2), "hosts": {busy.host: vars(tally)}, "failures": failures, "error": "",
        "artifacts": None, "results": {}, "refused_by": "controller lock",
    })
    result = RunResult(playbook, 2, "refused", {busy.host: tally}, report, seconds)
    console = make_console(stderr=True)
    console.print(Text.assemble(("FAILED", "red"), f" {busy.host} · {task}: {msg}"), highlight=False)
    if not quiet:
        word = "[red]refused[/]"
        console.print(f"{escape(playbook)}: {word} in {seconds:.1f} s, nothing ran — report {escape(str(report))}",
                      highlight=False)
    return result


def _run(playbook: str, inv: Path, limit: str | None, check: bool, diff: bool, extravars: dict[str, Any],
         verb: str | None, quiet: bool, ansible: AnsibleOptions, root: Path,
         reported: dict[str, Any] | None = None) -> RunResult:
    cmdline: list[str] = []
    if check:
        cmdline.append("--check")
    if diff or check or ansible.diff:
        cmdline.append("--diff")
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    artifacts = paths.state_dir() / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / run_id).mkdir()
    # the CLI's own values first, as data (`-e @file`, tagged !unsafe); then the operator's -e, as Ansible takes them
    # (not env/extravars: ansible-runner would pass that one last, after the operator's)
    cli_vars = artifacts / run_id / "opsbook-extravars.yml"
    write_extravars(cli_vars, extravars)
    cmdline = ["-e", f"@{cli_vars}", *ansible.args(), *cmdline]
    stream = ansible.verbosity > 0 and not quiet  # Ansible's own output replaces the progress table
    console = make_console(stderr=True, quiet=quiet)
    progress = Progress()
    envvars = _ansible_env(root)
    start = time.monotonic()
    with Live(progress.table(), console=console, refresh_per_second=4, transient=False,
              auto_refresh=console.is_terminal) as live:

        def on_event(event: dict[str, Any]) -> bool:
            progress.handle(event)
            if stream:
                if str(event.get("stdout") or "").strip():
                    live.console.print(Text.from_ansi(str(event["stdout"]).replace("\r\n", "\n")))
            elif console.is_terminal:
                live.update(progress.table())
            elif event.get("event") == "playbook_on_task_start" and not quiet:
                console.print(f"  [{progress.play}] {progress.task}", highlight=False, soft_wrap=True, markup=False)
            return True

        r = ansible_runner.run(
            private_data_dir=str(artifacts / run_id),
            project_dir=str(root),
            playbook=str(root / "playbooks" / playbook),
            inventory=str(inv),
            limit=limit,
            cmdline=" ".join(shlex.quote(a) for a in cmdline),
            envvars=envvars,
            event_handler=on_event,
            quiet=True,
            ident=run_id,
        )
        live.update(progress.table())
    if not console.is_terminal:  # Live leaves its last table without a line end in a log
        console.line()
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
    if not stream:  # streamed, Ansible printed them in place
        _render_diff(console, progress.diffs)
    error = ""
    if r.rc and not any(t.failed or t.unreachable for t in progress.hosts.values()):
        error = run_error(Path(r.config.artifact_dir))
    elif not progress.hosts and not r.rc:
        error = (f"no host matched: the plays' host patterns{' and --limit ' + limit if limit else ''} select no host "
                 f"of {inv}; nothing was done")
    report = write_report(verb or Path(playbook).name.removesuffix(".yml"), {
        "playbook": playbook,
        "inventory": str(inv),
        "limit": limit,
        "check": check,
        "status": r.status,
        "rc": r.rc,
        "seconds": round(seconds, 2),
        "hosts": {h: {k: v for k, v in vars(t).items()} for h, t in sorted(progress.hosts.items())},
        "failures": progress.failures,
        "error": error,
        "artifacts": str(artifacts / run_id),
        "results": progress.results,
        **(reported or {}),
    })
    result = RunResult(playbook, int(r.rc or 0), str(r.status), dict(progress.hosts), report, seconds, error,
                       progress.results)
    _prune(artifacts, keep=20)  # after the report: a prune that fails or takes long never costs a run its report
    if not quiet:
        summarize(console, result, progress)
    elif error:  # quiet hides progress, not why nothing (or not everything) was done
        make_console(stderr=True).print(Text.assemble(("FAILED", "red"), f" {error}"), highlight=False)
    return result


def run_error(artifact_dir: Path) -> str:
    """Why a run failed as a whole (a vault, syntax or inventory error): Ansible's own words from its output."""
    text = ""
    for name in ("stdout", "stderr"):
        with contextlib.suppress(OSError):
            text += (artifact_dir / name).read_text(errors="replace") + "\n"
    lines = [line.rstrip() for line in ANSI.sub("", text).splitlines() if line.strip()]
    for n, line in enumerate(lines):
        if line.startswith(("[ERROR]", "ERROR!")):
            return "\n".join(lines[n:n + 30])
    return "\n".join(lines[-10:]) or "ansible-playbook failed without saying why"


def _prune(directory: Path, keep: int, slack: int = 10) -> None:
    """Keep the newest runner artifact directories (one per run); the JSON reports are kept forever.

    Only once KEEP + SLACK have piled up, and then down to KEEP: one run in SLACK pays for the removal (a deploy's
    directory holds some 350 event files; removing one took 0.2-1 s of every run on a busy 2-core machine)."""
    import shutil

    dirs = sorted((d for d in directory.iterdir() if d.is_dir()), key=lambda d: d.name)
    if len(dirs) <= keep + slack:
        return
    old = dirs[:-keep or None]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)


def summarize(console: Console, result: RunResult, progress: Progress) -> None:
    """Failures, the run's own error and the verdict. Host messages and names are text, never Rich markup."""
    for f in progress.failures:
        console.print(Text.assemble(("FAILED", "red"), f" {f['host']} · {f['task']}: {f['message']}"),
                      highlight=False)
    if result.error:
        console.print(Text.assemble(("FAILED", "red"), f" {result.error}"), highlight=False)
        if "vault" in result.error.lower():
            console.print("[yellow]hint:[/] the inventory has ansible-vault secrets: set ANSIBLE_VAULT_PASSWORD_FILE "
                          "to a 0600 file holding the vault password (see inventories/example/README.md)",
                          highlight=False)
    if any(t.unreachable for t in result.hosts.values()):
        console.print("[yellow]hint:[/] an unreachable host stopped where it was; configs are replaced atomically and "
                      "validated, so none is half-written. Restore SSH access and run again.", highlight=False)
    word = "[green]ok[/]" if result.ok else "[red]failed[/]"
    console.print(f"{escape(result.playbook)}: {word} in {result.seconds:.1f} s — report {escape(str(result.report))}",
                  highlight=False)


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


def _event_counter(path: Path) -> int:
    """The order of an ansible-runner event file (COUNTER-UUID.json)."""
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


def artifact_results(artifacts: Path) -> dict[str, Any]:
    """What a run's plays published with set_stats (per_host: false): the artifact_data of the last playbook_on_stats
    event in ansible-runner's artifacts (the private data dir or its artifacts/IDENT). The CLI's results are these,
    never a task's name (docs/results.md)."""
    found: dict[str, Any] = {}
    for path in sorted(artifacts.glob("**/job_events/*.json"), key=_event_counter):
        try:
            event = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if event.get("event") == "playbook_on_stats":
            found = dict((event.get("event_data") or {}).get("artifact_data") or {})
    return found


def results(report: Path) -> dict[str, Any]:
    """The set_stats results of the run whose JSON report is REPORT (kept in the report; else read from its
    artifacts)."""
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return {}
    if isinstance(data.get("results"), dict):
        return dict(data["results"])
    return artifact_results(Path(data["artifacts"])) if data.get("artifacts") else {}


def task_results(report: Path, task: str) -> dict[str, dict[str, Any]]:
    """The result of one named task per host (the last one wins), read from the run's ansible-runner events.

    For tests and debugging only: the CLI reads results(), which a renamed task cannot break."""
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
    """0 ok; 3 a host was unreachable; 2 a task or the run failed, or no host matched (nothing was done)."""
    if result.ok:
        return 0
    if any(t.unreachable for t in result.hosts.values()):
        return 3
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the opsbook command")
