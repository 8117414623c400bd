"""The backup role's host script (roles/backup/files/opsbook-backup): how it splits a COPY stream between sessions,
and which database names and dump files it accepts (issue 11 item 12).

OPSBOOK_BACKUP_TOOL=/path/to/another/opsbook-backup runs these tests against another copy of the script (e.g. an
older one, to show that a test fails there)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    path = Path(os.environ.get("OPSBOOK_BACKUP_TOOL") or ROOT / "roles" / "backup" / "files" / "opsbook-backup")
    loader = importlib.machinery.SourceFileLoader("opsbook_backup", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


tool = load()
ROWS = b"".join(b"%d\t%d\tname \\\\. with\\ttab\\n\t\\N\n" % (i, i * 7) for i in range(500))


def split(stream: bytes, chunk: int) -> tuple[bool, list[bytes]]:
    blocks: list[bytes] = []
    complete = tool.split_copy_rows(io.BytesIO(stream).read, lambda b: blocks.append(bytes(b)), chunk)
    return complete, blocks


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1000, 1 << 22])
def test_rows_go_out_whole_and_in_order_up_to_the_end_mark(chunk: int) -> None:
    complete, blocks = split(ROWS + b"\\.\n\n--\n-- trailing comment\n", chunk)
    assert complete
    assert b"".join(blocks) == ROWS
    assert all(b and b.endswith(b"\n") for b in blocks)
    assert sum(b.count(b"\n") for b in blocks) == 500


@pytest.mark.parametrize("chunk", [1, 4, 1 << 20])
def test_an_empty_table_gives_no_rows(chunk: int) -> None:
    assert split(b"\\.\n\n", chunk) == (True, [])


def test_a_row_that_only_looks_like_the_end_mark_is_data() -> None:
    rows = b"1\t\\\\.\n\\\\.\n2\tx\n"  # "\\." escaped in text COPY: a backslash and a dot, not the end mark
    complete, blocks = split(rows + b"\\.\n", 3)
    assert complete
    assert b"".join(blocks) == rows


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_a_stream_cut_short_is_reported(chunk: int) -> None:
    complete, blocks = split(ROWS[:1000], chunk)
    assert not complete
    assert b"".join(blocks) == ROWS[: ROWS.rfind(b"\n", 0, 1000) + 1]


# --------------------------------------------------------------------------- names and files (issue 11 item 12)

STAMP = "20261130T050001Z"


def backup_dir(tmp_path: Path, database: str = "app") -> tuple[dict, Path]:
    """A configuration of DATABASE whose backup directory holds one dump of it and one of another database."""
    bdir = tmp_path / "backups"
    bdir.mkdir()
    for db in (database, "other"):
        (bdir / f"{db}-{STAMP}.dump").write_bytes(b"PGDMP")
        (bdir / f"{db}-{STAMP}.manifest.json").write_text(json.dumps({"file": f"{db}-{STAMP}.dump"}))
    cfg = {"database": database, "backup_dir": str(bdir), "pg_version": 15, "pg_port": 5432,
           "scratch_prefix": "opsbook_verify_", "retention": {"days": 1}}
    return cfg, bdir


def test_a_plain_name_of_the_databases_dump_is_picked_in_the_backup_directory(tmp_path: Path) -> None:
    cfg, bdir = backup_dir(tmp_path)
    assert tool.pick(tool.Backup(cfg), f"app-{STAMP}.dump") == str(bdir / f"app-{STAMP}.dump")
    assert tool.pick(tool.Backup(cfg), None) == str(bdir / f"app-{STAMP}.dump")


@pytest.mark.parametrize("file", [
    "/etc/shadow",
    "../../../../etc/shadow",
    f"../backups/app-{STAMP}.dump",       # the right file, but through a path
    f"./app-{STAMP}.dump",
    f"other-{STAMP}.dump",                 # another database's dump in the same directory
    f"app-{STAMP}.manifest.json",
    "app-latest.dump",
    "..",
])
def test_verify_and_restore_refuse_anything_but_a_plain_name_of_the_databases_dumps(tmp_path: Path,
                                                                                    file: str) -> None:
    cfg, _ = backup_dir(tmp_path)
    (tmp_path / "shadow").write_text("root:x")
    with pytest.raises(tool.BackupError):
        tool.pick(tool.Backup(cfg), file)


def test_a_symlinked_dump_or_manifest_is_refused_and_never_listed(tmp_path: Path) -> None:
    cfg, bdir = backup_dir(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text('{"file": "x"}')
    link = "app-20261201T000000Z.dump"
    (bdir / link).symlink_to(secret)
    (bdir / link.replace(".dump", ".manifest.json")).write_text("{}")
    with pytest.raises(tool.BackupError):
        tool.pick(tool.Backup(cfg), link)
    assert str(bdir / link) not in tool.Backup(cfg).dumps()
    # a real dump whose manifest is a symlink to a file elsewhere
    (bdir / f"app-{STAMP}.manifest.json").unlink()
    (bdir / f"app-{STAMP}.manifest.json").symlink_to(secret)
    with pytest.raises(tool.BackupError):
        tool.pick(tool.Backup(cfg), f"app-{STAMP}.dump")
    with pytest.raises(tool.BackupError):
        tool.load_manifest(str(bdir / f"app-{STAMP}.dump"))


@pytest.mark.parametrize("database", ["../evil", "app/../evil", "a b", "app;drop", "", "1app", "x" * 64])
def test_the_database_option_is_a_name_never_a_path(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    database: str) -> None:
    confdir = tmp_path / "conf"
    confdir.mkdir()
    # a configuration outside the configuration directory that a path in --database would reach
    (tmp_path / "evil.json").write_text(json.dumps({"database": "evil", "backup_dir": str(tmp_path)}))
    with pytest.raises(SystemExit) as exc:
        tool.main(["--config-dir", str(confdir), "--database", database, "list", "--json"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid database name" in err


def test_a_configuration_with_a_bad_database_name_is_refused(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    confdir = tmp_path / "conf"
    confdir.mkdir()
    (confdir / "app.json").write_text(json.dumps({"database": "../../x", "backup_dir": str(tmp_path)}))
    assert tool.main(["--config-dir", str(confdir), "list", "--json"]) == 2
    assert "invalid database name" in capsys.readouterr().err


@pytest.mark.parametrize("role", ["postgres;", "../x", "a-b"])
def test_the_restore_role_is_a_name(tmp_path: Path, capsys: pytest.CaptureFixture[str], role: str) -> None:
    cfg, _ = backup_dir(tmp_path)
    (tmp_path / "app.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as exc:
        tool.main(["--config-dir", str(tmp_path), "--database", "app", "verify", f"app-{STAMP}.dump",
                   "--as-role", role])
    assert exc.value.code == 2
    assert "invalid role name" in capsys.readouterr().err


# --------------------------------------------------------------------------- encrypted off-host copies (issue 11)

AGE_BIN = "/usr/bin/age"
needs_age = pytest.mark.skipif(not (os.access(AGE_BIN, os.X_OK) and shutil.which("age-keygen")),
                               reason="age is not installed (apt-get install age; scripts/bootstrap.sh lists it)")
FAKE_SSH = """#!/bin/sh
# a store that keeps what `put NAME SHA256` sends (the last argument is the forced command's request)
for last; do :; done
set -- $last
[ "$1" = put ] || exit 1
cat > "$UPLOADS/$2"
"""
# a value of a row that the dump holds: never on the store in the clear
MARKER = b"opsbook-marker-row-7f3a9c"


def age_keypair(tmp_path: Path) -> tuple[Path, str]:
    identity = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True,
                               text=True).stdout.strip()
    return identity, recipient


def store_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipients: object) -> tuple[dict, Path, Path]:
    """A verified dump holding MARKER, a configuration with a store, and a fake ssh that saves the uploads."""
    cfg, bdir = backup_dir(tmp_path)
    dump = bdir / f"app-{STAMP}.dump"
    plain = b"PGDMP" + os.urandom(2000) + MARKER + b"\n" * 100
    dump.write_bytes(plain)
    manifest = {"file": dump.name, "sha256": hashlib.sha256(plain).hexdigest(), "size": len(plain),
                "tables": {"public.notes": 1}, "verification": {"status": "passed"}}
    (bdir / f"app-{STAMP}.manifest.json").write_text(json.dumps(manifest))
    bindir, uploads = tmp_path / "bin", tmp_path / "uploads"
    bindir.mkdir()
    uploads.mkdir()
    (bindir / "ssh").write_text(FAKE_SSH)
    (bindir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("UPLOADS", str(uploads))
    cfg["store"] = {"address": "192.0.2.9", "port": 22, "user": "opsbook-backup", "key": "/nonexistent",
                    "known_hosts": "/nonexistent", "age_recipients": recipients}
    return cfg, dump, uploads


@needs_age
def test_the_copy_leaves_the_host_age_encrypted_and_decrypts_to_the_verified_dump(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    identity, recipient = age_keypair(tmp_path)
    (tmp_path / "spare").mkdir()
    _, other = age_keypair(tmp_path / "spare")  # a second recipient (say, a spare key kept offline)
    cfg, dump, uploads = store_setup(tmp_path, monkeypatch, [recipient, other])
    plain = dump.read_bytes()
    tool.Backup(cfg).copy(str(dump))
    sent = {p.name: p.read_bytes() for p in uploads.iterdir()}
    assert sorted(sent) == [f"app-{STAMP}.dump", f"app-{STAMP}.manifest.json"]
    copy = sent[f"app-{STAMP}.dump"]
    # nothing that left the host holds the row value or the dump's plaintext
    assert all(MARKER not in data and b"PGDMP" not in data for data in sent.values())
    assert copy.startswith(b"age-encryption.org/v1\n")
    # the copy's manifest describes the uploaded bytes (what the store's ledger records) and the plaintext
    m = json.loads(sent[f"app-{STAMP}.manifest.json"])
    assert m["sha256"] == hashlib.sha256(copy).hexdigest() and m["size"] == len(copy)
    assert m["plaintext"] == {"sha256": hashlib.sha256(plain).hexdigest(), "size": len(plain)}
    assert m["encryption"] == {"format": "age-encryption.org/v1", "recipients": [recipient, other]}
    assert m["file"] == dump.name and m["verification"]["status"] == "passed"
    decrypted = subprocess.run([AGE_BIN, "--decrypt", "--identity", str(identity)], input=copy,
                               capture_output=True, check=True).stdout
    assert decrypted == plain
    # the local copy stays plaintext (it was verified here); its manifest notes the encrypted copy
    assert dump.read_bytes() == plain
    local = json.loads((dump.parent / f"app-{STAMP}.manifest.json").read_text())
    assert local["sha256"] == hashlib.sha256(plain).hexdigest()
    assert local["copy"]["sha256"] == m["sha256"] and local["copy"]["encryption"] == "age"
    assert not [p.name for p in dump.parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("recipients", [None, [], ["age1notakey"], ["ssh-ed25519 AAAA"], "age1" + "q" * 58])
def test_without_valid_age_recipients_nothing_leaves_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              recipients: object) -> None:
    cfg, dump, uploads = store_setup(tmp_path, monkeypatch, recipients)
    with pytest.raises(tool.BackupError, match="age"):
        tool.Backup(cfg).copy(str(dump))
    assert list(uploads.iterdir()) == []


@needs_age
def test_a_dump_changed_since_its_verification_is_not_copied(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, recipient = age_keypair(tmp_path)
    cfg, dump, uploads = store_setup(tmp_path, monkeypatch, [recipient])
    dump.write_bytes(dump.read_bytes() + b"tampered")
    with pytest.raises(tool.BackupError, match="changed since it was verified"):
        tool.Backup(cfg).copy(str(dump))
    assert list(uploads.iterdir()) == []
    assert not [p.name for p in dump.parent.iterdir() if p.name.startswith(".tmp-")]
