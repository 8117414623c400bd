"""Every molecule scenario (one per role) passes: check on a fresh host, converge, idempotence, check, verify."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("molecule scenarios boot lab hosts: needs root")
    log = tmp_path / "molecule.log"
    with open(log, "w") as out:
        res = subprocess.run(["molecule", "test", "-s", scenario], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                             env=dict(os.environ, NO_COLOR="1", ANSIBLE_NOCOLOR="1", PY_COLORS="0"), timeout=1800)
    if res.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-120:])
        pytest.fail(f"molecule test -s {scenario} failed (rc {res.returncode}):\n{tail}")
