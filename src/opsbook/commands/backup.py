"""opsbook backup: verified backups on the database hosts (playbooks/backup.yml → opsbook-backup on each host).

What each host's opsbook-backup said comes from the run's results (the statistic opsbook_backup, docs/results.md),
never from a task's name."""

from __future__ import annotations

import argparse
from typing import Any

from opsbook import options, runner, values
from opsbook.oplock import add_wait, lock_extravars

# the run statistic playbooks/backup.yml publishes: {host: {action, database, file, skipped, rc, stdout, stderr,
# backups}} (docs/results.md)
RESULT = "opsbook_backup"


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "backup",
        help="run, verify, list or restore database backups",
        formatter_class=formatter,
        parents=[options.playbook()],
        description=(
            "Run playbooks/backup.yml: the opsbook-backup command on the database hosts. A backup counts only once "
            "it has been restored into a scratch database and its tables and row counts match its manifest."
        ),
        epilog=(
            "examples:\n"
            "  opsbook backup run                  dump, verify by restoring, copy off-host, prune\n"
            "  opsbook backup list\n"
            "  opsbook backup verify               verify the newest dump again\n"
            "  opsbook backup verify shop-20260101T023000Z.dump\n"
            "  opsbook backup restore shop-20260101T023000Z.dump --yes-overwrite-live --limit db1"
        ),
    )
    p.add_argument("action", choices=["run", "verify", "list", "restore"])
    p.add_argument("file", nargs="?", type=values.dump_file,
                   help="dump file name, <database>-YYYYMMDDTHHMMSSZ.dump (verify: default the newest; "
                        "restore: required)")
    p.add_argument("--database", default="", type=values.database,
                   help="database (default: the only one configured on each host)")
    p.add_argument("--yes-overwrite-live", action="store_true",
                   help="restore: replace the LIVE database with the backup's contents")
    add_wait(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "restore" and not args.file:
        raise SystemExit("opsbook backup restore: name the dump file to restore (see `opsbook backup list`)")
    if args.action == "restore" and not args.yes_overwrite_live:
        raise SystemExit("opsbook backup restore replaces the live database: add --yes-overwrite-live to do it")
    extravars = {
        "opsbook_backup_action": args.action,
        "opsbook_backup_file": args.file or "",
        "opsbook_backup_database": args.database,
        "opsbook_backup_yes_overwrite_live": bool(args.yes_overwrite_live),
        **lock_extravars(args),
    }
    operation = f"restore {args.file}" if args.action == "restore" else f"backup {args.action}"
    result = runner.run_playbook("backup.yml", inventory=args.inventory, limit=args.limit, check=args.check,
                                 extravars=extravars, verb=f"backup-{args.action}", quiet=args.quiet,
                                 ansible=options.ansible(args),
                                 lock=None if args.action == "list" else ("db", operation))
    for host, out in sorted(command_output(result.results).items()):
        print(f"== {host}")
        if out.strip():
            print(out.rstrip())
    return runner.exit_code(result)


def command_output(results: dict[str, Any]) -> dict[str, str]:
    """stdout and stderr of opsbook-backup per host, from a run's results."""
    return {str(host): "\n".join(str(s) for s in (res.get("stdout"), res.get("stderr")) if s)
            for host, res in (results.get(RESULT) or {}).items() if isinstance(res, dict)}
