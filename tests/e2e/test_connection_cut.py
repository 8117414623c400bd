"""Cut SSH for 30 s in the middle of provisioning: a clear failure, nothing half-written, the next run converges."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from opsbook import lab
from tests.e2e.conftest import FAST, ROOT, LabEnv, boot, make_inventory, outcome

CUT_SECONDS = 30


@pytest.fixture(scope="module")
def cut_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    hosts = boot(["e2e-cut"])
    inv = make_inventory(tmp_path_factory.mktemp("inv") / "lab", {"web": [hosts["e2e-cut"]]}, FAST)
    try:
        yield LabEnv(hosts, inv)
    finally:
        lab.down(["e2e-cut"], progress=False)
        subprocess.run(["ip", "link", "set", hosts["e2e-cut"].veth, "up"], check=False)


def cut_link(veth: str, seconds: float, done: threading.Event) -> None:
    subprocess.run(["ip", "link", "set", veth, "down"], check=True)
    try:
        time.sleep(seconds)
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        done.set()


def test_cut_mid_run_fails_cleanly_and_next_run_converges(cut_lab: LabEnv) -> None:
    host = cut_lab.hosts["e2e-cut"]
    env = dict(os.environ, OPSBOOK_ROOT=str(ROOT), NO_COLOR="1")
    proc = subprocess.Popen(["opsbook", "provision", "-i", str(cut_lab.inventory)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    lines: list[str] = []
    restored = threading.Event()
    cutter: threading.Thread | None = None
    trigger = ""
    for line in proc.stdout:
        lines.append(line)
        # cut while the sshd role writes its configuration
        if cutter is None and re.search(r"\] sshd : ", line):
            trigger = line
            cutter = threading.Thread(target=cut_link, args=(host.veth, CUT_SECONDS, restored))
            cutter.start()
    rc = proc.wait(timeout=900)
    if cutter is not None:
        cutter.join(CUT_SECONDS + 30)  # the link is back before anything else happens
    output = "".join(lines)
    assert cutter is not None, f"never reached the sshd role:\n{output}"
    restored.wait(CUT_SECONDS + 30)
    assert rc == 3, f"expected exit 3 (unreachable), got {rc}; cut at {trigger!r}:\n{output}"
    assert "e2e-cut" in output and "unreachable" in output.lower()

    # nothing half-written: every config that the roles own still parses, no temp files beside them
    checks = [
        "sshd -t",
        "visudo -c -q",
        "! find /etc -name '.ansible_tmp*' | grep -q .",
        "test -z \"$(dpkg --audit)\"",
        "if [ -f /etc/nftables.conf ] && command -v nft; then nft -c -f /etc/nftables.conf; fi",
    ]
    for cmd in checks:
        res = cut_lab.ssh("e2e-cut", cmd, check=False)
        assert res.returncode == 0, f"after the cut, {cmd!r} failed: {outcome(res)}"

    res = cut_lab.opsbook("provision")
    assert res.returncode == 0, f"the run after the cut did not converge:\n{outcome(res)}"


def test_report_names_the_unreachable_host(cut_lab: LabEnv) -> None:
    # other tests write provision reports at the same time: look for this host's
    reports = [json.loads(p.read_text()) for p in (ROOT / ".opsbook" / "runs").glob("*-provision*.json")]
    mine = [r for r in reports if "e2e-cut" in r.get("hosts", {})]
    assert any(r["hosts"]["e2e-cut"]["unreachable"] == 1 and r["rc"] != 0 and
               any(f["host"] == "e2e-cut" and "unreachable" in f["message"] for f in r["failures"]) for r in mine)
