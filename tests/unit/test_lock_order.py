"""The operation lock comes first: a busy host refuses a deploy or rollback before anything is built, checked on the
host or changed (issue 11 acceptance 4), and the backup timer's runs take the same lock.

No lab host: the playbooks and task files are read as data and walked the way Ansible runs them; the CLI's
TARGET handling runs for real with the build forbidden; the backup unit's ExecStart runs with the real lock tool
on a temp directory."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_unit_sandbox import render

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"
LOCK_TOOL = ROOT / "roles" / "common" / "files" / "opsbook-lock"
# modules that run on the controller only (no SSH round trip to the host)
CONTROLLER_ONLY = {"assert", "set_fact", "fail", "debug", "meta"}


def _module(task: dict[str, Any]) -> str:
    for key in task:
        if key.startswith("ansible.builtin."):
            return key.removeprefix("ansible.builtin.")
    return "block" if "block" in task else "?"


def _walk(tasks: list[dict[str, Any]], role: str, out: list[tuple[str, str, str]]) -> None:
    """(module, name, when) of each task in the order Ansible runs them, into includes and blocks."""
    for task in tasks:
        mod = _module(task)
        when = " ".join(task["when"]) if isinstance(task.get("when"), list) else str(task.get("when", ""))
        if mod == "block":
            for part in ("block", "rescue", "always"):
                _walk(task.get(part) or [], role, out)
            continue
        if mod in ("import_tasks", "include_tasks"):
            arg = task["ansible.builtin." + mod]
            name = arg["file"] if isinstance(arg, dict) else arg
            if not when.startswith("ansible_check_mode") and "rc == 127" not in when:  # the missing-tool path
                _walk(yaml.safe_load((ROLES / role / "tasks" / name).read_text()), role, out)
            continue
        if mod in ("include_role", "import_role"):
            arg = task["ansible.builtin." + mod]
            entry = arg.get("tasks_from", "main")
            _walk(yaml.safe_load((ROLES / arg["name"] / "tasks" / f"{entry}.yml").read_text()), arg["name"], out)
            continue
        out.append((mod, str(task.get("name", "")), when))


@pytest.mark.parametrize("playbook", ["deploy.yml", "rollback.yml"])
def test_the_first_thing_a_run_does_on_a_host_is_taking_the_lock(playbook: str) -> None:
    plays = yaml.safe_load((ROOT / "playbooks" / playbook).read_text())
    first = plays[0]
    assert first["gather_facts"] is False and first["any_errors_fatal"] is True
    steps: list[tuple[str, str, str]] = []
    _walk(first["tasks"], "app", steps)
    names = [n for _, n, _ in steps]
    lock = next(i for i, n in enumerate(names) if n.startswith("Take the operation lock"))
    assert steps[lock][0] == "raw"  # one SSH round trip, no module wrapper on the host
    # (tasks that run in check mode only do not count: check mode takes no lock)
    before = [(m, n) for m, n, w in steps[:lock] if m not in CONTROLLER_ONLY and not w.startswith("ansible_check_mode")]
    # nothing before the lock reaches the host (no facts, no tool check, no build, no preflight on the host)
    assert before == [], before
    # and the lock is taken in play 1, before the plays that build, ship and change
    later: list[tuple[str, str, str]] = []
    _walk(plays[1]["tasks"], "app", later)
    assert any(n.startswith("Release the operation lock") for _, n, _ in later)


def test_deploy_and_rollback_share_one_locked_shape() -> None:
    for playbook in ("deploy.yml", "rollback.yml"):
        text = (ROOT / "playbooks" / playbook).read_text()
        assert "tasks_from: lock\n" in text and "tasks_from: locked\n" in text, playbook
        assert "common_lock_operation" not in text and "lock_release" not in text, playbook  # one place: the app role


def test_a_source_directory_is_not_built_before_the_playbook_takes_the_lock(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from opsbook.commands import deploy

    src = tmp_path / "app"
    src.mkdir()
    (src / "pyproject.toml").write_text('[project]\nname = "x"\ndynamic = ["version"]\n')
    (src / "VERSION").write_text("3.1.0\n")

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"built before the lock: {args}")

    monkeypatch.setattr(deploy.subprocess, "run", no_build)
    given = deploy.target_vars(str(src), "2.0.0")
    assert given["app_version"] == "2.0.0" and given["app_source_dir"] == str(src.resolve())
    assert given["app_artifact"] == ""
    declared = deploy.target_vars(str(src), None)  # the VERSION file names it
    assert declared["app_version"] == "3.1.0" and declared["app_source_dir"] == str(src.resolve())


def _exec_start(unit: str) -> list[str]:
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    line = (line.removeprefix("ExecStart=").replace("%H", "db1").replace("%n", "opsbook-backup@shop.service")
            .replace("%i", "shop").replace("${INVOCATION_ID}", "0123abcd"))
    return shlex.split(line)


def test_the_backup_timer_run_holds_the_operation_lock_while_opsbook_backup_runs(tmp_path: Path) -> None:
    unit = render(ROLES / "backup" / "templates" / "opsbook-backup@.service.j2")
    argv = _exec_start(unit)
    assert argv[:2] == ["/usr/local/sbin/opsbook-lock", "run"], argv
    assert "RuntimeDirectory=opsbook" in unit and "RuntimeDirectoryPreserve=yes" in unit
    sep = argv.index("--")
    assert argv[sep + 1:] == ["/usr/local/sbin/opsbook-backup", "--database", "shop", "run"]
    assert float(argv[argv.index("--wait") + 1]) > 0  # a busy host makes it wait, not fail at once
    # run it: the real lock tool, with the backup replaced by a command that shows the lock it runs under
    show = [sys.executable, "-c", "import os, sys; sys.stdout.write(open(os.environ['OPSBOOK_LOCK_DIR'] "
                                  "+ '/operation.lock').read())"]
    env = dict(os.environ, OPSBOOK_LOCK_DIR=str(tmp_path))
    res = subprocess.run([sys.executable, str(LOCK_TOOL), *argv[1:sep + 1], *show], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    held = json.loads(res.stdout)
    assert held["operation"] == "backup run shop (timer)" and held["holder"] == "root@db1", held
    assert not (tmp_path / "operation.lock").exists()  # given back when the backup ended
    # a deploy holding the lock: the timer's run waits (here 0 s: refused, exit 75, naming the deploy)
    subprocess.run([sys.executable, str(LOCK_TOOL), "--dir", str(tmp_path), "acquire", "--holder", "alice@ctl1",
                    "--run-id", "r1", "--operation", "deploy 2.0.0"], check=True, capture_output=True)
    argv[argv.index("--wait") + 1] = "0"
    res = subprocess.run([sys.executable, str(LOCK_TOOL), *argv[1:sep + 1], *show], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 75 and "deploy 2.0.0 by alice@ctl1" in res.stderr, res
