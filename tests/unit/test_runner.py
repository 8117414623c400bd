from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opsbook import runner


def ev(kind: str, **data: object) -> dict[str, object]:
    return {"event": kind, "event_data": data}


def test_progress_tallies_per_host() -> None:
    p = runner.Progress()
    p.handle(ev("playbook_on_play_start", play="Provision"))
    p.handle(ev("playbook_on_task_start", task="Install"))
    p.handle(ev("runner_on_ok", host="a", task="Install", res={"changed": True}))
    p.handle(ev("runner_on_ok", host="a", task="Install", res={"changed": False}))
    p.handle(ev("runner_on_failed", host="b", task="Install", res={"msg": "boom"}))
    p.handle(ev("runner_on_failed", host="b", task="Install", res={"msg": "ignored"}, ignore_errors=True))
    p.handle(ev("runner_on_unreachable", host="c", task="Install", res={"msg": "timed out"}))
    p.handle(ev("runner_on_skipped", host="a", task="Skip"))
    assert (p.hosts["a"].changed, p.hosts["a"].ok, p.hosts["a"].skipped) == (1, 1, 1)
    assert p.hosts["b"].failed == 1
    assert p.hosts["c"].unreachable == 1
    assert [f["message"] for f in p.failures] == ["boom", "unreachable: timed out"]


def test_failed_loop_items_give_the_message() -> None:
    p = runner.Progress()
    res = {"msg": "One or more items failed", "results": [
        {"failed": False, "msg": "fine"},
        {"failed": True, "msg": "x_ports must be a list"},
        {"failed": True, "msg": "secret", "_ansible_no_log": True},
    ]}
    p.handle(ev("runner_on_failed", host="a", task="check", res=res))
    assert p.failures[0]["message"] == "x_ports must be a list; (output hidden: no_log)"


def test_no_log_output_is_never_kept() -> None:
    p = runner.Progress()
    p.handle(ev("runner_on_failed", host="a", task="secret", res={"msg": "hunter2", "_ansible_no_log": True}))
    assert "hunter2" not in json.dumps(p.failures)


@pytest.mark.parametrize(
    ("tallies", "rc", "expected"),
    [
        ({"a": runner.HostTally(ok=3)}, 0, 0),
        ({"a": runner.HostTally(failed=1)}, 2, 2),
        ({"a": runner.HostTally(unreachable=1)}, 4, 3),
        ({"a": runner.HostTally(ok=1)}, 1, 2),
    ],
)
def test_exit_codes(tallies: dict[str, runner.HostTally], rc: int, expected: int) -> None:
    res = runner.RunResult("p.yml", rc, "failed", tallies, Path("/dev/null"), 0.0)
    assert runner.exit_code(res) == expected


def test_report_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOOK_STATE", str(tmp_path))
    a = runner.write_report("provision", {"rc": 0})
    b = runner.write_report("provision", {"rc": 1})
    assert a != b
    assert json.loads(a.read_text())["verb"] == "provision"
    assert not list(tmp_path.glob("runs/*.tmp"))


def test_a_failed_command_says_what_it_printed() -> None:
    res = {"failed": True, "rc": 1, "msg": "non-zero return code", "stdout": "",
           "stderr": "line 1\nERROR: No matching distribution found for pip"}
    assert runner._event_message({"res": res}) == "exit 1: line 1 | ERROR: No matching distribution found for pip"
    res = {"failed": True, "rc": 3, "msg": "non-zero return code", "stdout": "UNHEALTHY: /healthz answered 500"}
    assert runner._event_message({"res": res}) == "exit 3: UNHEALTHY: /healthz answered 500"
    assert runner._event_message({"res": {"msg": "plain message", "stderr": "x"}}) == "plain message"


