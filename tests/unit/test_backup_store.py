"""The backup store's own code, run for real on temporary directories as a compromised database host would drive it:
roles/backup/files/opsbook-backup-receive (the forced command of the db host's key) and opsbook-backup-store
(newest, list, prune).

OPSBOOK_BACKUP_FILES points the tests at another copy of those two files (e.g. the code before the ledger, to see
these tests fail on it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.machinery
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = Path(os.environ.get("OPSBOOK_BACKUP_FILES", ROOT / "roles" / "backup" / "files"))
RECEIVE = FILES / "opsbook-backup-receive"
STORE = FILES / "opsbook-backup-store"
POLICY = {"days": 7, "weeks": 4, "months": 6}
START = dt.datetime(2026, 5, 14, 2, 30, tzinfo=dt.UTC)  # 200 daily backups: 2026-05-14 … 2026-11-29
NOW = dt.datetime(2026, 11, 30, 4, 0, tzinfo=dt.UTC)


def load(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


receive_tool = load(RECEIVE, "opsbook_backup_receive")


class Upload(io.RawIOBase):
    """stdin of an upload: DATA in blocks; counts what was read; calls HOOK before the first block."""

    def __init__(self, data: bytes, hook: Any = None) -> None:
        self.stream = io.BytesIO(data)
        self.taken = 0
        self.hook = hook

    def read(self, n: int = -1) -> bytes:
        if self.hook:
            hook, self.hook = self.hook, None
            hook()
        block = self.stream.read(min(n, 4096) if n and n > 0 else 4096)
        self.taken += len(block)
        return block


class Stdin:
    def __init__(self, buffer: Upload) -> None:
        self.buffer = buffer


def receive(directory: Path, command: str, data: bytes = b"", limits: tuple[str, ...] = (),
            at: dt.datetime | None = None, hook: Any = None) -> tuple[int, str, str, Upload]:
    """Run the receive command in this process as sshd runs it (argv from authorized_keys, SSH_ORIGINAL_COMMAND,
    the upload on stdin); AT is the store's clock."""
    upload = Upload(data, hook)
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, sys.stdin, os.environ.get("SSH_ORIGINAL_COMMAND")
    clock = getattr(receive_tool, "utc_stamp", None)
    try:
        sys.argv = [str(RECEIVE), str(directory), *limits]
        sys.stdin = Stdin(upload)  # type: ignore[assignment]
        os.environ["SSH_ORIGINAL_COMMAND"] = command
        if clock and at:
            receive_tool.utc_stamp = lambda: at.strftime("%Y-%m-%dT%H:%M:%SZ")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = receive_tool.main()
    finally:
        sys.argv, sys.stdin = saved[0], saved[1]
        if saved[2] is None:
            os.environ.pop("SSH_ORIGINAL_COMMAND", None)
        else:
            os.environ["SSH_ORIGINAL_COMMAND"] = saved[2]
        if clock:
            receive_tool.utc_stamp = clock
    return rc, out.getvalue(), err.getvalue(), upload


def put(directory: Path, name: str, data: bytes, **kw: Any) -> tuple[int, str, str, Upload]:
    return receive(directory, f"put {name} {hashlib.sha256(data).hexdigest()}", data, **kw)


def store(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(STORE), *argv], capture_output=True, text=True, timeout=300)


def dump_bytes(i: int) -> bytes:
    return b"PGDMP\x01\x0e\x00" + hashlib.sha256(b"real %d" % i).digest() * (1 + i % 5)


def manifest_bytes(name: str, data: bytes, status: str = "passed", **extra: Any) -> bytes:
    return json.dumps({"format": 1, "file": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                       "verification": {"status": status}, **extra}).encode()


def upload_copy(directory: Path, name: str, data: bytes, at: dt.datetime | None = None) -> None:
    for n, content in ((name, data), (name.removesuffix(".dump") + ".manifest.json", manifest_bytes(name, data))):
        rc, _, err, _ = put(directory, n, content, at=at)
        assert rc == 0, err


