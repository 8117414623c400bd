"""The backup role's host script (roles/backup/files/opsbook-backup): how it splits a COPY stream between sessions."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    path = ROOT / "roles" / "backup" / "files" / "opsbook-backup"
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
