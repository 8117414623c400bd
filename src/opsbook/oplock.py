"""The CLI side of the per-host operation lock (roles/common/files/opsbook-lock; the playbooks take it).

The lock lives in the playbooks, so plain ansible-playbook and AWX get it too; the CLI only names the run
(user@controller, a run id with its pid) and passes --wait on as common_lock_wait.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import socket
from typing import Any

WAIT_DEFAULT = 600  # seconds `--wait` without a value waits


def seconds(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 <= n <= 86400:
        raise argparse.ArgumentTypeError(f"seconds between 0 and 86400, not {n}")
    return n


def add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", nargs="?", type=seconds, const=WAIT_DEFAULT, default=0, metavar="SECONDS",
        help=("when another run holds a host's operation lock, wait up to SECONDS for it (--wait alone: "
              f"{WAIT_DEFAULT}) instead of being refused at once"))


def holder() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def lock_extravars(args: argparse.Namespace) -> dict[str, Any]:
    """common_lock_* extra vars naming this run; --wait as common_lock_wait."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return {"common_lock_holder": holder(), "common_lock_run_id": f"{stamp}-pid{os.getpid()}",
            "common_lock_wait": int(getattr(args, "wait", 0) or 0)}
