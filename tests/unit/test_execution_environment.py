"""execution-environment.yml: ansible-builder 3 turns it into a build context with the project's pins.

There is no container engine here: `ansible-builder create` writes the Containerfile and context, which is what
`ansible-builder build` would hand to podman/docker.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EE = ROOT / "execution-environment.yml"


def pins() -> dict[str, str]:
    """name -> 'name==version' of the project's runtime dependencies (pyproject.toml)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[=<>!~ ]", d, maxsplit=1)[0].lower(): d for d in deps}


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    builder = shutil.which("ansible-builder", path=str(Path(sys.executable).parent))
    if not builder:
        pytest.skip("ansible-builder is not installed (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("ee") / "context"
    res = subprocess.run([builder, "create", "-f", str(EE), "-c", str(out), "--output-filename", "Containerfile"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def test_definition_is_schema_version_3() -> None:
    ee = yaml.safe_load(EE.read_text())
    assert ee["version"] == 3
    assert ee["dependencies"]["python_interpreter"]["python_path"].endswith("python3.11")  # Debian 12's Python


def test_ansible_core_and_runner_are_the_projects_pins(context: Path) -> None:
    containerfile = (context / "Containerfile").read_text()
    p = pins()
    refs = re.search(r'^ARG ANSIBLE_INSTALL_REFS="(.*)"$', containerfile, re.M)
    assert refs is not None
    assert set(refs.group(1).split()) == {p["ansible-core"], p["ansible-runner"]}
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    assert 'ARG PYCMD="/usr/bin/python3.11"' in containerfile


def test_python_requirements_match_pyproject(context: Path) -> None:
    lines = [ln.strip() for ln in (context / "_build" / "requirements.txt").read_text().splitlines()]
    reqs = {ln for ln in lines if ln and not ln.startswith("#")}
    p = pins()
    # the collections come with the pinned `ansible` package; the rest are the roles' controller-side libraries
    expected = {p[name] for name in ("ansible", "jmespath", "passlib", "pyyaml")}
    assert reqs == expected
    # every pin in the EE is exactly pyproject's: nothing floats
    assert all("==" in r for r in reqs)


def test_bindep_has_the_ssh_client(context: Path) -> None:
    bindep = (context / "_build" / "bindep.txt").read_text()
    assert "openssh-clients [platform:rpm]" in bindep


def test_collections_the_roles_use_come_with_the_pinned_ansible_package() -> None:
    """Every collection a role or playbook names is bundled in the ansible package the EE installs."""
    import ansible_collections  # the `ansible` package's tree in this environment

    used: set[str] = set()
    for base in ("roles", "playbooks"):
        for path in (ROOT / base).rglob("*.yml"):
            used |= {".".join(m.split(".")[:2]) for m in re.findall(r"\b(?:community|ansible)\.[a-z_]+\.[a-z_0-9]+",
                                                                  path.read_text())}
    used -= {"ansible.builtin", "ansible.legacy"}
    assert used, "no collections found: the scan is broken"
    trees = [Path(p) for p in ansible_collections.__path__]
    missing = [c for c in sorted(used) if not any((t / c.replace(".", "/")).is_dir() for t in trees)]
    assert not missing, f"collections not bundled in ansible {pins()['ansible']}: {missing}"
