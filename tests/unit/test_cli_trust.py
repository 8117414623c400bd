"""Issue 11: the CLI never reports success for work not done, and the values it is given are data, never templates.

These run the real CLI and ansible-runner against temporary inventories (localhost with the local connection, or
hosts that no play selects) and a harmless echo playbook; no lab host is needed. Each reproduces a case of the
issue that exited 0, ran a template or crashed before the fix.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from opsbook import cli, lab, runner, values

ROOT = Path(__file__).resolve().parents[2]
ECHO_VARS = ("app_version", "app_rollback_to", "opsbook_backup_file", "opsbook_backup_database", "opsbook_echo")
ECHO = """---
- name: Echo
  hosts: all
  gather_facts: false
  tasks:
    - name: Echo
      ansible.builtin.debug:
        msg:
""" + "".join(f"          {v}: \"{{{{ {v} | default('') }}}}\"\n" for v in ECHO_VARS)
LOCAL = "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOOK_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    monkeypatch.chdir(ROOT)


def inventory(path: Path, hosts_yml: str = LOCAL) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "hosts.yml").write_text(hosts_yml)
    return path


def reports(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "state" / "runs").glob("*.json"))


@pytest.fixture
def echo(tmp_path: Path) -> Path:
    playbook = tmp_path / "echo.yml"
    playbook.write_text(ECHO)
    return playbook


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, str]:
    """A file and a template that creates it if Ansible ever evaluates it."""
    path = tmp_path / "pwned"
    return path, f"{{{{ lookup('pipe', 'touch {path}') }}}}"


@pytest.fixture
def via_echo(monkeypatch: pytest.MonkeyPatch, echo: Path) -> list[dict[str, Any]]:
    """Every verb's playbook replaced by the echo playbook (the real runner, the real inventory check)."""
    real: Callable[..., runner.RunResult] = runner.run_playbook
    calls: list[dict[str, Any]] = []

    def redirected(playbook: str, **kw: Any) -> runner.RunResult:
        calls.append({"playbook": playbook, **kw})
        return real(str(echo), **kw)

    monkeypatch.setattr(runner, "run_playbook", redirected)
    return calls


def echoed(tmp_path: Path) -> dict[str, Any]:
    report = reports(tmp_path)[-1]
    return dict(runner.task_results(report, "Echo")["localhost"]["msg"])


# --------------------------------------------------------------------------- values are data, never templates


def test_extra_vars_reach_a_play_untemplated_with_their_types(tmp_path: Path, echo: Path,
                                                               canary: tuple[Path, str]) -> None:
    path, template = canary
    result = runner.run_playbook(str(echo), inventory=str(inventory(tmp_path / "inv")), verb="echo", quiet=True,
                                 extravars={"app_version": template, "app_rollback_to": "1.10",
                                            "opsbook_echo": "x{{ 7 * 6 }}"})
    assert runner.exit_code(result) == 0
    assert not path.exists(), "the template in an extra var was evaluated"
    out = echoed(tmp_path)
    assert out["app_version"] == template
    assert out["app_rollback_to"] == "1.10"  # a string stays a string (not the float 1.1)
    assert out["opsbook_echo"] == "x{{ 7 * 6 }}"
    extravars = next((tmp_path / "state" / "artifacts").glob("*/opsbook-extravars.yml"))
    assert extravars.stat().st_mode & 0o777 == 0o600


def test_cli_extra_var_is_ansibles_own_input(tmp_path: Path, via_echo: list[dict[str, Any]]) -> None:
    """Issue 12: -e is the operator's own Ansible input, passed as ansible-playbook takes it (README "Values and
    trust"): a k=v value is a string, a template in it is Ansible's to evaluate. The values the CLI validates
    itself reach the play as data (test above); a -e of the same name comes after them."""
    rc = cli.main(["backup", "verify", "--database", "shop", "-q", "-i", str(inventory(tmp_path / "inv")),
                   "-e", "opsbook_echo=x{{ 7 * 6 }}", "-e", "opsbook_backup_database=from_e"])
    assert rc == 0 and len(via_echo) == 1
    out = echoed(tmp_path)
    assert out["opsbook_echo"] == "x42"  # as `ansible-playbook -e` would give it
    assert out["opsbook_backup_database"] == "from_e"  # a later -e wins, as in Ansible
    rc = cli.main(["backup", "verify", "--database", "shop", "-q", "-i", str(inventory(tmp_path / "inv")),
                   "-e", "opsbook_echo=1.10"])
    assert rc == 0 and echoed(tmp_path)["opsbook_echo"] == "1.10"


