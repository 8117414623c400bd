"""Lab fixtures: ad-hoc lab hosts and an inventory for them, shared by the end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from opsbook import lab

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "e2e" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


@dataclass
class LabEnv:
    hosts: dict[str, lab.Host]
    inventory: Path

    def ip(self, name: str) -> str:
        return self.hosts[name].ip

    def ssh(self, name: str, cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*lab.ssh_command(name), cmd], capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{name}: {cmd!r} failed ({res.returncode}): {res.stderr}{res.stdout}")
        return res

    def opsbook(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return run_opsbook(*args, "-i", str(self.inventory), timeout=timeout)


def run_opsbook(*args: str, timeout: float = 1800,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OPSBOOK_ROOT=str(ROOT), NO_COLOR="1", COLUMNS="200", **(env or {}))
    return subprocess.run([shutil.which("opsbook") or "opsbook", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def outcome(res: subprocess.CompletedProcess[str], lines: int = 40) -> str:
    """The end of a command's output, where the CLI prints what failed: short enough to survive CI's excerpt."""
    out = res.stdout.splitlines()
    cut = [f"[... {len(out) - lines} lines of progress ...]"] if len(out) > lines else []
    return "\n".join([f"exit {res.returncode}", *cut, *out[-lines:], *res.stderr.splitlines()[-lines:]])


def last_report(verb: str, host: str) -> dict[str, object]:
    """The newest VERB report that names HOST: the two test workers write reports side by side (a drill's deploy and
    a deploy test's once finished in the same second), so the newest report of a verb may be the other worker's."""
    runs = sorted((ROOT / ".opsbook" / "runs").glob(f"*-{verb}*.json"), key=lambda p: p.stat().st_mtime)
    for run in reversed(runs):
        data: dict[str, object] = json.loads(run.read_text())
        if data.get("verb") == verb and host in (data.get("hosts") or {}):  # type: ignore[operator]
            return data
    raise AssertionError(f"no {verb} report names {host}")


def make_inventory(path: Path, groups: dict[str, list[lab.Host]], extra_vars: dict[str, object] | None = None) -> Path:
    """A lab-shaped inventory directory: the lab's group_vars plus the given hosts (and test overrides)."""
    path.mkdir(parents=True, exist_ok=True)
    children = {g: {"hosts": {h.name: {"ansible_host": h.ip} for h in hs}} for g, hs in groups.items()}
    (path / "hosts.yml").write_text(yaml.safe_dump({"all": {"children": children, "vars": extra_vars or {}}}))
    gv = path / "group_vars"
    if not gv.exists():
        shutil.copytree(ROOT / "inventories" / "lab" / "group_vars", gv)
    return path


# every role as in production, minus two slow extras no lab test looks at (about 30 s per provisioning)
FAST = {"common_apt_upgrade": False, "common_aide_enabled": False}


@contextlib.contextmanager
def provisioned_lab(tmp_path_factory: pytest.TempPathFactory, groups: dict[str, list[str]],
                    extra_vars: dict[str, object] | None = None, also_down: tuple[str, ...] = ()) -> Iterator[LabEnv]:
    """Fresh lab hosts in the given groups, provisioned through the CLI; all taken down afterwards."""
    names = [n for members in groups.values() for n in members]
    hosts = boot(names)
    inv = make_inventory(tmp_path_factory.mktemp("inv") / "lab",
                         {g: [hosts[n] for n in members] for g, members in groups.items()}, extra_vars)
    try:
        env = LabEnv(hosts, inv)
        res = env.opsbook("provision")
        assert res.returncode == 0, f"provision failed:\n{outcome(res)}"
        yield env
    finally:
        lab.down([*names, *also_down], progress=False)


def boot(names: list[str]) -> dict[str, lab.Host]:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root")
    # `lab up` of a running host returns it as it is: a second test run on this machine would silently share it
    taken = sorted({h.name for h in lab.load_hosts()} & set(names))
    if taken:
        pytest.fail(f"lab hosts {', '.join(taken)} are already up: another test run is using them, or an aborted one "
                    f"left them (then: opsbook lab down {' '.join(taken)})")
    hosts = lab.up([lab.Host(name=n, ip="") for n in names], progress=False)
    return {h.name: h for h in hosts}


@pytest.fixture(scope="session")
def web_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    """A fresh target (e2e-web) and a second host to test from (e2e-client), provisioned once per session."""
    names = ["e2e-web", "e2e-client"]
    hosts = boot(names)
    inv = make_inventory(tmp_path_factory.mktemp("inv") / "lab",
                         {"web": [hosts["e2e-web"]], "lab_clients": [hosts["e2e-client"]]},
                         {"fail2ban_bantime": 60})
    try:
        yield LabEnv(hosts, inv)
    finally:
        lab.down(names, progress=False)
