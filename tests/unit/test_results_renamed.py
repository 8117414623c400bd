"""Issue 12, acceptance 3: renaming any task in any playbook breaks no CLI command.

The CLI reads what the playbooks publish with set_stats (docs/results.md), never a task's name. Checked three ways:
- every playbook is copied with every play, task, block and handler renamed; the copy of status.yml runs through
  the CLI's runner on this machine (a faked host, as in test_status.py) and the CLI's parser finds every report;
- runner artifacts recorded from real lab runs (tests/unit/fixtures/runs/, trimmed: see its README) get every task
  name in their events rewritten, and every CLI parser (status, backup run/list/verify, releases, deploy, rollback,
  drill) still reads the same results from them;
- each statistic that docs/results.md documents is published by the playbook it names.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsbook import runner
from opsbook.commands import backup, deploy, drill, status
from tests.unit.test_status import fake_host  # noqa: F401  (a fixture: the faked web host)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runs"
TASK_LISTS = ("pre_tasks", "tasks", "post_tasks", "handlers", "block", "rescue", "always")


def _rename(tasks: list[dict[str, Any]], counter: list[int]) -> None:
    for task in tasks or []:
        counter[0] += 1
        task["name"] = f"renamed {counter[0]}"
        for key in TASK_LISTS:
            _rename(task.get(key) or [], counter)


def renamed_playbooks(dest: Path) -> Path:
    """A copy of playbooks/ with every play, task, block and handler renamed (named or not before)."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted((ROOT / "playbooks").glob("*.yml")):
        plays = yaml.safe_load(src.read_text())
        _rename(plays, [0])
        (dest / src.name).write_text("---\n" + yaml.safe_dump(plays, sort_keys=False, width=1000))
    return dest


def test_the_copy_renames_every_named_task(tmp_path: Path) -> None:
    copy = renamed_playbooks(tmp_path / "playbooks")
    for src in sorted((ROOT / "playbooks").glob("*.yml")):
        before = len(re.findall(r"^\s*- name: ", src.read_text(), flags=re.MULTILINE))
        after = re.findall(r"^\s*- name: (.*)$", (copy / src.name).read_text(), flags=re.MULTILINE)
        assert before and len(after) >= before and all(n.startswith("renamed ") for n in after), src