@pytest.mark.parametrize(("argv", "names"), [
    (["rollback", "--to", "TEMPLATE"], "--to"),
    (["deploy", "TEMPLATE"], "TARGET"),
    (["backup", "restore", "TEMPLATE", "--yes-overwrite-live"], "file"),
    (["backup", "verify", "--database", "TEMPLATE"], "--database"),
    (["deploy", "1.0.0\n"], "TARGET"),
    (["rollback", "--to", "1.0.0\n"], "--to"),
    (["deploy", "x" * 65], "TARGET"),
    (["deploy", "1.0.0", "--serial", "0"], "--serial"),
    (["rollback", "--serial", "-1"], "--serial"),
    (["backup", "verify", "../../../../etc/shadow"], "file"),
    (["backup", "verify", "app-20260101T000000Z.dump/../../x"], "file"),
    (["backup", "restore", "/var/backups/app-20260101T000000Z.dump", "--yes-overwrite-live"], "file"),
    (["backup", "verify", "app-20260101T000000Z.dump\n"], "file"),
    (["backup", "list", "--database", "app/../../etc"], "--database"),
    (["backup", "list", "--database", "app\n"], "--database"),
    (["provision", "-e", "not-a-name=1"], "--extra-vars"),
])
def test_bad_values_are_refused_before_anything_runs(tmp_path: Path, via_echo: list[dict[str, Any]],
                                                     canary: tuple[Path, str], capsys: pytest.CaptureFixture[str],
                                                     argv: list[str], names: str) -> None:
    path, template = canary
    argv = [a.replace("TEMPLATE", template) for a in argv]
    rc = cli.main([*argv, "-q", "-i", str(inventory(tmp_path / "inv"))])
    assert rc == 1
    assert via_echo == [], "a playbook ran with a refused value"
    assert not path.exists()
    assert names in capsys.readouterr().err


def test_good_values_pass(tmp_path: Path, via_echo: list[dict[str, Any]]) -> None:
    inv = str(inventory(tmp_path / "inv"))
    assert cli.main(["backup", "verify", "shop_db-20260101T023000Z.dump", "--database", "shop_db", "-q",
                     "-i", inv]) == 0
    out = echoed(tmp_path)
    assert (out["opsbook_backup_file"], out["opsbook_backup_database"]) == ("shop_db-20260101T023000Z.dump", "shop_db")


def test_value_patterns_are_full_matches() -> None:
    assert values.version("1.0.0") == "1.0.0"
    for bad in ("1.0.0\n", "", ".1", "1.0 ", "1/0", "x" * 65, "{{ x }}"):
        with pytest.raises(Exception, match="version"):
            values.version(bad)
    assert values.database("") == "" and values.database("_a1") == "_a1"
    for bad in ("app\n", "1app", "a-b", "a" * 64):
        with pytest.raises(Exception, match="database"):
            values.database(bad)
    assert values.positive_int("3") == 3
    assert values.optional_version("") == "" and values.optional_version("1.2.3+build.4") == "1.2.3+build.4"
    assert values.dump_file("shop_db-20260101T023000Z.dump") == "shop_db-20260101T023000Z.dump"


def test_playbook_refuses_a_version_with_a_trailing_newline(tmp_path: Path) -> None:
    """roles/app/tasks/validate.yml: plain ansible-playbook users get the same refusal (`$` let "1.0.0\\n" pass)."""
    playbook = tmp_path / "validate.yml"
    playbook.write_text(
        "- name: Validate\n  hosts: all\n  gather_facts: false\n  vars:\n    app_action: deploy\n    app_nginx: false\n"
        "  tasks:\n    - name: Check\n      ansible.builtin.include_role:\n        name: app\n"
        "        tasks_from: validate\n")
    versions = {"good": "1.0.0", "newline": "1.0.0\n", "long": "x" * 65, "rollback_newline": "1.0.0"}
    hosts = {name: {"ansible_connection": "local", "app_version": v} for name, v in versions.items()}
    hosts["rollback_newline"]["app_rollback_to"] = "0.9.0\n"
    inv = inventory(tmp_path / "inv", json.dumps({"all": {"hosts": hosts}}))
    result = runner.run_playbook(str(playbook), inventory=str(inv), verb="validate", quiet=True)
    assert {h: t.failed for h, t in result.hosts.items()} == {"good": 0, "newline": 1, "long": 1,
                                                              "rollback_newline": 1}


# --------------------------------------------------------------------------- inventory checked before anything runs


BROKEN_YAML = "all:\n  children:\n    web:\n      hosts: [web1\n"


@pytest.mark.parametrize("verb", [["provision"], ["deploy", "2.0.0"], ["backup", "run"], ["status"]])
def test_an_inventory_that_does_not_parse_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     verb: list[str]) -> None:
    inv = inventory(tmp_path / "inv", BROKEN_YAML)
    assert cli.main([*verb, "-q", "-i", str(inv)]) == 1
    err = capsys.readouterr().err
    assert str(inv) in err and "does not parse" in err
    assert reports(tmp_path) == [], "a playbook ran"


def test_a_drill_checks_its_inventory_before_reading_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    def no_lab(*a: Any, **kw: Any) -> None:
        raise AssertionError("a lab host was booted")

    monkeypatch.setattr(lab, "up", no_lab)
    inv = inventory(tmp_path / "inv", BROKEN_YAML)
    assert cli.main(["drill", "-q", "-i", str(inv)]) == 1
    assert f"inventory {inv} does not parse" in capsys.readouterr().err
    assert cli.main(["drill", "-q", "-i", str(tmp_path / "nothing")]) == 1