def test_task_results_reads_one_task_per_host(tmp_path: Path) -> None:
    events = tmp_path / "artifacts" / "x" / "job_events"
    events.mkdir(parents=True)
    for n, (host, task, msg) in enumerate([("a", "Report", {"v": 1}), ("a", "Other", {}), ("b", "Report", {"v": 2}),
                                           ("a", "Report", {"v": 3})], start=1):
        (events / f"{n}-uuid.json").write_text(json.dumps(
            {"event": "runner_on_ok", "event_data": {"host": host, "task": task, "res": {"msg": msg}}}))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"artifacts": str(tmp_path / "artifacts")}))
    assert runner.task_results(report, "Report") == {"a": {"msg": {"v": 3}}, "b": {"msg": {"v": 2}}}


def test_an_unchanged_inventory_is_checked_once_and_a_changed_one_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-check's answer is kept for an unchanged inventory (a deploy that a held lock refuses should not wait
    for a second inventory parse), and any change to the inventory's files makes it parse again: a broken edit is
    still refused before anything runs."""
    monkeypatch.setenv("OPSBOOK_STATE", str(tmp_path / "state"))
    inv = tmp_path / "inv"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    web1:\n      ansible_host: 192.0.2.10\n")
    calls: list[str | None] = []
    real = runner._list_hosts

    def counting(inventory: Path, limit: str | None, root: Path, pattern: str = "all") -> tuple[int, list[str], str]:
        calls.append(limit)
        return real(inventory, limit, root, pattern)

    monkeypatch.setattr(runner, "_list_hosts", counting)
    assert runner.check_inventory(str(inv))[1] == ["web1"]
    assert runner.check_inventory(str(inv))[1] == ["web1"]
    assert len(calls) == 1
    assert oct((tmp_path / "state" / runner.CHECKED_INVENTORIES).stat().st_mode & 0o777) == "0o600"
    # another limit is another question
    with pytest.raises(runner.UsageError, match="matches no host"):
        runner.check_inventory(str(inv), limit="db9")
    # a file added under the inventory is a change: parsed again
    (inv / "group_vars" / "all.yml").write_text("a: 1\n")
    assert runner.check_inventory(str(inv))[1] == ["web1"]
    assert calls == [None, "db9", None, None]  # the limit asked twice: with it, and without it to say which is empty
    # an edit that breaks the host list is refused, though the same path passed a moment ago
    (inv / "hosts.yml").write_text("all:\n  hosts: [unclosed\n")
    with pytest.raises(runner.UsageError, match="does not parse"):
        runner.check_inventory(str(inv))


def test_artifact_prune_waits_for_slack_then_keeps_the_newest(tmp_path: Path) -> None:
    """Runs pay for the removal of old artifact directories once in SLACK runs, and the newest KEEP always stay."""
    names = [f"20261130T1200{n:02d}.000000Z" for n in range(35)]
    for name in names[:30]:
        (tmp_path / name / "job_events").mkdir(parents=True)
    runner._prune(tmp_path, keep=20, slack=10)
    assert len(list(tmp_path.iterdir())) == 30  # 30 <= 20 + 10: nothing removed
    for name in names[30:]:
        (tmp_path / name / "job_events").mkdir(parents=True)
    runner._prune(tmp_path, keep=20, slack=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == names[-20:]


def test_two_runs_remembering_inventories_at_once_lose_neither(tmp_path: Path) -> None:
    """The answers are read, added to and replaced under a lock: without it, a run's answer written between another
    run's read and replace was dropped, and its next command parsed the inventory again (and took no lock faster)."""
    code = ("import sys\nfrom opsbook import runner\n"
            "for i in range(7):\n    runner._remember_inventory(f'{sys.argv[1]}{i}', ['web1'])\n")
    env = {**os.environ, "OPSBOOK_STATE": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", code, tag], env=env) for tag in ("a", "b", "c", "d")]
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    kept = json.loads((tmp_path / runner.CHECKED_INVENTORIES).read_text())
    assert sorted(kept) == sorted(f"{t}{i}" for t in "abcd" for i in range(7))  # 28 of at most 32: none lost
