"""End to end: a DR drill. web + db + backup store are provisioned, the app deployed, data written and backed up;
`opsbook drill` then builds a fresh host from the inventory alone, restores the newest verified backup from the
store, deploys the live release, and must serve the restored data, with RTO and RPO measured."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsbook import lab
from tests.e2e.conftest import FAST, ROOT, LabEnv, outcome, provisioned_lab

NAMES = ["dr-web", "dr-db", "dr-store"]
DRILL = "dr-drill"
NOTES = 321


@pytest.fixture(scope="module")
def dr_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEnv]:
    groups = {"web": ["dr-web"], "db": ["dr-db"], "backup_store": ["dr-store"]}
    with provisioned_lab(tmp_path_factory, groups, FAST, also_down=(DRILL,)) as env:
        res = env.opsbook("deploy", "1.0.0")  # builds examples/app as 1.0.0; its migration makes the notes table
        assert res.returncode == 0, f"deploy failed:\n{outcome(res)}"
        sql = f"INSERT INTO notes(body) SELECT 'note ' || g FROM generate_series(1, {NOTES:d}) g"  # noqa: S608
        env.ssh("dr-db", f"cd /tmp && runuser -u postgres -- psql -q app -c \"{sql}\"")
        res = env.opsbook("backup", "run")
        assert res.returncode == 0, f"backup failed:\n{outcome(res)}"
        yield env


def test_drill_restores_the_data_and_measures_rto_and_rpo(dr_lab: LabEnv) -> None:
    start = time.time()
    res = dr_lab.opsbook("drill", "--host", DRILL)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    reports = sorted((ROOT / ".opsbook" / "drills").glob(f"drill-{DRILL}-*.json"))
    assert reports and reports[-1].stat().st_mtime >= start, out
    report = json.loads(reports[-1].read_text())
    print(json.dumps(report, indent=2))
    assert report["data"]["count"] == NOTES and int(report["expected_rows"]) == NOTES  # served through the app
    assert report["health"] == {"status": "ok", "version": "1.0.0", "database": "ok"}
    assert report["release"] == "1.0.0" and report["release_source"] == "dr-web"
    rto, rpo = float(report["rto_seconds"]), float(report["rpo_seconds"])
    elapsed = time.time() - start
    assert 0 < rto <= elapsed  # measured from the start of the drill (host boot included) to healthy
    assert rto < rpo  # the backup was taken before the drill started
    assert "RTO" in res.stdout and "| RPO" in res.stdout  # the Markdown report is printed
    assert Path(str(reports[-1]).removesuffix(".json") + ".md").is_file()
    # torn down afterwards: no drill host left in the lab
    assert DRILL not in {h.name for h in lab.load_hosts()}
    # no copy of the production dump left on the controller
    assert not list((ROOT / ".opsbook" / "drills" / "work").glob("*.dump"))