def configure(config_dir: Path, host: str, directory: Path, database: str = "app",
              policy: dict | None = None) -> None:
    """The configuration the backup role writes on the store for one database host's database."""
    config_dir.mkdir(exist_ok=True)
    (config_dir / f"{host}__{database}.json").write_text(json.dumps({
        "database": database, "backup_dir": str(directory), "retention": policy or POLICY,
        "scratch_prefix": "opsbook_verify_", "pg_version": 15, "pg_port": 5432}))


def prune(config_dir: Path, now: dt.datetime) -> subprocess.CompletedProcess[str]:
    return store("prune", "--config-dir", str(config_dir), "--now", now.strftime("%Y-%m-%dT%H:%M:%SZ"))


def dumps_on_disk(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("*.dump")}


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    d = tmp_path / "store" / "db1"
    d.mkdir(parents=True)
    return d


def test_a_flood_of_forged_copies_deletes_no_real_copy_and_newest_stays_real(tmp_path: Path, host_dir: Path) -> None:
    """Issue 11 item 1: 200 real daily copies, then 200 forged one-byte dumps named for the same days at 23:59:59
    with manifests saying passed, uploaded with the db host's key. After the store's prune every copy that the
    retention keeps without the flood is still there, byte-identical; `newest` names the newest real copy."""
    real = {}
    for i in range(200):
        t = START + dt.timedelta(days=i)
        name = f"app-{t:%Y%m%dT%H%M%SZ}.dump"
        real[name] = dump_bytes(i)
        upload_copy(host_dir, name, real[name], at=t + dt.timedelta(minutes=5))
    # what the retention keeps when nobody attacks (the same store, copied aside)
    calm = tmp_path / "calm" / "db1"
    shutil.copytree(host_dir, calm)
    configure(tmp_path / "calm-config", "db1", calm)
    calm_prune = prune(tmp_path / "calm-config", NOW)
    assert calm_prune.returncode == 0, calm_prune.stderr
    window = dumps_on_disk(calm)
    last_week = {f"app-{START + dt.timedelta(days=i):%Y%m%dT%H%M%SZ}.dump" for i in range(194, 200)}
    assert last_week <= set(window), sorted(window)

    for i in range(200):
        t = START + dt.timedelta(days=i)
        name = f"app-{t:%Y%m%dT235959Z}.dump"
        rc, _, err, _ = put(host_dir, name, b"x", at=NOW - dt.timedelta(minutes=30) + dt.timedelta(seconds=i))
        assert rc == 0, err
        forged = manifest_bytes(name, b"x", tables={"public.x": 1})
        rc, _, err, _ = put(host_dir, name.removesuffix(".dump") + ".manifest.json", forged,
                            at=NOW - dt.timedelta(minutes=30) + dt.timedelta(seconds=i))
        assert rc == 0, err
    configure(tmp_path / "config", "db1", host_dir)
    result = prune(tmp_path / "config", NOW)
    assert result.returncode == 0, result.stderr
    left = dumps_on_disk(host_dir)
    missing = sorted(set(window) - set(left))
    assert not missing, f"{len(missing)} of {len(window)} real copies in the retention window deleted: {missing[:5]}"
    assert all(left[n] == hashlib.sha256(real[n]).hexdigest() for n in window)
    # a week later, without new uploads, the same prune keeps the real weekly and monthly copies
    assert prune(tmp_path / "config", NOW + dt.timedelta(days=1)).returncode == 0
    newest = store("newest", "--dir", str(host_dir), "--database", "app")
    assert newest.returncode == 0, newest.stderr
    picked = json.loads(newest.stdout)
    assert picked["dump"] == f"app-{START + dt.timedelta(days=199):%Y%m%dT%H%M%SZ}.dump"
    assert picked["sha256"] == hashlib.sha256(real[picked["dump"]]).hexdigest()


@pytest.mark.parametrize("name", [
    "../escape.dump", "../../etc/cron.d/x.manifest.json", "app-latest.dump", "9app-20260101T000000Z.dump",
    "app-20261301T000000Z.dump", "app-20260101T000000Z.dump.tmp", "ledger.jsonl", ".tmp-1.dump",
    "app-20260101T000000Z..dump", "a" * 64 + "-20260101T000000Z.dump",
])
def test_names_other_than_strict_dump_and_manifest_names_are_refused(host_dir: Path, name: str) -> None:
    rc, _, err, _ = put(host_dir, name, b"PGDMP x")
    assert rc != 0 and "only `put NAME SHA256` and `list` are allowed" in err
    assert [p.name for p in host_dir.parent.rglob("*") if p.is_file()] == []


