"""The controller's own operation lock (opsbook.oplock.ControllerLocks): a second run from this controller for a
host that a first one holds is refused before Ansible starts, naming the holder; the kernel frees it when the
holder dies; --wait waits for it. The hosts' own locks (tests/unit/test_lock_tool.py, e2e) stay the authority."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsbook import cli, oplock, runner

WANT = {"holder": "alice@ctl1", "run_id": "20261130T120000Z-pid1", "operation": "deploy 2.0.0"}

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from opsbook import oplock
    locks = oplock.ControllerLocks(Path(sys.argv[1]), sys.argv[3:], {"holder": "alice@ctl1",
                                   "run_id": "20261130T120000Z-pid1", "operation": "deploy 2.0.0"})
    locks.acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def hold(state: Path, seconds: float, *hosts: str) -> subprocess.Popen[str]:
    """A process holding HOSTS' locks for SECONDS, once it has said so."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(state), str(seconds), *hosts], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process of this controller holding web1's and web2's locks for up to 60 s."""
    proc = hold(tmp_path / "state", 60, "web2", "web1")
    yield proc
    proc.kill()
    proc.wait()


def test_a_held_host_refuses_at_once_naming_the_holder(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    locks = oplock.ControllerLocks(tmp_path / "state", ["web3", "web1"], {**WANT, "run_id": "other"})
    with pytest.raises(oplock.Busy) as busy:
        locks.acquire()
    assert busy.value.host == "web1"
    msg = busy.value.message()
    assert msg.startswith("web1 is busy: deploy 2.0.0 by alice@ctl1 (run 20261130T120000Z-pid1, "
                          f"pid {holder.pid} on this controller) since 20"), msg
    assert "Refused at once" in msg
    with pytest.raises(oplock.Busy) as busy:  # each host is asked: web2 too
        oplock.ControllerLocks(tmp_path / "state", ["web2", "web3"], WANT).acquire()
    assert busy.value.host == "web2"


def test_a_refusal_gives_back_the_hosts_it_had_taken(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    # web0 sorts before the held web1: taken, then given back when web1 refuses
    with pytest.raises(oplock.Busy):
        oplock.ControllerLocks(tmp_path / "state", ["web1", "web0"], WANT).acquire()
    other = oplock.ControllerLocks(tmp_path / "state", ["web0"], WANT)
    other.acquire()
    other.release()


def test_the_lock_dies_with_its_holder(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    locks = oplock.ControllerLocks(tmp_path / "state", ["web1", "web2"], WANT)
    locks.acquire()
    data = json.loads(oplock.lock_file(tmp_path / "state", "web1").read_text())
    assert data["operation"] == "deploy 2.0.0" and data["pid"] == os.getpid() and data["host"] == "web1"
    locks.release()
    assert oplock.lock_file(tmp_path / "state", "web1").read_text() == ""  # no holder named once free


def test_wait_waits_for_the_holder(tmp_path: Path) -> None:
    proc = hold(tmp_path / "state", 1.5, "web1")
    locks = oplock.ControllerLocks(tmp_path / "state", ["web1"], WANT)
    waited = locks.acquire(wait=60)
    proc.wait()
    assert waited > 0 and proc.returncode == 0  # it got the lock only once the holder had ended
    locks.release()


def test_wait_that_runs_out_says_so(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(oplock.Busy) as busy:
        oplock.ControllerLocks(tmp_path / "state", ["web1"], WANT).acquire(wait=0.5)
    assert "Still held after waiting" in busy.value.message()


@pytest.mark.parametrize("name", ["../../etc/passwd", ".hidden", "a/b", "web1 ; rm -rf /", "x" * 300])
def test_a_host_name_is_data_never_a_path(tmp_path: Path, name: str) -> None:
    path = oplock.lock_file(tmp_path, name)
    assert path.parent == tmp_path / oplock.LOCK_DIR and not path.name.startswith(".")
    assert "/" not in path.name and len(path.name) < 100
    assert oplock.lock_file(tmp_path, name) != oplock.lock_file(tmp_path, name + "x")


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPSBOOK_STATE", str(tmp_path / "state"))
    inv = tmp_path / "inv"
    inv.mkdir()
    (inv / "hosts.yml").write_text("all:\n  children:\n    web:\n      hosts:\n        web1:\n        web2:\n"
                                   "    db:\n      hosts:\n        db1:\n")
    return inv


class RanAnsible(Exception):
    pass


def no_ansible(**kwargs: object) -> None:
    raise RanAnsible(kwargs.get("cmdline"))


def test_a_second_deploy_is_refused_before_ansible_starts(
        inventory: Path, holder: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(runner.ansible_runner, "run", no_ansible)
    assert cli.main(["deploy", "3.0.0", "-i", str(inventory), "--limit", "web1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "web1 is busy: deploy 2.0.0 by alice@ctl1 (run 20261130T120000Z-pid1" in err, err
    report = sorted((inventory.parent / "state" / "runs").glob("*-deploy.json"))[-1]
    data = json.loads(report.read_text())
    assert data["status"] == "refused" and data["rc"] == 2 and data["refused_by"] == "controller lock"
    assert data["failures"][0]["host"] == "web1" and "alice@ctl1" in data["failures"][0]["message"]


def test_other_hosts_and_check_mode_go_on_to_ansible(
        inventory: Path, holder: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.ansible_runner, "run", no_ansible)
    # a backup locks the db hosts only: web1's holder is no reason to refuse it
    with pytest.raises(RanAnsible):
        cli.main(["backup", "run", "-i", str(inventory)])
    # check mode takes no lock (the playbook says what a run would meet on each host)
    with pytest.raises(RanAnsible):
        cli.main(["deploy", "3.0.0", "-i", str(inventory), "--check"])
    # a host the holder does not hold
    monkeypatch.setattr(runner.ansible_runner, "run", no_ansible)
    (inventory / "hosts.yml").write_text("all:\n  children:\n    web:\n      hosts:\n        web3:\n")
    with pytest.raises(RanAnsible):
        cli.main(["rollback", "-i", str(inventory)])


def passed_wait(**kwargs: object) -> None:
    """A stand-in for ansible-runner that raises with the common_lock_wait the run would have passed on."""
    import shlex

    import yaml

    words = shlex.split(str(kwargs["cmdline"]))
    extravars = Path(words[words.index("-e") + 1].removeprefix("@"))
    raise RanAnsible(yaml.safe_load(extravars.read_text().replace("--- !unsafe", "---"))["common_lock_wait"])


def test_wait_is_passed_on_whole_when_nothing_was_waited_for(
        inventory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.ansible_runner, "run", passed_wait)
    with pytest.raises(RanAnsible) as ran:
        cli.main(["deploy", "3.0.0", "-i", str(inventory), "--wait", "120"])
    assert ran.value.args[0] == 120  # the hosts wait the whole 120 s (an e2e test looks for `--wait 120` on the host)


def test_wait_spent_here_is_taken_off_the_hosts_wait(
        inventory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.ansible_runner, "run", passed_wait)
    runner.check_inventory(str(inventory), pattern="web")  # checked beforehand: the run is at the lock at once
    proc = hold(tmp_path / "state", 8, "web1")
    with pytest.raises(RanAnsible) as ran:
        cli.main(["deploy", "3.0.0", "-i", str(inventory), "--wait", "120"])
    proc.wait()
    assert 60 <= ran.value.args[0] <= 118  # what is left of the 120 s after the wait here
