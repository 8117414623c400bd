"""The options opsbook's verbs share, defined once as argparse parent parsers.

- ``common()``: every verb and every ``opsbook lab`` action takes these (``-q``).
- ``playbook()``: every verb that runs a playbook takes these on top: where to run (``-i``, ``-l``) and Ansible's own
  options, passed through to ansible-playbook as Ansible takes them (``-e``, ``-t``, ``--skip-tags``, ``-v``,
  ``-C``, ``-D``). ``ansible(args)`` turns them into the runner's ``AnsibleOptions``.

Trust: the values the CLI validates itself (a version, a dump file's name, ``--serial``) reach Ansible as data, in a
file tagged ``!unsafe`` (runner.write_extravars). ``-e`` is the operator's own Ansible input: it goes to
ansible-playbook as given, after that file (so it wins, as a later ``-e`` does in Ansible), and Ansible reads it as
it always does: ``k=v`` pairs are strings, ``@file`` and inline ``{...}`` are YAML/JSON, and templates in the
values are evaluated. The CLI only checks up front that each one is well-formed (a file that exists and holds a
mapping, variable names), so that a typo is a usage error (exit 1) before anything runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

from opsbook.runner import AnsibleOptions, UsageError
from opsbook.values import VAR_NAME


def common() -> argparse.ArgumentParser:
    """Options of every verb (and of every `opsbook lab` action)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress display (results and errors still show)")
    return p


def playbook(inventory_help: str = "inventory path (default: inventories/lab)") -> argparse.ArgumentParser:
    """Options of every verb that runs a playbook: the common ones, where to run, and Ansible's own."""
    p = argparse.ArgumentParser(add_help=False, parents=[common()])
    g = p.add_argument_group("where to run")
    g.add_argument("-i", "--inventory", help=inventory_help)
    g.add_argument("-l", "--limit", help="limit to hosts or groups (Ansible pattern)")
    a = p.add_argument_group("Ansible's options (passed to ansible-playbook as given)")
    a.add_argument("-e", "--extra-vars", action="append", default=[], metavar="VARS",
                   help="extra variables as ansible-playbook takes them: KEY=VALUE [KEY=VALUE ...] (strings), "
                        "@FILE (YAML/JSON, may be vault-encrypted) or inline YAML/JSON; repeatable, later wins")
    a.add_argument("-t", "--tags", action="append", default=[], metavar="TAGS",
                   help="only run plays and tasks tagged with these (comma-separated, repeatable)")
    a.add_argument("--skip-tags", action="append", default=[], metavar="TAGS",
                   help="only run plays and tasks whose tags do not match these (comma-separated, repeatable)")
    a.add_argument("-v", "--verbose", action="count", default=0,
                   help="Ansible's own output at that verbosity (-v, -vv, -vvv, -vvvv) instead of the progress table")
    a.add_argument("-C", "--check", action="store_true", help="change nothing; show the diff of what would change")
    a.add_argument("-D", "--diff", action="store_true", help="show what changed in files (Ansible's diff)")
    return p


def _is_vault(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(14) == b"$ANSIBLE_VAULT"


def _check_names(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UsageError(f"opsbook: --extra-vars {where}: wants a mapping of variables, got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str) or not VAR_NAME.fullmatch(key):
            raise UsageError(f"opsbook: --extra-vars: {key!r} is not a variable name (letters, digits, _)")
    return data


def user_extravars(items: list[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Check each -e VALUE as ansible-playbook will read it; return them as ansible-playbook's arguments (@FILE made
    absolute: the playbook runs from the project directory) and their merged values where the CLI can read them
    without Ansible (k=v and YAML; a vault-encrypted file is passed on unread). Nothing is templated here."""
    passed: list[str] = []
    merged: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            path = Path(item[1:]).expanduser()
            if not path.exists() or path.is_dir() or not os.access(path, os.R_OK):  # /dev/null is fine
                raise UsageError(f"opsbook: --extra-vars {item}: no such readable file")
            if not _is_vault(path):
                try:
                    data = yaml.safe_load(path.read_text()) or {}
                except (yaml.YAMLError, UnicodeDecodeError) as exc:
                    raise UsageError(f"opsbook: --extra-vars {item}: not YAML: {exc}") from None
                merged.update(_check_names(data, item))
            passed.append("@" + str(path.resolve()))
            continue
        if item.lstrip().startswith(("{", "[")):
            try:
                data = yaml.safe_load(item)
            except yaml.YAMLError as exc:
                raise UsageError(f"opsbook: --extra-vars {item!r}: not YAML/JSON: {exc}") from None
            merged.update(_check_names(data, repr(item)))
        else:
            # Ansible's own k=v parser (what -e k=v goes through); imported only for one: ansible takes 0.5-0.8 s
            # to import, a cost a refused run (oplock.ControllerLocks) should not pay
            from ansible.parsing.splitter import parse_kv  # type: ignore[import-untyped]

            try:
                data = parse_kv(item)
            except Exception as exc:  # Ansible's parser raises its own error types (an unbalanced quote)
                raise UsageError(f"opsbook: --extra-vars {item!r}: {exc}") from None
            if "_raw_params" in data or not data:
                raise UsageError(f"opsbook: --extra-vars wants KEY=VALUE, @FILE or YAML/JSON, got {item!r}")
            merged.update(_check_names(data, repr(item)))
        passed.append(item)
    return tuple(passed), merged


def ansible(args: argparse.Namespace) -> AnsibleOptions:
    """The pass-through options of a playbook verb's parsed ARGS (checked; see user_extravars)."""
    passed, _ = user_extravars(list(getattr(args, "extra_vars", None) or []))
    return AnsibleOptions(
        extra_vars=passed,
        tags=tuple(getattr(args, "tags", None) or ()),
        skip_tags=tuple(getattr(args, "skip_tags", None) or ()),
        verbosity=int(getattr(args, "verbose", 0) or 0),
        diff=bool(getattr(args, "diff", False)),
    )