def test_a_missing_inventory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["deploy", "2.0.0", "-q", "-i", "/nonexistent"]) == 1
    assert "/nonexistent: no such file" in capsys.readouterr().err
    assert reports(tmp_path) == []


def test_an_inventory_without_hosts_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = inventory(tmp_path / "inv", "all:\n  children:\n    web:\n      hosts: {}\n")
    assert cli.main(["provision", "-q", "-i", str(inv)]) == 1
    assert f"{inv} has no hosts" in capsys.readouterr().err
    assert reports(tmp_path) == []


def test_an_unreadable_inventory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    inv = inventory(tmp_path / "inv")
    os.chmod(inv / "hosts.yml", 0)
    # root reads any file: the permission check is the one the CLI makes, as a non-root operator would hit it
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, *a, **kw: str(p) != str(inv) and real_access(p, *a, **kw))
    assert cli.main(["status", "-q", "-i", str(inv)]) == 1
    assert f"{inv}: not readable" in capsys.readouterr().err
    assert reports(tmp_path) == []


def test_a_limit_that_matches_no_host_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = inventory(tmp_path / "inv", "all:\n  children:\n    web:\n      hosts:\n        web1: {}\n")
    assert cli.main(["deploy", "2.0.0", "-q", "-i", str(inv), "--limit", "web9"]) == 1
    assert "--limit web9 matches no host" in capsys.readouterr().err
    assert reports(tmp_path) == []


# --------------------------------------------------------------------------- no host matched: nothing was done


# a host that no play of the real playbooks selects (provision and status skip lab_clients; the others want web/db)
CLIENT_ONLY = ("all:\n  children:\n    lab_clients:\n      hosts:\n        client9:\n"
               "          ansible_connection: local\n")


@pytest.mark.parametrize("verb", [["status"], ["releases"], ["backup", "list"]])
def test_a_run_that_matched_no_host_is_not_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              verb: list[str]) -> None:
    inv = inventory(tmp_path / "inv", CLIENT_ONLY)
    assert cli.main([*verb, "-i", str(inv)]) == 2
    data = json.loads(reports(tmp_path)[-1].read_text())
    assert data["hosts"] == {} and "no host matched" in data["error"]


def test_a_limit_outside_the_plays_is_not_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inv = inventory(tmp_path / "inv", "all:\n  children:\n    db:\n      hosts:\n        db9:\n"
                                      "          ansible_connection: local\n    web:\n      hosts:\n        web9: {}\n")
    assert cli.main(["releases", "-i", str(inv), "--limit", "db9"]) == 2
    assert "no host matched" in capsys.readouterr().err


# --------------------------------------------------------------------------- messages


def test_host_messages_are_not_markup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    playbook = tmp_path / "fail.yml"
    playbook.write_text("- name: Fail\n  hosts: all\n  gather_facts: false\n  tasks:\n    - name: Say [/x]\n"
                        "      ansible.builtin.fail:\n        msg: 'closing [/x] and [bold]open'\n")
    result = runner.run_playbook(str(playbook), inventory=str(inventory(tmp_path / "inv")), verb="fail")
    assert runner.exit_code(result) == 2
    err = capsys.readouterr().err
    assert "closing [/x] and [bold]open" in err and "Say [/x]" in err


def test_summary_and_table_print_markup_as_text() -> None:
    progress = runner.Progress()
    progress.handle({"event": "playbook_on_play_start", "event_data": {"play": "[/p]"}})
    progress.handle({"event": "runner_on_failed", "event_data": {"host": "h[/b]", "task": "[/t]",
                                                                  "res": {"msg": "[/x] [red]"}}})
    out = io.StringIO()
    console = Console(file=out, width=200)
    console.print(progress.table())
    result = runner.RunResult("p[/y].yml", 2, "failed", dict(progress.hosts), Path("/r[/z]"), 1.0, "[/e] run")
    runner.summarize(console, result, progress)
    text = out.getvalue()
    assert "h[/b] · [/t]: [/x] [red]" in text and "[/e] run" in text and "p[/y].yml: failed" in text


def test_a_missing_vault_password_says_so(tmp_path: Path, echo: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    inv = inventory(tmp_path / "inv")
    secret = inv / "group_vars" / "all" / "vault.yml"
    secret.parent.mkdir(parents=True)
    secret.write_text("opsbook_echo: s3cret\n")
    password = tmp_path / "vault-password"
    password.write_text("test-only\n")
    subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "encrypt", "--vault-password-file",
                    str(password), str(secret)], check=True, capture_output=True)
    result = runner.run_playbook(str(echo), inventory=str(inv), verb="echo")
    assert runner.exit_code(result) == 2
    err = capsys.readouterr().err
    assert "Attempting to decrypt but no vault secrets found" in err
    assert "ANSIBLE_VAULT_PASSWORD_FILE" in err
    assert "no vault secrets" in json.loads(result.report.read_text())["error"]
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(password))
    result = runner.run_playbook(str(echo), inventory=str(inv), verb="echo", quiet=True)
    assert runner.exit_code(result) == 0 and echoed(tmp_path)["opsbook_echo"] == "s3cret"
