"""logrotate: configs clean under `logrotate -d`, forced rotations that lose no lines, broken configs refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

testinfra_hosts = ["ansible://mol-logrotate"]

LOG_DIR = "/var/log/lrtest"
STATE = "/var/lib/logrotate/lrtest.status"  # the tests' own state file: forced runs don't touch the real one
ROLE_MARK = "rotated by the opsbook logrotate role"

# Appends "line N" as fast as it can, one write(2) per line (O_APPEND), so every counted line reached the kernel.
# SIGHUP: reopen the log (what postrotate sends). SIGTERM: stop and write the number of lines to COUNTFILE.
WRITER = """
import os, signal, sys
path, pidfile, countfile = sys.argv[1:4]
flags = {"reopen": False, "stop": False}
signal.signal(signal.SIGHUP, lambda *_: flags.update(reopen=True))
signal.signal(signal.SIGTERM, lambda *_: flags.update(stop=True))
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
with open(pidfile, "w") as f:
    f.write(str(os.getpid()))
n = 0
while not flags["stop"]:
    if flags["reopen"]:
        flags["reopen"] = False
        os.close(fd)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    n += 1
    os.write(fd, b"line %d\\n" % n)
os.close(fd)
os.unlink(pidfile)
with open(countfile + ".tmp", "w") as f:
    f.write(str(n))
os.rename(countfile + ".tmp", countfile)
"""

# Reads the live log and every rotated one (.1, .2.gz...), prints what it found as JSON.
COUNT = """
import glob, gzip, json, re, sys
base = sys.argv[1]
seen, duplicates, broken, files = set(), 0, 0, sorted(glob.glob(base + "*"))
for name in files:
    opener = gzip.open if name.endswith(".gz") else open
    with opener(name, "rb") as f:
        for raw in f:
            match = re.fullmatch(rb"line ([0-9]+)\\n", raw)
            if not match:
                broken += 1
                continue
            n = int(match.group(1))
            duplicates += n in seen
            seen.add(n)
top = max(seen, default=0)
print(json.dumps({"files": files, "lines": len(seen), "duplicates": duplicates, "broken": broken,
                  "missing": top - len(seen), "max": top}))
"""


def wait_for(predicate: Any, timeout: float = 60, step: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def line_count(host: Any, path: str) -> int:
    return int(host.run("wc -l < %s 2>/dev/null || echo 0", path).stdout.strip() or 0)


class Writer:
    """The writer, as a transient systemd unit on the host."""

    def __init__(self, host: Any, log: str, name: str) -> None:
        self.host, self.log, self.unit = host, log, name
        self.pidfile, self.countfile = f"/run/{name}.pid", f"/run/{name}.count"

    def start(self) -> None:
        h = self.host
        h.run("systemctl stop %s", self.unit)
        h.run_expect([0], "rm -f %s %s; mkdir -p %s; rm -f %s*", self.pidfile, self.countfile, LOG_DIR, self.log)
        h.run_expect(
            [0],
            f"systemd-run --quiet --collect --unit={self.unit} python3 -c %s %s %s %s",
            WRITER,
            self.log,
            self.pidfile,
            self.countfile,
        )
        wait_for(lambda: h.file(self.pidfile).exists, timeout=30, what="the writer's pid file")

    def stop(self) -> int:
        self.host.run_expect([0], "systemctl stop %s", self.unit)
        wait_for(lambda: self.host.file(self.countfile).exists, timeout=30, what="the writer's count")
        return int(self.host.file(self.countfile).content_string)

    def found(self) -> dict[str, Any]:
        return json.loads(self.host.check_output("python3 -c %s %s", COUNT, self.log))


@pytest.fixture()
def writer(host: Any) -> Iterator[Writer]:
    w = Writer(host, f"{LOG_DIR}/app.log", "lrtest-writer")
    yield w
    host.run("systemctl stop %s", w.unit)
    host.run("rm -f %s*", w.log)


def role_configs(host: Any) -> list[str]:
    return [
        path
        for path in host.check_output("ls -1 /etc/logrotate.d").split()
        if ROLE_MARK in host.file(f"/etc/logrotate.d/{path}").content_string
    ]


def test_timer_enabled(host: Any) -> None:
    timer = host.service("logrotate.timer")
    assert timer.is_enabled
    assert timer.is_running


def test_every_config_of_the_role_is_clean(host: Any) -> None:
    configs = role_configs(host)
    assert sorted(configs) == ["lrtest", "lrtest-copytruncate", "lrtest-extra"]
    for name in configs:
        run = host.run("logrotate -d -s /tmp/lrtest-debug.status /etc/logrotate.d/%s", name)
        assert run.rc == 0, run.stderr
        assert "error" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr


def test_logrotate_conf_as_a_whole_is_clean(host: Any) -> None:
    """No duplicate entry with Debian's files, no error anywhere in what the timer runs."""
    run = host.run("logrotate -d -s /tmp/lrtest-debug.status /etc/logrotate.conf")
    assert run.rc == 0, run.stderr
    assert "error" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr
    for name in role_configs(host):
        assert f"reading config file {name}\n" in run.stdout + run.stderr


def test_contributed_config_is_installed(host: Any) -> None:
    conf = host.file("/etc/logrotate.d/lrtest-extra").content_string
    assert '"/var/log/lrtest/extra/*.log"' in conf
    assert "\tweekly\n" in conf
    assert "\tsu root adm\n" in conf