def test_a_stored_copy_is_never_replaced_even_by_an_upload_that_started_before_it(host_dir: Path) -> None:
    """Issue 11 item 5: a slow upload of NAME that started before NAME was stored must not replace it (the old
    receive checked for NAME first and renamed over it at the end)."""
    name = "app-20261129T023000Z.dump"
    first = dump_bytes(1)
    stored_first = []

    def meanwhile() -> None:  # while the slow upload streams, the same name gets stored
        (host_dir / name).write_bytes(first)
        stored_first.append(True)

    rc, _, err, _ = put(host_dir, name, b"PGDMP forged", hook=meanwhile)
    assert stored_first and rc != 0 and "exists already" in err
    assert (host_dir / name).read_bytes() == first
    # and again, once stored: refused, the bytes unchanged; the same bytes again (a retried copy) succeed
    rc, _, err, _ = put(host_dir, name, b"PGDMP other")
    assert rc != 0 and "exists already" in err
    assert (host_dir / name).read_bytes() == first
    rc, out, err, _ = put(host_dir, name, first)
    assert rc == 0 and "already" in out, err
    assert not [p for p in host_dir.iterdir() if p.name.startswith(".tmp-")]


def test_the_byte_quota_cuts_an_upload_off_while_it_streams(host_dir: Path) -> None:
    limits = ("--max-bytes", "10000", "--max-files", "100")
    rc, _, err, _ = put(host_dir, "app-20261101T023000Z.dump", b"P" * 6000, limits=limits)
    assert rc == 0, err
    rc, _, err, upload = put(host_dir, "app-20261102T023000Z.dump", b"P" * 1_000_000, limits=limits)
    assert rc != 0 and "quota" in err and "cut off" in err, err
    assert upload.taken < 20_000  # stopped reading, not read to the end and then refused
    assert sorted(p.name for p in host_dir.iterdir() if p.name != "ledger.jsonl") == ["app-20261101T023000Z.dump"]


def test_the_file_quota_refuses_one_file_too_many(host_dir: Path) -> None:
    limits = ("--max-bytes", "1000000", "--max-files", "3")
    for day in (1, 2, 3):
        rc, _, err, _ = put(host_dir, f"app-202611{day:02d}T023000Z.dump", dump_bytes(day), limits=limits)
        assert rc == 0, err
    rc, _, err, _ = put(host_dir, "app-20261104T023000Z.dump", dump_bytes(4), limits=limits)
    assert rc != 0 and "quota" in err and "3 files" in err, err
    assert not (host_dir / "app-20261104T023000Z.dump").exists()


def test_stale_temp_files_go_at_the_next_receive_and_at_the_prune(tmp_path: Path, host_dir: Path) -> None:
    """An upload killed half-way leaves its temporary file: it goes once older than an hour, a fresh one stays."""
    stale, fresh = host_dir / ".tmp-killed-upload", host_dir / ".tmp-in-progress"
    for p in (stale, fresh):
        p.write_bytes(b"half a dump")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    rc, _, err, _ = put(host_dir, "app-20261101T023000Z.dump", dump_bytes(1))
    assert rc == 0, err
    assert not stale.exists() and fresh.exists()
    os.utime(fresh, (old, old))
    configure(tmp_path / "config", "db1", host_dir)
    result = prune(tmp_path / "config", NOW)
    assert result.returncode == 0, result.stderr
    assert not fresh.exists()


