"""The CLI's options: one set of common options on every verb, Ansible's own options passed through (issue 12)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from opsbook import cli, options, runner

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["provision", "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--check" in out


def test_usage_errors_exit_1_not_2(capsys: pytest.CaptureFixture[str]) -> None:
    # 2 means "a task failed" in opsbook; argparse would say 2 for a usage error
    assert cli.main(["deploy"]) == 1
    assert "TARGET" in capsys.readouterr().err


# --------------------------------------------------------------------------- one set of common options


# the least each verb needs besides options (a new verb must be added here: the test below walks the parser)
MINIMAL = {
    "provision": [], "deploy": ["1.0.0"], "rollback": [], "releases": [], "backup": ["list"], "drill": [],
    "status": [], "demo": [],
    "init": ["inv", "--web", "web1", "--domain", "shop.example.com", "--email", "ops@example.com", "--admin-key", "k"],
    "lab up": ["web1"], "lab down": ["web1"], "lab restart": ["web1"], "lab status": [], "lab ssh": ["web1"],
}
PLAYBOOK_VERBS = ["provision", "deploy", "rollback", "releases", "backup", "drill", "status"]


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every leaf verb of PARSER ("lab up" for a lab action), with its parser."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(subcommands(sub, f"{prefix}{name} ") or {f"{prefix}{name}": sub})
    return out


def verbs() -> dict[str, argparse.ArgumentParser]:
    found = {k: v for k, v in subcommands(cli.build_parser(["provision"])).items() if k not in cli.LAB_VERBS}
    for lab_verb in cli.LAB_VERBS:  # registered for real only when they are the verb
        found.update({k: v for k, v in subcommands(cli.build_parser([lab_verb])).items() if k.startswith(lab_verb)})
    return found


def parse(words: str, *rest: str, first: bool = False) -> argparse.Namespace:
    """Parse `opsbook WORDS MINIMAL REST` (options last), or with FIRST `opsbook WORDS REST MINIMAL`."""
    argv = [*words.split(), *rest, *MINIMAL[words]] if first else [*words.split(), *MINIMAL[words], *rest]
    return cli.build_parser(argv).parse_args(argv)


def test_every_verb_is_covered_here() -> None:
    assert set(verbs()) == set(MINIMAL)


@pytest.mark.parametrize("words", sorted(MINIMAL))
def test_every_verb_takes_the_common_options(words: str) -> None:
    """`opsbook lab up web1 -q` was refused while `opsbook provision -q` was taken: -q is everyone's now."""
    assert parse(words, "-q", first=True).quiet is True
    if words != "lab ssh":  # after its host, `opsbook lab ssh` takes the remote command: `lab ssh web1 -- -q` stays
        assert parse(words, "--quiet").quiet is True
    assert parse(words).quiet is False


@pytest.mark.parametrize("words", PLAYBOOK_VERBS)
def test_every_playbook_verb_takes_ansibles_options(words: str, tmp_path: Path) -> None:
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text("sshd_port: 2222\n")
    args = parse(words, "-e", f"@{vars_file}", "-e", "a=1 b=two", "--extra-vars", '{"c": [1, 2]}', "-t", "sshd",
                 "--tags", "firewall", "--skip-tags", "acme", "-vvv", "--diff", "--check", "--limit", "web",
                 "-i", "inventories/example")
    assert (args.check, args.limit, args.inventory) == (True, "web", "inventories/example")
    assert options.ansible(args).args() == [
        "-e", f"@{vars_file.resolve()}", "-e", "a=1 b=two", "-e", '{"c": [1, 2]}',
        "--tags", "sshd,firewall", "--skip-tags", "acme", "-vvv"]
    assert options.ansible(args).diff is True


def test_common_options_are_defined_once() -> None:
    """No verb adds -q, -e, -i, --limit or --check by itself: they come from options.common()/playbook()."""
    src = (ROOT / "src" / "opsbook").rglob("*.py")
    offenders = [str(p.relative_to(ROOT)) for p in src if p.name != "options.py" and any(
        f'add_argument("{flag}"' in p.read_text() for flag in ("-q", "-e", "-i", "-l", "-C", "-v", "-t"))]
    # `opsbook lab up -i` is the lab inventory (not a playbook's): the one exception
    assert offenders == ["src/opsbook/lab/cli.py"]


