"""opsbook status: firewall and database units, live release, verified backups and certificate expiry per host
(playbooks/status.yml).

The playbook decides what is a problem (and fails the host for it); this module only runs it, takes each host's
report from the run's results (the set_stats statistic opsbook_status, docs/results.md; never a task's name) and
shows it as a table or as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from opsbook import options, runner

# the run statistic playbooks/status.yml publishes: {host: report}
RESULT = "opsbook_status"


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "status",
        help="firewall and database units, live release, last verified backup and certificate expiry per host",
        formatter_class=formatter,
        parents=[options.playbook()],
        description=(
            "Run playbooks/status.yml (read-only) and show per host: whether the firewall (nftables.service)\n"
            "loaded and the database (db hosts: postgresql@15-main.service) runs, the live release and colour, the\n"
            "newest verified backup of each database with its age and the last run's result, and the days left on\n"
            "each certificate. Problems: a firewall or database unit that is not active, a verified backup older\n"
            "than status_backup_max_age_hours (26), a failed or missing backup run, fewer than\n"
            "status_cert_min_days (14) days left on a certificate, a web host without a live release or a\n"
            "certificate. See docs/runbooks/status.md."
        ),
        epilog=(
            "examples:\n"
            "  opsbook status\n"
            "  opsbook status -i inventories/prod --limit db --json\n"
            "  opsbook status -e status_backup_max_age_hours=170      weekly backups\n"
            "\nexit codes: 0 nothing wrong, 2 a problem (or a failed task), 3 a host was unreachable"
        ),
    )
    p.add_argument("--json", action="store_true", help="print the collected reports as JSON (nothing else on stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = runner.run_playbook("status.yml", inventory=args.inventory, limit=args.limit, check=args.check,
                                 verb="status", quiet=args.quiet or args.json, ansible=options.ansible(args))
    reports = from_results(result.results)
    rc = exit_code(result, reports)
    unreachable = sorted(h for h, t in result.hosts.items() if t.unreachable)
    # hosts that failed before their report: the task and message say why
    errors = {h: "; ".join(t.messages) for h, t in sorted(result.hosts.items())
              if t.failed and h not in reports and not t.unreachable}
    if args.json:
        print(json.dumps({"ok": rc == 0, "hosts": reports, "unreachable": unreachable, "errors": errors},
                         indent=2, sort_keys=True))
    else:
        render(runner.make_console(), reports, unreachable, errors)
    return rc


def collect(report: Path) -> dict[str, dict[str, Any]]:
    """Each host's report, from the results of the run whose JSON report is REPORT."""
    return from_results(runner.results(report))


def from_results(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each host's report from a run's results: the statistic opsbook_status, {host: report}."""
    out: dict[str, dict[str, Any]] = {}
    for host, status in (results.get(RESULT) or {}).items():
        if isinstance(status, dict):
            out[str(status.get("host") or host)] = status
    return out


def exit_code(result: runner.RunResult, reports: dict[str, dict[str, Any]]) -> int:
    rc = runner.exit_code(result)
    if rc == 0 and any(r.get("problems") for r in reports.values()):
        return 2  # the playbook fails such hosts; never report a problem with exit 0
    return rc


def _age(hours: Any) -> str:
    if hours is None:
        return "-"
    h = float(hours)
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} d"


def rows(status: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, state, detail, is_problem) rows of one host's report."""
    out: list[tuple[str, str, str, bool]] = []
    for u in status.get("units") or []:
        active = u.get("active_state")
        state = f"{active} ({u.get('sub_state') or '?'})" if active else "unknown"
        detail = f"{u.get('load_state') or '?'}, result {u.get('result') or '?'}"
        out.append((f"{u.get('what')} {u.get('unit')}", state, detail, bool(u.get("problems"))))
    app = status.get("app")
    if app:
        live = app.get("live_version")
        state = f"{live} ({app.get('live_colour') or '?'})" if live else "no live release"
        detail = (f"previous {app.get('previous_version') or '-'}; deployed {app.get('deployed_at') or '-'}; "
                  f"{len(app.get('releases') or [])} releases on the host")
        out.append((f"app {app.get('name') or ''}".strip(), state, detail, bool(app.get("problems"))))
    for b in status.get("backups") or []:
        if b.get("newest_verified"):
            state = f"{_age(b.get('age_hours'))} old"
            detail = f"{b['newest_verified']} ({b.get('newest_verified_at')})"
        else:
            state, detail = "no verified backup", ""
        if b.get("last_run_at"):
            run_word = "ok" if b.get("last_run_success") else "FAILED"
            detail += f"; last run {b['last_run_at']} {run_word}, verification {b.get('verification') or 'unknown'}"
        else:
            detail += "; last run unknown"
        out.append((f"backup {b.get('database')}", state, detail.lstrip("; "), bool(b.get("problems"))))
    for c in status.get("certificates") or []:
        days = c.get("days_left")
        state = "unreadable" if days is None else f"{days} days left"
        detail = f"expires {c.get('not_after') or '-'}; {', '.join(c.get('names') or [])}; issuer {c.get('issuer')}"
        out.append((f"certificate {c.get('name')}", state, detail, bool(c.get("problems"))))
    return out


def render(console: Console, reports: dict[str, dict[str, Any]], unreachable: list[str],
           errors: dict[str, str]) -> None:
    for host in sorted(reports):
        status = reports[host]
        problems = status.get("problems") or []
        title = Text.assemble(
            (host, "bold"), " — ",
            (f"{len(problems)} problem(s)", "red") if problems else ("ok", "green"),
            f" — checked {status.get('checked_at', '?')}",
        )
        table = Table(title=title, title_justify="left")
        for col in ("what", "state", "detail"):
            table.add_column(col)
        for what, state, detail, bad in rows(status):
            table.add_row(Text(what), Text(state), Text(detail), style="red" if bad else None)
        if not table.rows:
            table.add_row("(nothing to check)", "", "")
        console.print(table)
        for p in problems:
            console.print(Text.assemble("  ", ("problem:", "red"), " ", p))
    for host in unreachable:
        console.print(Text(f"{host}: unreachable", "yellow"))
    for host, msg in errors.items():
        console.print(Text.assemble((f"{host}: no report:", "red"), " ", msg))
    if not reports and not unreachable and not errors:
        console.print("no hosts matched")