def test_a_malformed_manifest_does_not_crash_the_prune_of_any_host(tmp_path: Path, host_dir: Path) -> None:
    """Issue 11 item 5: a manifest `[]` (and one that is not JSON) on one host; old copies of a second host are
    still pruned, and the bad host's own retention still runs."""
    other = host_dir.parent / "db2"
    other.mkdir()
    for d in (host_dir, other):
        for day in range(1, 41):
            t = dt.datetime(2026, 9, 1, 2, 30, tzinfo=dt.UTC) + dt.timedelta(days=day)
            upload_copy(d, f"app-{t:%Y%m%dT%H%M%SZ}.dump", dump_bytes(day), at=t)
    for name, content in (("app-20261111T023000Z", b"[]"), ("app-20261112T023000Z", b"{not json")):
        assert put(host_dir, f"{name}.dump", dump_bytes(99), at=NOW - dt.timedelta(days=18))[0] == 0
        assert put(host_dir, f"{name}.manifest.json", content, at=NOW - dt.timedelta(days=18))[0] == 0
    configure(tmp_path / "config", "db1", host_dir, policy={"days": 3, "weeks": 1, "months": 1})
    configure(tmp_path / "config", "db2", other, policy={"days": 3, "weeks": 1, "months": 1})
    before = {d: len(list(d.glob("*.dump"))) for d in (host_dir, other)}
    result = prune(tmp_path / "config", NOW)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for d in (host_dir, other):
        assert 0 < len(list(d.glob("*.dump"))) < before[d]


def test_one_bad_host_directory_does_not_stop_the_others(tmp_path: Path, host_dir: Path) -> None:
    for day in range(1, 30):
        t = dt.datetime(2026, 9, 1, 2, 30, tzinfo=dt.UTC) + dt.timedelta(days=day)
        upload_copy(host_dir, f"app-{t:%Y%m%dT%H%M%SZ}.dump", dump_bytes(day), at=t)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (host_dir.parent / "db0").symlink_to(outside)  # a host directory that is a symlink is not followed
    configure(tmp_path / "config", "db0", host_dir.parent / "db0")
    configure(tmp_path / "config", "db1", host_dir, policy={"days": 3, "weeks": 1, "months": 1})
    configure(tmp_path / "config", "db9", host_dir.parent / "missing")
    result = prune(tmp_path / "config", NOW)
    assert result.returncode == 1
    assert "db0" in result.stderr and "missing" in result.stderr
    assert len(list(host_dir.glob("*.dump"))) < 29