@pytest.mark.parametrize(("value", "message"), [
    ("novalue", "KEY=VALUE"), ("not-a-name=1", "not a variable name"), ("@/nonexistent/vars.yml", "no such"),
    ("[1, 2]", "mapping"), ("{a: [1}", "not YAML"),
])
def test_a_malformed_extra_var_is_a_usage_error(value: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        options.user_extravars([value])


def test_an_extra_vars_file_is_passed_by_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ansible-playbook runs from the project directory: @vars.yml is the caller's file, made absolute."""
    (tmp_path / "vars.yml").write_text("x: 1\n")
    monkeypatch.chdir(tmp_path)
    passed, merged = options.user_extravars(["@vars.yml", "y=2"])
    assert passed == (f"@{tmp_path / 'vars.yml'}", "y=2") and merged == {"x": 1, "y": "2"}


def test_a_vault_encrypted_extra_vars_file_is_passed_unread(tmp_path: Path) -> None:
    secret = tmp_path / "secret.yml"
    secret.write_text("$ANSIBLE_VAULT;1.1;AES256\n6162\n")
    assert options.user_extravars([f"@{secret}"]) == ((f"@{secret}",), {})
    assert options.user_extravars(["@/dev/null"]) == (("@/dev/null",), {})  # inventories/example/README.md


# --------------------------------------------------------------------------- passed to ansible-playbook, for real


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPSBOOK_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    # a log's width, not a terminal's: pytest-xdist's workers set COLUMNS=80, and the CLI honours COLUMNS
    monkeypatch.delenv("COLUMNS", raising=False)
    inv = tmp_path / "inv"
    inv.mkdir()
    (inv / "hosts.yml").write_text(LOCAL)
    return inv


def redirect(monkeypatch: pytest.MonkeyPatch, playbook: Path) -> None:
    """The verb's playbook replaced by PLAYBOOK: the real CLI, runner and ansible-playbook."""
    real = runner.run_playbook

    def redirected(_: str, **kw: Any) -> runner.RunResult:
        return real(str(playbook), **kw)

    monkeypatch.setattr(runner, "run_playbook", redirected)


def ansible_command(tmp_path: Path) -> list[str]:
    """The ansible-playbook command line ansible-runner ran (its artifacts keep it)."""
    found = sorted((tmp_path / "state" / "artifacts").glob("*/artifacts/*/command"))
    return list(json.loads(found[-1].read_text())["command"])


TAGGED = """---
- name: Tagged
  hosts: all
  gather_facts: false
  tasks:
    - name: Show
      ansible.builtin.debug:
        msg: "{{ {'from_file': from_file | default(''), 'kv': kv | default(''), 'json': json_var | default('')} }}"
      tags: [shown]
    - name: Skipped by tags
      ansible.builtin.debug:
        msg: never
      tags: [other]
"""


def test_extra_vars_from_a_file_tags_and_verbosity_reach_ansible_playbook(
        tmp_path: Path, local: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`opsbook provision -e @file` (inventories/example/README.md) exited 1 with a usage error."""
    playbook = tmp_path / "tagged.yml"
    playbook.write_text(TAGGED)
    redirect(monkeypatch, playbook)
    (tmp_path / "vars.yml").write_text("from_file: yes-from-file\n")
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["provision", "-i", str(local), "-e", "@vars.yml", "-e", "kv='two words'",
                   "-e", '{"json_var": 3}', "--tags", "shown", "--skip-tags", "other", "-vv"])
    assert rc == 0
    command = ansible_command(tmp_path)
    assert ["-e", f"@{tmp_path / 'vars.yml'}"] == command[command.index(f"@{tmp_path / 'vars.yml'}") - 1:][:2]
    assert "--tags" in command and "--skip-tags" in command and "-vv" in command
    res = runner.task_results(sorted((tmp_path / "state" / "runs").glob("*.json"))[-1], "Show")["localhost"]
    assert res["msg"] == {"from_file": "yes-from-file", "kv": "two words", "json": 3}
    assert runner.task_results(sorted((tmp_path / "state" / "runs").glob("*.json"))[-1], "Skipped by tags") == {}
    err = capsys.readouterr().err
    # -v: Ansible's own output (its TASK banners and recap), not only opsbook's progress
    assert "TASK [Show]" in err and "PLAY RECAP" in err


WRITE = """---
- name: Write
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the file
      ansible.builtin.copy:
        dest: "{{ target }}"
        content: "new line\\n"
        mode: "0600"
"""


def test_diff_is_ansibles_own_shown_once(tmp_path: Path, local: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """--diff shows Ansible's own rendering (its `+++ after: PATH` header), once; no re-rendering by hand."""
    playbook = tmp_path / "write.yml"
    playbook.write_text(WRITE)
    target = tmp_path / "target.txt"
    target.write_text("old line\n")
    redirect(monkeypatch, playbook)
    assert cli.main(["provision", "-i", str(local), "--diff", "-e", f"target={target}"]) == 0
    err = capsys.readouterr().err
    assert f"+++ after: {target}" in err
    assert err.count("-old line") == 1 and err.count("+new line") == 1
    assert target.read_text() == "new line\n"
    target.write_text("old line\n")
    assert cli.main(["provision", "-i", str(local), "--check", "-e", f"target={target}"]) == 0  # implies --diff
    err = capsys.readouterr().err
    assert f"+++ after: {target}" in err and target.read_text() == "old line\n"


# --------------------------------------------------------------------------- a log reads as well as the screen

FAIL = """---
- name: Fail
  hosts: all
  gather_facts: false
  tasks:
    - name: Refuse
      ansible.builtin.fail:
        msg: "{{ long }}"
"""


def test_without_a_tty_long_messages_and_tables_are_not_wrapped(tmp_path: Path, local: Path) -> None:
    """Through a pipe (CI logs, `| tee`), Rich wrapped at 80 columns, mid-word. A failure message, the summary and
    the demo's table keep each line whole."""
    playbook = tmp_path / "fail.yml"
    playbook.write_text(FAIL)
    long = "REFUSED: " + " ".join(f"word{i:03d}" for i in range(40))  # about 320 characters
    script = f"""
import sys
from opsbook import cli, runner
from opsbook.lab import demo
real = runner.run_playbook
runner.run_playbook = lambda _, **kw: real({str(playbook)!r}, **kw)
rc = cli.main(["provision", "-i", {str(local)!r}, "-e", {json.dumps(json.dumps({"long": long}))}])
demo._print_table(runner.make_console(), {{"result": "failed", "total_seconds": 1.0, "steps": [
    {{"step": "deploy a broken 3.0.0 under load: refused", "seconds": 2.0, "ok": False, "result": {long!r}}}]}})
sys.exit(rc)
"""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["OPSBOOK_STATE"] = str(tmp_path / "state")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert res.returncode == 2, res.stderr
    assert any(long in line for line in res.stderr.splitlines()), res.stderr  # the failure, on one line
    assert any(long in line for line in res.stdout.splitlines()), res.stdout  # the demo's table row, on one line
