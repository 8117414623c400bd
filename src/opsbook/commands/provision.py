"""opsbook provision: bare host → hardened host (playbooks/provision.yml)."""

from __future__ import annotations

import argparse
from typing import Any

from opsbook import options, runner


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "provision",
        help="harden hosts: packages, users, sshd, firewall, fail2ban, logrotate",
        formatter_class=formatter,
        parents=[options.playbook()],
        description="Run playbooks/provision.yml. A second run changes nothing.",
        epilog=(
            "examples:\n"
            "  opsbook provision\n"
            "  opsbook provision --check            dry run with diffs\n"
            "  opsbook provision -i inventories/example --limit web\n"
            "  opsbook provision -e @vars.yml -v     extra vars from a file, Ansible's own output"
        ),
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = runner.run_playbook(
        "provision.yml",
        inventory=args.inventory,
        limit=args.limit,
        check=args.check,
        verb="provision",
        quiet=args.quiet,
        ansible=options.ansible(args),
    )
    return runner.exit_code(result)
