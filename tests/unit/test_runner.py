from __future__ import annotations

import json
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
