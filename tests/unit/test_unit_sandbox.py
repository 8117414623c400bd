"""Every systemd unit the roles install is sandboxed: rendered with its role's variables and scored by
`systemd-analyze security --offline=true` (systemd 252, Debian 12). Exposure is 0.0 (locked down) to 10.0 (root,
no sandbox). Each unit has its ceiling in THRESHOLDS: app@ 2.0 and the backup units 5.0 (issue 11), a new unit
its measured value rounded up, so a weaker sandbox fails here. A unit template no row names fails too."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

from tests.unit.helpers import trusted

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"

# unit file name -> highest exposure systemd-analyze may give it
THRESHOLDS: dict[str, float] = {
    "app@.service": 2.0,
    "opsbook-backup@.service": 5.0,
    "opsbook-backup-store-prune.service": 5.0,
}

# what an inventory or the play gives the templates (the roles' defaults and vars give the rest)
PLAY_VARS: dict[str, Any] = {
    "ansible_managed": "Ansible managed",
    "inventory_hostname": "db1.example.com",
    "group_names": ["web", "db"],
    "groups": {"all": ["db1.example.com"], "backup_store": ["backup1.example.com"]},
    "ansible_play_hosts_all": ["db1.example.com"],
    "playbook_dir": str(ROOT / "playbooks"),
    "role_path": str(ROLES),
    "hostvars": {},
}


def _units() -> list[tuple[str, Path]]:
    """(installed unit name, source) of every unit the roles ship: templates/*.service.j2, files/*.service.
    Drop-ins for packaged units (*.service.conf.j2) are not units of their own."""
    found = [(p.name.removesuffix(".j2"), p) for p in ROLES.glob("*/templates/*.service.j2")]
    found += [(p.name, p) for p in ROLES.glob("*/files/*.service")]
    return sorted(found)




def _role_vars(role: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in (role / "defaults" / "main.yml", role / "vars" / "main.yml"):
        if f.is_file():
            out.update(yaml.safe_load(f.read_text()) or {})
    return out


def render(source: Path) -> str:
    if not source.name.endswith(".j2"):
        return source.read_text()
    role = source.parent.parent
    variables = trusted(_role_vars(role)) | PLAY_VARS | {"role_path": str(role)}
    templar = Templar(loader=DataLoader(), variables=variables)
    return str(templar.template(trust_as_template(source.read_text())))


def exposure(unit_file: Path) -> tuple[float, str]:
    """Overall exposure of a unit file and what systemd-analyze said on stderr (parse warnings)."""
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_file)],
                         capture_output=True, text=True, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert m, f"systemd-analyze gave no score for {unit_file.name}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return float(m.group(1)), res.stderr


pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def test_every_unit_has_a_ceiling() -> None:
    names = {name for name, _ in _units()}
    assert names, "no unit templates found"
    assert names == set(THRESHOLDS), (
        f"units without a ceiling: {sorted(names - set(THRESHOLDS))}; rows without a unit: "
        f"{sorted(set(THRESHOLDS) - names)} (measure new units and add them to THRESHOLDS)")


@pytest.mark.parametrize(("name", "source"), _units(), ids=[name for name, _ in _units()])
def test_unit_sandbox_exposure(name: str, source: Path, tmp_path: Path) -> None:
    text = render(source)
    # a template unit is scored as an instance of it (app@.service -> app@blue.service)
    unit = tmp_path / name.replace("@.", "@blue.")
    unit.write_text(text)
    score, warnings = exposure(unit)
    # a directive systemd cannot parse is ignored, and the unit is weaker than it reads
    assert not re.search(r"Failed to parse|Unknown (key|lvalue)|ignoring", warnings), warnings
    assert score <= THRESHOLDS[name], f"{name}: exposure {score} > {THRESHOLDS[name]}\n{text}"


@pytest.mark.parametrize("mdwe", [True, False])
def test_app_jit_knob(mdwe: bool, tmp_path: Path) -> None:
    """app_memory_deny_write_execute=false (for a JIT such as Node's V8) drops only that protection."""
    role = ROLES / "app"
    variables = trusted(_role_vars(role)) | PLAY_VARS | {"app_memory_deny_write_execute": mdwe}
    text = str(Templar(loader=DataLoader(), variables=variables).template(
        trust_as_template((role / "templates" / "app@.service.j2").read_text())))
    assert f"MemoryDenyWriteExecute={'yes' if mdwe else 'no'}" in text.splitlines()
    unit = tmp_path / "app@blue.service"
    unit.write_text(text)
    score, _ = exposure(unit)
    assert score <= THRESHOLDS["app@.service"]


# the transient units the roles start with systemd-run: (role, tasks file, task name prefix) -> ceiling
TRANSIENT: dict[tuple[str, str, str], float] = {
    ("app", "deploy.yml", "Run the migrations hook"): 2.0,  # the app's own code, as sandboxed as app@
}


def transient_unit(role: str, tasks: str, task_name: str) -> str:
    """The unit a systemd-run task starts, as a unit file: its --property=... arguments under [Service], read from
    the task's argv rendered with the role's variables (as the play renders it)."""
    task = next(t for t in yaml.safe_load((ROLES / role / "tasks" / tasks).read_text())
                if str(t.get("name", "")).startswith(task_name))
    argv_in = task["ansible.builtin.command"]["argv"]
    variables = trusted(_role_vars(ROLES / role)) | PLAY_VARS | {
        "role_path": str(ROLES / role), "__app_target": "2.0.0", "app_migrate_command": "true"}
    argv = Templar(loader=DataLoader(), variables=variables).template(trusted(argv_in))
    assert argv[0] == "systemd-run", argv
    props = [a.removeprefix("--property=") for a in argv if str(a).startswith("--property=")]
    return "\n".join(["[Service]", "Type=exec", "ExecStart=/bin/sh -c true", *props, ""])


@pytest.mark.parametrize("key", list(TRANSIENT), ids=[f"{r}:{t}" for r, _, t in TRANSIENT])
def test_transient_unit_sandbox_exposure(key: tuple[str, str, str], tmp_path: Path) -> None:
    text = transient_unit(*key)
    unit = tmp_path / "app-migrate-2-0-0.service"
    unit.write_text(text)
    score, warnings = exposure(unit)
    assert not re.search(r"Failed to parse|Unknown (key|lvalue)|ignoring", warnings), warnings
    assert score <= TRANSIENT[key], f"{key}: exposure {score} > {TRANSIENT[key]}\n{text}"


def render_app(extra: dict[str, Any], template: str = "app@.service.j2") -> str:
    role = ROLES / "app"
    variables = trusted(_role_vars(role)) | PLAY_VARS | extra
    return str(Templar(loader=DataLoader(), variables=variables).template(
        trust_as_template((role / "templates" / template).read_text())))


def test_app_node_unit(tmp_path: Path) -> None:
    """Kind node: node runs the entry point (no npm), on the colour's socket path in PORT (or the app's variable),
    a stale socket removed first, SIGTERM then the timeout, restarts on failure, APP_VERSION from the release, and
    the app's sandbox without MemoryDenyWriteExecute (V8's JIT) - under the same ceiling as the WSGI unit."""
    text = render_app({"app_kind": "node", "app_node_entry": "dist/main.js", "app_node_port_env": "SOCKET_PATH",
                       "app_node_options": ["--max-old-space-size=256"], "app_memory_max": "512M"})
    lines = text.splitlines()
    assert {"MemoryMax=512M", "LimitNOFILE=65536"} <= set(lines), text
    assert "ExecStart=/usr/bin/node --max-old-space-size=256 dist/main.js" in lines, text
    assert "Environment=APP_COLOUR=%i NODE_ENV=production SOCKET_PATH=/run/app/%i.sock" in lines, text
    assert "ExecStartPre=/bin/rm -f /run/app/%i.sock" in lines, text
    assert "EnvironmentFile=/srv/app/colours/%i/release.env" in lines, text
    assert lines.index("EnvironmentFile=/srv/app/colours/%i/release.env") > lines.index(
        "EnvironmentFile=/etc/app/app.env")
    assert {"Type=exec", "KillSignal=SIGTERM", "TimeoutStopSec=20", "Restart=on-failure",
            "MemoryDenyWriteExecute=no"} <= set(lines), text
    commands = [ln for ln in lines if ln.startswith("Exec")]
    assert not any("npm" in c or "gunicorn" in c for c in commands), commands
    unit = tmp_path / "app@blue.service"
    unit.write_text(text)
    score, warnings = exposure(unit)
    assert not re.search(r"Failed to parse|Unknown (key|lvalue)|ignoring", warnings), warnings
    print(f"app@ kind node: exposure {score}")
    assert score <= THRESHOLDS["app@.service"], f"exposure {score}\n{text}"


def test_app_wsgi_unit_is_unchanged_by_the_kinds() -> None:
    """Kind wsgi (the default) renders as before the kinds: gunicorn, Type=notify, the MemoryDenyWriteExecute knob."""
    text = render_app({})
    assert "Type=notify" in text and "/venv/bin/gunicorn" in text and "MemoryDenyWriteExecute=yes" in text
    assert "LimitNOFILE=65536" in text.splitlines()
    assert not [ln for ln in text.splitlines() if ln.startswith("MemoryMax")]  # no memory limit unless asked
    assert "node" not in text.lower().replace("nodelay", "")
    assert "d /run/app 0750 app www-data -" in render_app({}, "tmpfiles.conf.j2")
    assert "d /run/app 2750 app www-data -" in render_app({"app_kind": "node"}, "tmpfiles.conf.j2")


def test_app_node_release_check_is_sandboxed(tmp_path: Path) -> None:
    """The node release check (it loads the release's native addons: the app's own code) runs as the app user,
    offline, in the app's sandbox."""
    role = ROLES / "app"
    variables = trusted(_role_vars(role)) | PLAY_VARS | {"app_kind": "node", "__app_target": "2.0.0"}
    argv = Templar(loader=DataLoader(), variables=variables).template(trusted("{{ __app_node_check_argv }}"))
    assert argv[0] == "systemd-run" and argv[-8:] == [
        "/usr/bin/python3", "/usr/local/sbin/opsbook-app", "node-check", "--release", "/srv/app/releases/2.0.0",
        "--entry", "index.js", "--node", "/usr/bin/node"][-8:], argv
    props = [a.removeprefix("--property=") for a in argv if str(a).startswith("--property=")]
    assert {"User=app", "PrivateNetwork=yes", "MemoryDenyWriteExecute=no"} <= set(props), props
    unit = tmp_path / "app-check-2-0-0.service"
    unit.write_text("\n".join(["[Service]", "Type=exec", "ExecStart=/bin/sh -c true", *props, ""]))
    score, warnings = exposure(unit)
    assert not re.search(r"Failed to parse|Unknown (key|lvalue)|ignoring", warnings), warnings
    assert score <= 2.0, score