def test_status_of_a_renamed_playbook_through_the_cli_runner(fake_host: Path, tmp_path: Path,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    copy = renamed_playbooks(tmp_path / "playbooks")
    monkeypatch.setenv("OPSBOOK_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}")
    inventory = yaml.safe_load((fake_host / "hosts.yml").read_text())
    internal = {k: v for k, v in inventory["all"]["children"]["web"]["hosts"]["web1"].items() if k.startswith("__")}
    result = runner.run_playbook(str(copy / "status.yml"), inventory=str(fake_host / "hosts.yml"),
                                 extravars=internal, verb="status", quiet=True)
    assert result.ok, (result.error, {h: t.messages for h, t in result.hosts.items()})
    events = [json.loads(p.read_text()) for p in (tmp_path / "state" / "artifacts").glob("*/artifacts/*/job_events/*")]
    tasks = {(e.get("event_data") or {}).get("task") for e in events} - {None, ""}
    assert tasks and all(t.startswith("renamed ") for t in tasks), tasks  # nothing of the original names ran
    # the CLI's parser, on the run's results and on the run's report
    for reports in (status.from_results(result.results), status.collect(result.report)):
        assert set(reports) == {"web1"}
        assert reports["web1"]["problems"] == []
        assert reports["web1"]["app"]["live_version"] == "2.0.0"
        assert reports["web1"]["backups"][0]["newest_verified"] == "app-1.dump"


# ---------------------------------------------------------------- recorded lab runs


def recorded(tmp_path: Path, run: str, rename: bool) -> Path:
    """A recorded run's report and artifacts in TMP_PATH; with RENAME every task, play and role name in its events
    is rewritten. Returns the report's path (its `artifacts` pointing at the copy)."""
    src = FIXTURES / run
    dest = tmp_path / run
    shutil.copytree(src, dest)
    report = dest / "report.json"
    data = json.loads(report.read_text())
    data["artifacts"] = str(dest / "artifacts")
    data.pop("results", None)  # read from the artifacts, as AWX or ansible-runner users would
    report.write_text(json.dumps(data))
    if rename:
        for n, path in enumerate(sorted(dest.glob("artifacts/job_events/*.json"))):
            event = json.loads(path.read_text())
            ed = event.get("event_data") or {}
            for key in ("task", "name", "play", "role"):
                if ed.get(key):
                    ed[key] = f"renamed {n}"
            event["stdout"] = re.sub(r"(TASK|PLAY) \[[^\]]*\]", r"\1 [renamed]", str(event.get("stdout", "")))
            path.write_text(json.dumps(event))
    return report


def parsed(run: str, report: Path) -> Any:
    """What the CLI shows for RUN, by the parser its command uses."""
    res = runner.results(report)
    if run == "status":
        return status.from_results(res)
    if run.startswith("backup-"):
        return backup.command_output(res)
    if run == "releases":
        return deploy.release_states(res)
    if run.startswith(("deploy", "rollback")):
        return deploy.outcome_lines(res, "opsbook_rollback" if run == "rollback" else "opsbook_deploy")
    if run == "drill":
        return drill.measures(res)
    raise AssertionError(run)


RUNS = sorted(p.name for p in FIXTURES.iterdir() if (p / "report.json").is_file()) if FIXTURES.is_dir() else []


def test_every_cli_verb_has_a_recording() -> None:
    # drill: not recorded (a lab drill boots and provisions one more host); its parser is checked on canned results
    assert {"status", "backup-run", "backup-list", "backup-verify", "releases", "deploy", "deploy-noop",
            "rollback"} <= set(RUNS)


def test_drill_measures_come_from_the_statistic() -> None:
    measures = {"rto_seconds": 301.2, "rpo_seconds": 1234.0, "backup": "app-20261130T090000Z.dump"}
    results = {"opsbook_drill": {"drill1": measures, "junk": "not a mapping"}}
    assert drill.measures(results) == {"drill1": measures}
    assert drill.measures({}) == {}


@pytest.mark.parametrize("run", RUNS)
def test_parsers_read_the_same_results_with_every_task_renamed(run: str, tmp_path: Path) -> None:
    original = parsed(run, recorded(tmp_path / "a", run, rename=False))
    renamed = parsed(run, recorded(tmp_path / "b", run, rename=True))
    assert original, f"{run}: the parser found nothing in the recording"
    assert renamed == original


def test_recorded_results_read_as_the_cli_shows_them(tmp_path: Path) -> None:
    def get(run: str) -> Any:
        return parsed(run, recorded(tmp_path, run, rename=True))

    st = get("status")
    assert set(st) == {"r-web1", "r-db1", "r-store1"}
    assert st["r-web1"]["app"]["live_version"] == "1.0.0"
    assert st["r-db1"]["backups"][0]["verification"] == "passed"
    assert "passed" in get("backup-list")["r-db1"]
    assert get("releases")["r-web1"]["live_version"] == "1.0.0"
    assert get("deploy") == ["r-web1: 2.0.0 live (green), was 1.0.0"]
    assert get("deploy-noop") == ["r-web1: 2.0.0 live already (green), nothing switched"]
    assert get("rollback") == ["r-web1: 1.0.0 live (blue), was 2.0.0"]


# ---------------------------------------------------------------- the documented statistics


def published(playbook: Path) -> set[str]:
    """The keys a playbook publishes with set_stats (per_host: false), wherever the task sits."""
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for n in node:
                walk(n)
        elif isinstance(node, dict):
            stats = node.get("ansible.builtin.set_stats")
            if isinstance(stats, dict):
                assert stats.get("per_host") is False, (playbook, node.get("name"))
                keys.update(stats.get("data") or {})
            for value in node.values():
                walk(value)

    walk(yaml.safe_load(playbook.read_text()))
    return keys


def test_each_documented_statistic_is_published_by_its_playbook() -> None:
    doc = (ROOT / "docs" / "results.md").read_text()
    headings = "\n".join(line for line in doc.splitlines() if line.startswith("## "))
    documented = dict(re.findall(r"`(opsbook_\w+)` — `playbooks/(\w+\.yml)`", headings))
    assert {"opsbook_status", "opsbook_backup", "opsbook_releases", "opsbook_deploy", "opsbook_rollback",
            "opsbook_drill"} <= set(documented)
    for key, playbook in documented.items():
        assert key in published(ROOT / "playbooks" / playbook), (key, playbook)
