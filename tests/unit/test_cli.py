from __future__ import annotations

import pytest

from opsbook import cli
from opsbook.commands import provision


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["provision", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--check" in out


def test_extra_vars_are_yaml() -> None:
    assert provision.parse_extravars(["a=[1, 2]", "b=yes", "c=text"]) == {"a": [1, 2], "b": True, "c": "text"}


def test_extra_vars_need_key_and_value() -> None:
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        provision.parse_extravars(["novalue"])
