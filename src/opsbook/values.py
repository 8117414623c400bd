"""Checks of the values a user gives the CLI, before anything runs (each a full match: "1.0.0\\n" is no version).

The same patterns guard the playbooks for plain ansible-playbook users (roles/app/tasks/validate.yml); the values
reach Ansible as data either way (runner.write_extravars tags them !unsafe).
"""

from __future__ import annotations

import argparse
import re

VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}")
DATABASE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
DUMP_FILE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}-[0-9]{8}T[0-9]{6}Z\.dump")
VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def version(value: str) -> str:
    """A release name: a letter or digit, then up to 63 letters, digits and . _ + -"""
    if not VERSION.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"a version is a letter or digit followed by at most 63 letters, digits and . _ + - (got {value!r})")
    return value


def optional_version(value: str) -> str:
    return value if value == "" else version(value)


def database(value: str) -> str:
    if value and not DATABASE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"a database name is a letter or _ followed by at most 62 letters, digits and _ (got {value!r})")
    return value


def dump_file(value: str) -> str:
    """A dump's plain file name as `opsbook backup list` shows it: <database>-YYYYMMDDTHHMMSSZ.dump (no path)."""
    if not DUMP_FILE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"a dump is named <database>-YYYYMMDDTHHMMSSZ.dump, a plain file name as `opsbook backup list` shows it "
            f"(got {value!r})")
    return value


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of hosts, 1 or more (got {value!r})") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {n}; 0 would not limit the batch at all)")
    return n
