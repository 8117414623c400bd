"""The opsbook command line: one small module per verb, no logic that a playbook user would miss."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from opsbook import __version__
from opsbook.commands import backup, deploy, drill, init, provision, status

# The lab's verbs (opsbook.lab: local tooling, never needed against real hosts): their modules are imported only when
# one of them is the verb, so no other verb loads the lab (tests/unit/test_boundary.py).
LAB_VERBS = {
    "lab": ("opsbook.lab.cli", "the local lab: up, down, status, ssh"),
    "demo": ("opsbook.lab.demo", "run everything on the lab: provision, deploy, backup, rollback, drill; one report"),
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _verb(argv: list[str]) -> str | None:
    """The verb of ARGV: its first word that is not an option (the top level takes no option with a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _register_lab_verbs(sub: Any, argv: list[str] | None) -> None:
    wanted = _verb(sys.argv[1:] if argv is None else argv)
    for name, (module, help_text) in LAB_VERBS.items():
        if name == wanted:
            importlib.import_module(module).register(sub, _Formatter)
        else:  # listed in `opsbook --help`; its module (and the lab) is not imported
            sub.add_parser(name, help=help_text)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opsbook",
        formatter_class=_Formatter,
        description="Take Debian 12 hosts to production and keep them there.",
        epilog=(
            "examples:\n"
            "  opsbook demo                        everything, end to end, on the lab\n"
            "  opsbook init inventories/prod --web vm1=203.0.113.10 ...   an inventory for your own hosts\n"
            "  opsbook lab up                      boot the local lab hosts\n"
            "  opsbook provision                   harden every lab host\n"
            "  opsbook provision --check           show what would change, change nothing\n"
            "  opsbook provision -i inventories/prod --limit web1\n"
            "  opsbook provision -e @vars.yml --tags sshd -vv   Ansible's own options, passed through\n"
            "  opsbook deploy 2.0.0                blue/green, health-gated, zero failed requests\n"
            "  opsbook rollback                    back to the previous release\n"
            "\nevery verb takes -q; every verb that runs a playbook also takes -i, -l and Ansible's own\n"
            "-e, -t, --skip-tags, -v, -C, -D (VERB --help lists them)\n"
            "\nexit codes: 0 ok; 1 usage or lab error (also a bad value, an inventory that is missing, does not\n"
            "parse or has no hosts, a --limit that matches none of them: nothing ran); 2 a task failed, or no host\n"
            "matched a play (nothing was done); 3 a host was unreachable"
        ),
    )
    parser.add_argument("--version", action="version", version=f"opsbook {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    init.register(sub, _Formatter)
    provision.register(sub, _Formatter)
    deploy.register(sub, _Formatter)
    backup.register(sub, _Formatter)
    drill.register(sub, _Formatter)
    status.register(sub, _Formatter)
    _register_lab_verbs(sub, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse says 2 for a usage error; opsbook's 2 means "a task failed"
        return 1 if exc.code == 2 else int(exc.code or 0)
    try:
        rc: int = args.func(args)
    except SystemExit as exc:  # a refused request (SystemExit("message")): say it, exit 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        raise
    return rc


if __name__ == "__main__":
    sys.exit(main())