def test_prune_never_follows_a_symlink_in_place_of_a_copy(tmp_path: Path, host_dir: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    t = dt.datetime(2026, 1, 5, 2, 30, tzinfo=dt.UTC)
    upload_copy(host_dir, "app-20260105T023000Z.dump", dump_bytes(1), at=t)
    upload_copy(host_dir, "app-20261129T023000Z.dump", dump_bytes(2), at=NOW - dt.timedelta(hours=2))
    (host_dir / "app-20260105T023000Z.dump").unlink()
    (host_dir / "app-20260105T023000Z.dump").symlink_to(victim)
    configure(tmp_path / "config", "db1", host_dir, policy={"days": 1, "weeks": 1, "months": 1})
    result = prune(tmp_path / "config", NOW)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious"


def test_retention_follows_the_ledger_not_the_names(tmp_path: Path, host_dir: Path) -> None:
    """A copy named for 2020 but received yesterday is kept; a copy named for tomorrow but received 100 days ago
    goes; files the ledger does not list are never touched."""
    upload_copy(host_dir, "app-20200101T000000Z.dump", dump_bytes(1), at=NOW - dt.timedelta(days=1))
    upload_copy(host_dir, "app-20261201T000000Z.dump", dump_bytes(2), at=NOW - dt.timedelta(days=100))
    upload_copy(host_dir, "app-20261129T000000Z.dump", dump_bytes(3), at=NOW - dt.timedelta(hours=3))
    (host_dir / "app-20190101T000000Z.dump").write_bytes(b"put there by an operator")
    configure(tmp_path / "config", "db1", host_dir, policy={"days": 3, "weeks": 1, "months": 1})
    result = prune(tmp_path / "config", NOW)
    assert result.returncode == 0, result.stderr
    assert sorted(dumps_on_disk(host_dir)) == ["app-20190101T000000Z.dump", "app-20200101T000000Z.dump",
                                               "app-20261129T000000Z.dump"]
    assert not (host_dir / "app-20261201T000000Z.manifest.json").exists()
    ledger = [json.loads(line) for line in (host_dir / "ledger.jsonl").read_text().splitlines()]
    assert {"app-20261201T000000Z.dump", "app-20261201T000000Z.manifest.json"} == {
        e["name"] for e in ledger if "pruned" in e}


def test_the_ledger_records_what_the_store_received(host_dir: Path) -> None:
    data = dump_bytes(7)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rc, _, err, _ = put(host_dir, "app-20261129T023000Z.dump", data)
    assert rc == 0, err
    assert put(host_dir, "app-20261129T023001Z.dump", b"PGDMP corrupted in transit",
               )[0] == 0  # its own digest: accepted
    rc, _, err, _ = receive(host_dir, f"put app-20261129T023002Z.dump {'0' * 64}", b"PGDMP")
    assert rc != 0 and "sha256 mismatch" in err
    lines = [json.loads(line) for line in (host_dir / "ledger.jsonl").read_text().splitlines()]
    assert [e["name"] for e in lines] == ["app-20261129T023000Z.dump", "app-20261129T023001Z.dump"]
    assert lines[0]["size"] == len(data) and lines[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert dt.datetime.fromisoformat(lines[0]["received"].replace("Z", "+00:00")) >= before
    assert oct((host_dir / "app-20261129T023000Z.dump").stat().st_mode & 0o777) == "0o600"
    rc, out, _, _ = receive(host_dir, "list")
    assert rc == 0 and out.split() == ["app-20261129T023000Z.dump", str(len(data)), "app-20261129T023001Z.dump", "26"]


def test_newest_skips_copies_that_are_not_good_now(host_dir: Path) -> None:
    """Issue 11 item 2 from the store's side: `newest` checks the dump's sha256 now, and the manifest's file, sha256
    and status; a manifest naming another path is skipped, never followed."""
    at = NOW - dt.timedelta(days=5)
    good = "app-20261125T023000Z.dump"
    upload_copy(host_dir, good, dump_bytes(1), at=at)

    def later(hours: int) -> dt.datetime:
        return at + dt.timedelta(hours=hours)

    cases = {  # each newer than the good one; why it must be skipped
        "app-20261126T000000Z": ({"file": "../../../../etc/shadow"}, dump_bytes(2)),
        "app-20261126T010000Z": ({"verification": {"status": "failed"}}, dump_bytes(3)),
        "app-20261126T020000Z": ({"sha256": "0" * 64}, dump_bytes(4)),
        "app-20261126T030000Z": ({}, b"x"),  # one byte: not a dump
        "app-20261126T040000Z": (None, dump_bytes(5)),  # manifest [] (not an object)
    }
    for i, (stem, (change, data)) in enumerate(cases.items()):
        name = f"{stem}.dump"
        assert put(host_dir, name, data, at=later(i + 1))[0] == 0
        content = b"[]" if change is None else json.dumps({**json.loads(manifest_bytes(name, data)), **change}).encode()
        assert put(host_dir, f"{stem}.manifest.json", content, at=later(i + 1))[0] == 0
    tampered = "app-20261127T000000Z.dump"  # changed on the store after it was received
    upload_copy(host_dir, tampered, dump_bytes(6), at=later(10))
    (host_dir / tampered).write_bytes(dump_bytes(7))
    assert put(host_dir, "app-20261128T000000Z.dump", dump_bytes(8), at=later(11))[0] == 0  # no manifest
    (host_dir / "app-20261129T000000Z.dump").write_bytes(dump_bytes(9))  # not received: not in the ledger
    (host_dir / "app-20261129T000000Z.manifest.json").write_bytes(manifest_bytes("app-20261129T000000Z.dump",
                                                                                 dump_bytes(9)))
    result = store("newest", "--dir", str(host_dir), "--database", "app")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dump"] == good
    skipped = [line.split()[1].rstrip(":") for line in result.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 7 and tampered in skipped
    assert store("newest", "--dir", str(host_dir), "--database", "other").returncode == 1
    listing = store("list", "--dir", str(host_dir), "--database", "app", "--json")
    assert listing.returncode == 0
    names = [c["name"] for c in json.loads(listing.stdout)["copies"]]
    assert good in names and "app-20261129T000000Z.dump" not in names
