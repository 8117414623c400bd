"""opsbook provision: bare host → hardened host (playbooks/provision.yml)."""

from __future__ import annotations

import argparse
from typing import Any

from opsbook import runner, values


def register(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "provision",
        help="harden hosts: packages, users, sshd, firewall, fail2ban, logrotate",
        formatter_class=formatter,
        description="Run playbooks/provision.yml. A second run changes nothing.",
        epilog=(
            "examples:\n"
            "  opsbook provision\n"
            "  opsbook provision --check            dry run with diffs\n"
            "  opsbook provision -i inventories/example --limit web"
        ),
    )
    add_common(p)
    p.set_defaults(func=run)


def add_common(p: argparse.ArgumentParser, check: bool = True) -> None:
    """Options of every playbook verb: inventory, limit, extra vars, quiet, and --check where it means something."""
    p.add_argument("-i", "--inventory", help="inventory path (default: inventories/lab)")
    p.add_argument("-l", "--limit", help="limit to hosts or groups (Ansible pattern)")
    if check:
        p.add_argument("-C", "--check", action="store_true",
                       help="change nothing; show the diff of what would change")
    p.add_argument("-e", "--extra-vars", action="append", default=[], metavar="KEY=VALUE",
                   help="extra variable (repeatable); values are YAML, passed as data (never templated)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def parse_extravars(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"opsbook: --extra-vars wants KEY=VALUE, got {item!r}")
        if not values.VAR_NAME.fullmatch(key):
            raise SystemExit(f"opsbook: --extra-vars: {key!r} is not a variable name (letters, digits, _)")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SystemExit(f"opsbook: --extra-vars {key}: the value is not YAML: {exc}") from None
    return out


def run(args: argparse.Namespace) -> int:
    result = runner.run_playbook(
        "provision.yml",
        inventory=args.inventory,
        limit=args.limit,
        check=args.check,
        extravars=parse_extravars(args.extra_vars),
        verb="provision",
        quiet=args.quiet,
    )
    return runner.exit_code(result)
