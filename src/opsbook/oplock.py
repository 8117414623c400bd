"""The CLI side of the per-host operation lock (roles/common/files/opsbook-lock; the playbooks take it).

The lock lives in the playbooks, so plain ansible-playbook and AWX get it too; the CLI names the run
(user@controller, a run id with its pid), passes --wait on as common_lock_wait, and first takes this controller's
own lock on the same hosts (ControllerLocks below): a second run from here is refused before Ansible starts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
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


# --------------------------------------------------------------------------- the controller's fast path
#
# Two opsbook runs from one controller for the same host meet here first, before either starts Ansible: the second is
# refused in well under a second (a refusal by the host's lock costs ansible-playbook's start-up and an SSH round
# trip: 3-14 s on a busy 2-core controller). The host's lock stays the authority (other controllers, plain
# ansible-playbook, AWX); this one only answers sooner when the holder is a run of this same controller and state dir.
# An flock: the kernel frees it when its process ends, however it ends, so it is never stale.

LOCK_DIR = "locks"
POLL = 0.2


class Busy(Exception):
    """A host whose controller lock another opsbook run of this controller holds."""

    def __init__(self, host: str, holder: dict[str, Any], waited: float) -> None:
        super().__init__(host)
        self.host, self.holder, self.waited = host, holder, waited

    def message(self) -> str:
        h = self.holder
        if not h.get("operation"):  # caught between its flock and its first write
            return f"{self.host} is busy: another opsbook run of this controller holds it. Refused at once."
        since = float(h.get("since") or 0)
        iso = dt.datetime.fromtimestamp(since, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if since else "?"
        who = f"{h.get('holder', '?')} (run {h.get('run_id', '?')}, pid {h.get('pid', '?')} on this controller)"
        head = f"{self.host} is busy: {h.get('operation', '?')} by {who} since {iso}."
        if self.waited > 0:
            return head + f" Still held after waiting {self.waited:g} s."
        return head + " Refused at once: wait for it with --wait SECONDS (opsbook) or -e common_lock_wait=SECONDS."


def lock_file(state: Path, host: str) -> Path:
    """STATE/locks/HOST.lock; a name that is not a plain file name gets a hash (an inventory name is data)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", host)[:64]
    if safe != host or host.startswith("."):
        safe = f"{safe.lstrip('.') or 'host'}-{hashlib.sha256(host.encode()).hexdigest()[:12]}"
    return state / LOCK_DIR / f"{safe}.lock"


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class ControllerLocks:
    """This controller's lock on each of HOSTS (sorted, so two runs never wait for each other in a circle)."""

    def __init__(self, state: Path, hosts: list[str], want: dict[str, Any]) -> None:
        self.state, self.hosts, self.want = state, sorted(set(hosts)), want
        self.fds: list[int] = []

    def acquire(self, wait: float = 0) -> float:
        """Take every host's lock, waiting up to WAIT seconds in all; the seconds waited. Raises Busy."""
        start = time.monotonic()
        for host in self.hosts:
            path = lock_file(self.state, host)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - start
                    if waited >= wait:
                        holder = _read(fd)
                        os.close(fd)
                        self.release()
                        raise Busy(host, holder, round(waited, 1) if wait else 0) from None
                    time.sleep(min(POLL, wait - waited))
            self.fds.append(fd)
            data = json.dumps({**self.want, "host": host, "pid": os.getpid(), "since": time.time()}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        return time.monotonic() - start

    def release(self) -> None:
        """Free every lock taken (the files stay: removing one could split a later pair of runs over two inodes)."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)
        self.fds = []
