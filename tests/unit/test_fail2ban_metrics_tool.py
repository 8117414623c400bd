"""roles/fail2ban/files/opsbook-fail2ban-metrics: fail2ban-client's answers become the node exporter textfile, with
a fake fail2ban-client first in PATH (the real one runs in the fail2ban molecule scenario)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "roles" / "fail2ban" / "files" / "opsbook-fail2ban-metrics"

# fail2ban-client's answers (Debian 12's fail2ban 1.0), one file per call; the fake prints the one its arguments name
ANSWERS = {
    "status": "Status\n|- Number of jail:\t2\n`- Jail list:\tnginx-limit-req, sshd\n",
    "status sshd": ("Status for the jail: sshd\n|- Filter\n|  |- Currently failed:\t1\n|  |- Total failed:\t40\n"
                    "`- Actions\n   |- Currently banned:\t3\n   |- Total banned:\t7\n"
                    "   `- Banned IP list:\t10.0.0.1 10.0.0.2 10.0.0.3\n"),
    "status nginx-limit-req": ("Status for the jail: nginx-limit-req\n`- Actions\n   |- Currently banned:\t0\n"
                               "   |- Total banned:\t0\n"),
}
FAKE = """#!/bin/sh
f="$(dirname "$0")/answer-$(echo "$*" | tr ' ' _)"
[ -f "$f" ] && exec cat "$f"
exit 255
"""


def run(tmp_path: Path, fake: str | None) -> tuple[int, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if fake is not None:
        client = bin_dir / "fail2ban-client"
        client.write_text(fake)
        client.chmod(client.stat().st_mode | stat.S_IXUSR)
        for args, text in ANSWERS.items():
            (bin_dir / f"answer-{args.replace(' ', '_')}").write_text(text)
    out = tmp_path / "opsbook_fail2ban.prom"
    res = subprocess.run([sys.executable, str(TOOL), str(out)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin"))
    return res.returncode, out.read_text()


def test_counts_per_jail(tmp_path: Path) -> None:
    rc, text = run(tmp_path, FAKE)
    assert rc == 0
    assert "opsbook_fail2ban_up 1" in text
    assert 'opsbook_fail2ban_banned{jail="sshd"} 3' in text
    assert 'opsbook_fail2ban_bans_total{jail="sshd"} 7' in text
    assert 'opsbook_fail2ban_bans_total{jail="nginx-limit-req"} 0' in text
    assert "# TYPE opsbook_fail2ban_bans_total counter" in text
    assert not list(tmp_path.glob(".*.tmp"))


def test_no_answer_writes_down_and_fails(tmp_path: Path) -> None:
    rc, text = run(tmp_path, "#!/bin/sh\necho 'Failed to access socket path' >&2\nexit 255\n")
    assert rc == 1
    assert text.splitlines() == ["# HELP opsbook_fail2ban_up 1 when fail2ban answered",
                                 "# TYPE opsbook_fail2ban_up gauge", "opsbook_fail2ban_up 0"]
