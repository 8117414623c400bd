"""The per-host operation lock (roles/common/files/opsbook-lock), run as a real process on temp dirs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = Path(os.environ.get("OPSBOOK_LOCK_TOOL", ROOT / "roles" / "common" / "files" / "opsbook-lock"))


def lock(d: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), "--dir", str(d), *args], capture_output=True, text=True,
                          timeout=timeout)


def who(run: str, op: str = "deploy 2.0.0", holder: str = "alice@ctl1") -> list[str]:
    return ["--holder", holder, "--run-id", run, "--operation", op, "--controller-pid", "4242"]


def status(d: Path) -> dict[str, object]:
    res = lock(d, "status", "--json")
    assert res.returncode == 0, res.stderr
    data: dict[str, object] = json.loads(res.stdout)
    return data


def test_acquire_then_a_second_run_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    assert lock(tmp_path, "acquire", *who("run-a")).returncode == 0
    t0 = time.monotonic()
    res = lock(tmp_path, "acquire", *who("run-b", "rollback", "bob@ctl2"))
    took = time.monotonic() - t0
    assert res.returncode == 75, res
    assert took < 5, took
    msg = res.stderr
    for part in ("is busy", "deploy 2.0.0", "alice@ctl1", "run run-a", "pid 4242", "since 20", "s ago",
                 "--wait", "opsbook-lock break"):
        assert part in msg, (part, msg)
    assert status(tmp_path)["locked"] is True
    assert "run-a" in json.dumps(status(tmp_path))  # the refused run did not touch the lock


def test_same_run_renews_and_release_frees(tmp_path: Path) -> None:
    first = json.loads(lock(tmp_path, "acquire", *who("run-a"), "--ttl", "60").stdout)
    again = json.loads(lock(tmp_path, "acquire", *who("run-a"), "--ttl", "600").stdout)
    assert again["renewed"] is True and first["renewed"] is False
    assert again["lock"]["since"] == first["lock"]["since"]
    assert again["lock"]["expires"] > first["lock"]["expires"] + 500
    other = json.loads(lock(tmp_path, "release", "--run-id", "run-b").stdout)
    assert other["released"] is False and "held by another run" in other["why"]
    assert status(tmp_path)["locked"] is True
    assert json.loads(lock(tmp_path, "release", "--run-id", "run-a").stdout)["released"] is True
    assert status(tmp_path) == {"locked": False}
    assert json.loads(lock(tmp_path, "release", "--run-id", "run-a").stdout)["released"] is False  # idempotent
    assert lock(tmp_path, "acquire", *who("run-b")).returncode == 0


def test_wait_gets_the_lock_when_it_is_released(tmp_path: Path) -> None:
    assert lock(tmp_path, "acquire", *who("run-a")).returncode == 0
    waiter = subprocess.Popen([sys.executable, str(TOOL), "--dir", str(tmp_path), "acquire", *who("run-b"),
                               "--wait", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    assert waiter.poll() is None  # still waiting
    t0 = time.monotonic()
    assert lock(tmp_path, "release", "--run-id", "run-a").returncode == 0
    out, err = waiter.communicate(timeout=20)
    assert waiter.returncode == 0, err
    assert time.monotonic() - t0 < 3
    assert json.loads(out)["lock"]["run_id"] == "run-b"


def test_wait_is_bounded(tmp_path: Path) -> None:
    assert lock(tmp_path, "acquire", *who("run-a")).returncode == 0
    t0 = time.monotonic()
    res = lock(tmp_path, "acquire", *who("run-b"), "--wait", "1.5")
    took = time.monotonic() - t0
    assert res.returncode == 75 and "Still held after waiting 1.5 s" in res.stderr, res
    assert 1.4 < took < 6, took


def test_an_expired_lease_is_broken_by_the_next_run(tmp_path: Path) -> None:
    assert lock(tmp_path, "acquire", *who("dead-run"), "--ttl", "1").returncode == 0
    assert lock(tmp_path, "acquire", *who("run-b")).returncode == 75
    time.sleep(1.2)
    assert status(tmp_path)["stale"]
    res = lock(tmp_path, "acquire", *who("run-b"))
    assert res.returncode == 0, res.stderr
    assert "broke a stale lock (its lease expired" in res.stderr and "dead-run" in res.stderr


def test_run_holds_the_lock_while_the_command_runs_and_frees_it_after(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    holder = subprocess.Popen([sys.executable, str(TOOL), "--dir", str(tmp_path / "l"), "run", *who("bk", "backup run"),
                               "--", "sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.1; done; exit 3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while status(tmp_path / "l").get("locked") is not True:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    res = lock(tmp_path / "l", "acquire", *who("restore-run", "restore"))
    assert res.returncode == 75 and "backup run by alice@ctl1" in res.stderr and f"pid {holder.pid} here" in res.stderr
    flag.touch()
    assert holder.wait(timeout=10) == 3  # the command's exit code
    assert status(tmp_path / "l") == {"locked": False}


def test_a_dead_holder_process_is_a_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, str(TOOL), "--dir", str(tmp_path), "run", *who("bk", "backup run"),
                               "--", "sleep", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while status(tmp_path).get("locked") is not True:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    holder.kill()  # SIGKILL: no chance to release (a controller or session that died)
    holder.wait()
    subprocess.run(["pkill", "-P", str(holder.pid)], check=False)  # its orphaned sleep, by parent pid
    st = status(tmp_path)
    assert st["locked"] is False and "is gone" in str(st["stale"]), st
    res = lock(tmp_path, "acquire", *who("next"))
    assert res.returncode == 0 and "broke a stale lock" in res.stderr, res


def test_break_by_hand(tmp_path: Path) -> None:
    assert lock(tmp_path, "acquire", *who("run-a")).returncode == 0
    res = lock(tmp_path, "break", "--run-id", "other")
    assert res.returncode == 75 and status(tmp_path)["locked"] is True
    res = lock(tmp_path, "break")
    assert res.returncode == 0 and "broken: deploy 2.0.0 by alice@ctl1" in res.stdout
    assert status(tmp_path) == {"locked": False}


def test_concurrent_acquirers_exactly_one_wins(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, str(TOOL), "--dir", str(tmp_path), "acquire", *who(f"run-{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    codes = sorted(p.wait(timeout=30) for p in procs)
    assert codes == [0] + [75] * 7, codes


@pytest.mark.parametrize("content", ["", "[]", "{not json"])
def test_a_damaged_lock_file_is_stale(tmp_path: Path, content: str) -> None:
    (tmp_path / "operation.lock").write_text(content)
    res = lock(tmp_path, "acquire", *who("run-a"))
    assert res.returncode == 0 and "damaged" in res.stderr, res


def test_check_is_read_only(tmp_path: Path) -> None:
    d = tmp_path / "none"
    res = lock(d, "check", "--run-id", "x")
    assert res.returncode == 0 and res.stdout.strip() == "free" and not d.exists()
    assert lock(tmp_path, "acquire", *who("run-a")).returncode == 0
    before = (tmp_path / "operation.lock").read_bytes()
    res = lock(tmp_path, "check", "--run-id", "run-b")
    assert res.returncode == 75 and "would be refused at once" in res.stderr and "alice@ctl1" in res.stderr, res
    assert lock(tmp_path, "check", "--run-id", "run-a").returncode == 0  # its own lock
    assert (tmp_path / "operation.lock").read_bytes() == before


# --------------------------------------------------------------------------- the CLI side: --wait and the run's name


@pytest.mark.parametrize(("argv", "wait"), [
    (["deploy", "2.0.0"], 0),
    (["deploy", "2.0.0", "--wait"], 600),
    (["deploy", "2.0.0", "--wait", "30"], 30),
    (["rollback", "--wait=45"], 45),
    (["backup", "run", "--wait", "5"], 5),
])
def test_cli_wait_becomes_common_lock_wait(argv: list[str], wait: int) -> None:
    from opsbook import cli, oplock

    args = cli.build_parser().parse_args(argv)
    extra = oplock.lock_extravars(args)
    assert extra["common_lock_wait"] == wait
    assert re.fullmatch(r"[^@\s]+@[^@\s]+", str(extra["common_lock_holder"]))
    assert str(extra["common_lock_run_id"]).endswith(f"-pid{os.getpid()}")


def test_cli_wait_rejects_what_is_not_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    from opsbook import cli

    assert cli.main(["deploy", "2.0.0", "--wait", "soon"]) == 1
    assert "not a number of seconds" in capsys.readouterr().err
