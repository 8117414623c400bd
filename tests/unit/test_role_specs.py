"""Every role documents every variable in meta/argument_specs.yml, with the same default as defaults/main.yml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.parent.parent.name for p in (ROOT / "roles").glob("*/meta/main.yml"))


def _load(path: Path) -> dict[str, object]:
    return yaml.safe_load(path.read_text()) or {} if path.exists() else {}


def test_there_are_roles() -> None:
    assert {"preflight"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_spec_matches_defaults(role: str) -> None:
    spec_file = ROOT / "roles" / role / "meta" / "argument_specs.yml"
    assert spec_file.exists(), f"{role}: meta/argument_specs.yml missing"
    options = _load(spec_file)["argument_specs"]["main"].get("options") or {}  # type: ignore[index]
    defaults = _load(ROOT / "roles" / role / "defaults" / "main.yml")
    assert set(defaults) <= set(options), f"{role}: undocumented defaults {sorted(set(defaults) - set(options))}"
    for name, opt in options.items():
        assert name.startswith(f"{role}_"), f"{role}: variable {name} lacks the role prefix"
        assert opt.get("description"), f"{role}: {name} has no description"
        assert opt.get("type"), f"{role}: {name} has no type"
        if name in defaults:
            assert opt.get("default") == defaults[name], f"{role}: {name} default differs from defaults/main.yml"
        else:
            assert opt.get("required"), f"{role}: {name} has neither a default nor required: true"


@pytest.mark.parametrize("role", ROLES)
def test_defaults_are_commented(role: str) -> None:
    path = ROOT / "roles" / role / "defaults" / "main.yml"
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#", "-")) and ":" in line:
            prev = lines[i - 1] if i else ""
            assert prev.startswith("#"), f"{role}: default {line.split(':')[0]} has no comment line above it"