def test_copytruncate_is_not_the_default(host: Any) -> None:
    conf = host.file("/etc/logrotate.d/lrtest").content_string
    assert "copytruncate" not in conf
    assert "\tcreate 0640 root adm\n" in conf
    assert "kill -HUP" in conf


def test_forced_rotation_loses_no_lines(host: Any, writer: Writer) -> None:
    """Three forced rotations while the writer appends without pause; every line is found exactly once."""
    writer.start()
    wait_for(lambda: line_count(host, writer.log) > 10000, what="the writer's first lines")
    for _ in range(3):
        host.run_expect([0], "logrotate -f -s %s /etc/logrotate.d/lrtest", STATE)
        # the writer got postrotate's SIGHUP and reopened: the fresh live log fills up again
        wait_for(lambda: line_count(host, writer.log) > 10000, what="lines in the fresh log after the rotation")
    written = writer.stop()
    found = writer.found()
    assert [Path(f).name for f in found["files"]] == ["app.log", "app.log.1", "app.log.2.gz", "app.log.3.gz"]
    assert found["duplicates"] == 0, found
    assert found["broken"] == 0, found
    assert found["missing"] == 0, found
    print("no-loss:", written, found)
    assert found["lines"] == written, (written, found)
    assert written > 40000


def test_copytruncate_can_lose_lines(host: Any) -> None:
    """Why copytruncate is off by default: lines written between its copy and its truncate are gone."""
    w = Writer(host, f"{LOG_DIR}/copytruncate.log", "lrtest-writer-ct")
    losses = []
    try:
        for _ in range(5):  # the loss is a race: it shows up in (nearly) every attempt, not in all of them
            w.start()
            wait_for(lambda: line_count(host, w.log) > 200000, what="a big log to copy")
            host.run_expect([0], "logrotate -f -s %s /etc/logrotate.d/lrtest-copytruncate", STATE)
            written = w.stop()
            found = w.found()
            losses.append(written - found["lines"])
            print("copytruncate:", written, found)
            if losses[-1] > 0:
                break
    finally:
        host.run("systemctl stop %s", w.unit)
        host.run("rm -f %s*", w.log)
    assert max(losses) > 0, f"copytruncate lost no line in {len(losses)} attempts"


# --- broken configs passed as variables: refused by the check, the old file stays -----------------------------


def apply_role(extra_vars: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run molecule/logrotate/converge.yml with EXTRA_VARS overriding the scenario's variables."""
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(extra_vars))
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "-e",
            f"@{vars_file}",
            str(Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


LRTEST = {"name": "lrtest", "paths": [f"{LOG_DIR}/app.log"]}


@pytest.mark.parametrize(
    ("config", "error"),
    [
        # logrotate -d exits 0 on this one: only its output says "error"
        ({**LRTEST, "options": ["bogusdirective"]}, "unknown option 'bogusdirective'"),
        ({**LRTEST, "create": "0640 nosuchuser adm"}, "unknown user 'nosuchuser'"),
        ({**LRTEST, "postrotate": "endscript\nkill -HUP 1"}, "error:"),
        # Debian's apt package already rotates this log
        ({**LRTEST, "paths": ["/var/log/apt/history.log"]}, "duplicate log entry for /var/log/apt/history.log"),
    ],
    ids=["unknown-option", "unknown-user", "broken-script", "duplicate-of-debian"],
)
def test_broken_config_is_refused_and_the_old_file_stays(
    host: Any, tmp_path: Path, config: dict[str, Any], error: str
) -> None:
    before = host.file("/etc/logrotate.d/lrtest").sha256sum
    run = apply_role({"logrotate_configs": [config]}, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert "failed to validate" in output, output
    assert error in output, output
    assert host.file("/etc/logrotate.d/lrtest").sha256sum == before


def test_broken_new_config_is_not_created(host: Any, tmp_path: Path) -> None:
    run = apply_role(
        {"logrotate_configs__broken": [{"name": "lrtest-new", "paths": ["/var/log/apt/term.log"]}]}, tmp_path
    )
    assert run.returncode != 0
    assert "duplicate log entry for /var/log/apt/term.log" in run.stdout + run.stderr
    assert not host.file("/etc/logrotate.d/lrtest-new").exists


@pytest.mark.parametrize(
    ("extra_vars", "named"),
    [
        ({"logrotate_configs__bad": [{"name": "x", "paths": "/var/log/x.log"}]}, "logrotate_configs__bad"),
        ({"logrotate_configs": [{"name": "apt", "paths": ["/var/log/x.log"]}]}, "overwrite files shipped by Debian"),
        ({"logrotate_configs": [{"name": "x", "paths": ["/var/log/x.log"], "rotate": "many"}]}, "rotate"),
    ],
    ids=["contributed-string-paths", "package-file-name", "wrong-type"],
)
def test_bad_input_stops_before_any_change(host: Any, tmp_path: Path, extra_vars: dict[str, Any], named: str) -> None:
    before = host.check_output("ls -l --time-style=+%s /etc/logrotate.d; sha256sum /etc/logrotate.d/*")
    run = apply_role(extra_vars, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    assert named in output, output
    assert "Install logrotate and enable its timer" not in output, "the run went past validation"
    assert host.check_output("ls -l --time-style=+%s /etc/logrotate.d; sha256sum /etc/logrotate.d/*") == before
