from __future__ import annotations

import pytest

from opsbook import cli
from opsbook.commands import provision


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["provision", "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--check" in out


def test_usage_errors_exit_1_not_2(capsys: pytest.CaptureFixture[str]) -> None:
    # 2 means "a task failed" in opsbook; argparse would say 2 for a usage error
    assert cli.main(["deploy"]) == 1
    assert "TARGET" in capsys.readouterr().err


def test_extra_vars_are_yaml() -> None:
    assert provision.parse_extravars(["a=[1, 2]", "b=yes", "c=text"]) == {"a": [1, 2], "b": True, "c": "text"}


def test_extra_vars_need_key_and_value() -> None:
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        provision.parse_extravars(["novalue"])
