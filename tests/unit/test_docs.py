from __future__ import annotations

from opsbook import docgen, paths


def test_variables_reference_is_current() -> None:
    root = paths.project_root()
    current = (root / "docs" / "variables.md").read_text()
    assert current == docgen.render(root), "docs/variables.md is stale: run python -m opsbook.docgen"


def test_every_role_is_in_the_reference() -> None:
    root = paths.project_root()
    text = docgen.render(root)
    for spec in (root / "roles").glob("*/meta/argument_specs.yml"):
        assert f"## {spec.parent.parent.name}\n" in text
