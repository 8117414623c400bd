"""Where things are: the project checkout (playbooks, roles) and the per-checkout state directory."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The directory holding ansible.cfg and playbooks/: $OPSBOOK_ROOT, else found upwards from cwd or this file."""
    env = os.environ.get("OPSBOOK_ROOT")
    if env:
        return Path(env).resolve()
    for start in (Path.cwd(), Path(__file__).resolve()):
        for d in (start, *start.parents):
            if (d / "ansible.cfg").is_file() and (d / "playbooks").is_dir():
                return d
    raise SystemExit("opsbook: cannot find the project (ansible.cfg + playbooks/); set OPSBOOK_ROOT")


def state_dir() -> Path:
    """Run reports and runner artifacts: <project>/.opsbook (git-ignored)."""
    d = Path(os.environ.get("OPSBOOK_STATE", project_root() / ".opsbook"))
    d.mkdir(parents=True, exist_ok=True)
    return d
