"""The backup role's host script (roles/backup/files/opsbook-backup): how it splits a COPY stream between sessions,
and which database names and dump files it accepts (issue 11 item 12).

OPSBOOK_BACKUP_TOOL=/path/to/another/opsbook-backup runs these tests against another copy of the script (e.g. an
older one, to show that a test fails there)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import os
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
